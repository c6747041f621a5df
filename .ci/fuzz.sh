#!/usr/bin/env bash
# Runs every fuzz target in the module for the given time each (default 10s).
set -euo pipefail
fuzztime=${1:-10s}
cd "$(dirname "$0")/.."
status=0
while IFS=: read -r file func; do
	pkg=./$(dirname "$file")
	echo "fuzz $pkg $func ($fuzztime)"
	if ! go test -run '^$' -fuzz "^${func}\$" -fuzztime "$fuzztime" "$pkg"; then
		status=1
	fi
done < <(git grep -n -E '^func (Fuzz[A-Za-z0-9_]+)\(' -- '*_test.go' | sed -E 's/^([^:]+):[0-9]+:func (Fuzz[A-Za-z0-9_]+).*/\1:\2/')
exit $status
