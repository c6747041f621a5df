#!/usr/bin/env bash
# Runs every fuzz target in the module for a budget each: a duration (10s)
# or a count of executions (5000x). CI uses a count: a duration can end
# while a worker is inside a slow input, which Go reports as a failure
# ("context deadline exceeded") though nothing was found.
set -euo pipefail
budget=${1:-10s}
cd "$(dirname "$0")/.."
status=0
while IFS=: read -r file func; do
	pkg=./$(dirname "$file")
	echo "fuzz $pkg $func ($budget)"
	if ! go test -run '^$' -fuzz "^${func}\$" -fuzztime "$budget" "$pkg"; then
		status=1
	fi
done < <(git grep -n -E '^func (Fuzz[A-Za-z0-9_]+)\(' -- '*_test.go' | sed -E 's/^([^:]+):[0-9]+:func (Fuzz[A-Za-z0-9_]+).*/\1:\2/')
exit $status
