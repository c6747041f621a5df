package bench_test

import (
	"fmt"
	"sort"
	"strings"
)

func (r *Results) find(way string, n int) *Sample {
	for _, s := range r.Samples {
		if s.Way == way && s.Gateways == n && len(s.Seconds) > 0 {
			return s
		}
	}
	return nil
}

func (r *Results) sizes() []int {
	seen := map[int]bool{}
	var ns []int
	for _, s := range r.Samples {
		if !seen[s.Gateways] {
			seen[s.Gateways] = true
			ns = append(ns, s.Gateways)
		}
	}
	sort.Ints(ns)
	return ns
}

func secs(v float64) string { return fmt.Sprintf("%.3f s", v) }

// target is one of the targets, checked against a measured figure.
type target struct {
	what  string
	limit string
	got   string
	met   bool
}

func markdown(r *Results) string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Written by `make bench` (internal/bench); the raw figures are in `results.json` beside this file.\n")
	b.WriteString("Absolute times drift on shared machines: compare the ratios, which are taken in the same run.\n\n")
	fmt.Fprintf(&b, "- Date: %s (mode %s: %d warm-up and %d timed iterations per figure, the ways taking turns)\n", r.Date, r.Mode, r.Warmup, r.Iters)
	fmt.Fprintf(&b, "- Machine: %s cores (%s), %s, Debian %s; load average %s before, %s after\n",
		r.Machine["nproc"], r.Machine["cpu"], r.Machine["kernel"], r.Machine["debian"], r.Machine["load_before"], r.Machine["load_after"])
	fmt.Fprintf(&b, "- Versions: runbook %s, %s, %s, OpenSSH server %s, %s, %s\n\n",
		r.Versions["runbook"], r.Versions["go"], r.Versions["openssh"], r.Versions["sshd"], r.Versions["ansible-playbook"], r.Versions["iptables"])

	b.WriteString("## 1. Containment\n\n")
	b.WriteString("Stop the proxy and drop its port on every gateway of a lab, from the same state each time\n")
	b.WriteString("(no DROP rule, proxy running), process start included for every way. After each run the\n")
	b.WriteString("harness checks every gateway: a DROP rule for TCP port 4000 at the top of INPUT and the proxy inactive.\n\n")
	b.WriteString("- runbook: `runbook exec contain --yes` (runbooks/contain.yaml; it also drops the port for IPv6, journals the run and writes an incident record)\n")
	b.WriteString("- ansible-playbook: playbooks/bench/contain.yml (`command: systemctl stop litellm`, `ansible.builtin.iptables`, gather_facts off); tuned with playbooks/bench/ansible.cfg (pipelining on) and `--forks N`; stock: an empty ansible.cfg (forks 5, no pipelining)\n")
	fmt.Fprintf(&b, "- OpenSSH client: one `ssh` per gateway at once, running `%s`\n", remoteCommand)
	b.WriteString("- floor: internal/bench/cmd/sshfloor, x/crypto/ssh connecting to every gateway at once, one session each, the same command\n\n")
	b.WriteString("Median wall time (min to max):\n\n")
	ns := r.sizes()
	b.WriteString("| way |")
	for _, n := range ns {
		fmt.Fprintf(&b, " %d gateway%s |", n, map[bool]string{true: "", false: "s"}[n == 1])
	}
	b.WriteString("\n|---|")
	for range ns {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, w := range []string{wayRunbook, wayAnsible, wayAnsibleStock, wayOpenSSH, wayFloor} {
		fmt.Fprintf(&b, "| %s |", w)
		for _, n := range ns {
			if s := r.find(w, n); s != nil {
				fmt.Fprintf(&b, " %.3f s (%.3f to %.3f) |", s.Median, s.Min, s.Max)
			} else {
				b.WriteString(" |")
			}
		}
		b.WriteString("\n")
	}

	b.WriteString("\nRatios of medians (how many times runbook's time the other way takes; below 1 means runbook is slower):\n\n")
	b.WriteString("| gateways | tuned ansible / runbook | stock ansible / runbook | runbook / floor | runbook / OpenSSH |\n|---|---|---|---|---|\n")
	ratio := func(a, c *Sample) string {
		if a == nil || c == nil || c.Median == 0 {
			return ""
		}
		return fmt.Sprintf("%.2f", a.Median/c.Median)
	}
	for _, n := range ns {
		rb := r.find(wayRunbook, n)
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s |\n", n,
			ratio(r.find(wayAnsible, n), rb), ratio(r.find(wayAnsibleStock, n), rb),
			ratio(rb, r.find(wayFloor, n)), ratio(rb, r.find(wayOpenSSH, n)))
	}

	var ts []target
	if rb := r.find(wayRunbook, 20); rb != nil {
		ts = append(ts, target{"containment of 20 gateways", "under 0.35 s", secs(rb.Median), rb.Median < 0.35})
		if a := r.find(wayAnsible, 20); a != nil {
			x := a.Median / rb.Median
			ts = append(ts, target{"20 gateways: faster than tuned ansible-playbook", "at least 15 times", fmt.Sprintf("%.2f times", x), x >= 15})
		}
		if a := r.find(wayAnsibleStock, 20); a != nil {
			x := a.Median / rb.Median
			ts = append(ts, target{"20 gateways: faster than stock ansible-playbook", "at least 20 times", fmt.Sprintf("%.2f times", x), x >= 20})
		}
		if f := r.find(wayFloor, 20); f != nil {
			x := rb.Median / f.Median
			ts = append(ts, target{"20 gateways: runbook / floor", "within 1.3 times", fmt.Sprintf("%.2f times", x), x <= 1.3})
		}
		if o := r.find(wayOpenSSH, 20); o != nil {
			x := rb.Median / o.Median
			ts = append(ts, target{"20 gateways: runbook / parallel OpenSSH", "under 0.4 times", fmt.Sprintf("%.2f times", x), x < 0.4})
		}
	}
	if rb := r.find(wayRunbook, 1); rb != nil {
		ts = append(ts, target{"containment of 1 gateway (process start included)", "under 0.12 s", secs(rb.Median), rb.Median < 0.12})
	}
	if len(ts) > 0 {
		b.WriteString("\nTargets:\n\n| target | limit | measured | |\n|---|---|---|---|\n")
		for _, t := range ts {
			verdict := "met"
			if !t.met {
				verdict = "**MISSED**"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.what, t.limit, t.got, verdict)
		}
	}
	b.WriteString("\n## 2 to 6\n\nPlan, re-issue, compromise-master end to end, zero-downtime rotation and peak memory are not\n")
	b.WriteString("measured by this harness yet; see the Go benchmarks BenchmarkReissue (internal/step/litellm),\n")
	b.WriteString("BenchmarkRotationUnderLoad (internal/step/rollout), BenchmarkContainment20 (internal/step/firewall)\n")
	b.WriteString("and BenchmarkLabUp20 (internal/lab).\n")
	return b.String()
}
