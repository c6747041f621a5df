// Package bench holds the benchmarks `make bench` runs against the lab and
// the report it writes (BENCHMARKS.md and results.json in this directory).
//
// Containment is measured four ways in the same run, from the same clean
// state before every iteration: the runbook binary, ansible-playbook with
// playbooks/bench (tuned, and with stock settings on the largest fleet),
// the OpenSSH client in parallel, and the floor (cmd/sshfloor: x/crypto/ssh
// and nothing else). The benchmarks are not part of `go test ./...`: they
// run only when RUNBOOK_BENCH is set, to "full" (what `make bench` runs) or
// "smoke" (one gateway, one iteration, for CI).
package bench
