#!/usr/bin/env bash
# govulncheck against Go's vulnerability database, built locally from the
# module proxy. govulncheck normally fetches the database from vuln.go.dev,
# which machines that reach only the module proxy cannot resolve. The same
# reports are published as OSV files in the module golang.org/x/vulndb, which
# the proxy serves; its own indexdb command turns them into the database
# layout govulncheck reads with -db file://.
#
# The reports are the newest the proxy has (VULNDB_VERSION=latest, or pin a
# version); the tools are pinned. Any failure, a finding or an unreachable
# proxy, fails: a check that did not run is not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."

govulncheck_version=v1.9.0
indexdb_version=v0.0.0-20261105234957-e22db6528018
vulndb_version=${VULNDB_VERSION:-latest}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/runbook-vulndb

# Download outside this module so go.mod is never touched.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
info=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "golang.org/x/vulndb@$vulndb_version")
version=$(sed -n 's/^[[:space:]]*"Version": "\(.*\)",*$/\1/p' <<<"$info" | head -1)
src=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p' <<<"$info" | head -1)
if [ -z "$version" ] || [ ! -d "$src/data/osv" ]; then
	printf '%s\n' "$info" >&2
	echo "vulncheck: golang.org/x/vulndb@$vulndb_version has no data/osv" >&2
	exit 1
fi

db=$cache/$version
if [ ! -f "$db/index/db.json" ]; then
	rm -rf "$db.tmp"
	mkdir -p "$cache"
	(cd "$tmp" && go run "golang.org/x/vulndb/cmd/indexdb@$indexdb_version" -vulns "$src/data/osv" -out "$db.tmp")
	rm -rf "$db"
	mv "$db.tmp" "$db"
fi
echo "vulncheck: database golang.org/x/vulndb@$version ($(ls "$src/data/osv" | wc -l) reports), $(go version)"
go run "golang.org/x/vuln/cmd/govulncheck@$govulncheck_version" -db "file://$db" ./...
