// Package bench holds the benchmarks `make bench` runs against the lab and
// the report it writes (BENCHMARKS.md and results.json in this directory).
//
// The scenarios, run one after the other by TestBench:
//  1. containment of 1, 5 and 20 gateways four ways in the same run, from
//     the same clean state before every iteration: the runbook binary,
//     ansible-playbook with playbooks/bench (tuned, and with stock settings
//     on the largest fleet), the OpenSSH client in parallel, and the floor
//     (cmd/sshfloor: x/crypto/ssh and nothing else), all doing the same
//     work (stop the proxy, drop its port for IPv4 and IPv6);
//  2. the plan (dry run) of compromise-master on the 20-gateway lab;
//  3. re-issue of 1,000, 10,000 and 100,000 virtual keys, Vault writes
//     included (runbooks/reissue-all.yaml here);
//  4. compromise-master end to end on 3 gateways with 10,000 keys, with
//     each phase's and step's time from the incident record;
//  5. rotate-master on 3 gateways while clients send requests through the
//     lab's nginx, counting failed requests;
//  6. the runner's peak RSS in 3 and 4, from the child's rusage.
//
// The benchmarks are not part of `go test ./...`: they run only when
// RUNBOOK_BENCH is set, to "full" (what `make bench` runs: a warm-up and
// five timed iterations of each figure, 100,000 keys once) or "smoke"
// (one iteration of each scenario at its smallest size, for CI).
// RUNBOOK_BENCH_OUT names the directory the report goes to (full mode:
// this directory; smoke: a temporary one).
package bench
