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

// ansibleSeconds is about how long the Ansible ways ran: their timed runs,
// and a warm-up at the median for the ways that have one.
func (r *Results) ansibleSeconds() float64 {
	var total float64
	for _, s := range r.Samples {
		if s.Way != wayAnsible && s.Way != wayAnsibleStock {
			continue
		}
		for _, v := range s.Seconds {
			total += v
		}
		if s.Way == wayAnsible {
			total += float64(r.Warmup) * s.Median
		}
	}
	return total
}

// requiredSeconds is how long the timed runs alone take at this run's
// medians: all when every figure gets a warm-up and 5 timed runs (the
// stock Ansible way gets no warm-up of its own, as the harness runs it);
// asRun is the same with each re-issue size run as often as this run ran it.
func (r *Results) requiredSeconds() (all, asRun float64) {
	const runs = 1 + 5
	for _, s := range r.Samples {
		n := runs
		if s.Way == wayAnsibleStock {
			n = runs - 1
		}
		all += float64(n) * s.Median
	}
	if p := r.Plan; p != nil && p.Seconds.ok() {
		all += runs * p.Seconds.Median
	}
	if c := r.Compromise; c != nil && c.Seconds.ok() {
		all += runs * c.Seconds.Median
	}
	if ro := r.Rotation; ro != nil && ro.Seconds.ok() {
		all += runs * ro.Seconds.Median
	}
	asRun = all
	for _, x := range r.Reissue {
		if x.Seconds.ok() {
			all += runs * x.Seconds.Median
			asRun += float64(x.Warmup+len(x.Seconds.Values)) * x.Seconds.Median
		}
	}
	return all, asRun
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

func (r *Results) reissueAt(keys int) *ReissueResult {
	for _, x := range r.Reissue {
		if x.Keys == keys && x.Seconds.ok() {
			return x
		}
	}
	return nil
}

func secs(v float64) string { return fmt.Sprintf("%.3f s", v) }

// spread is "median (min to max)" with f formatting each value.
func spread(s Series, f string) string {
	if !s.ok() {
		return ""
	}
	if len(s.Values) == 1 {
		return fmt.Sprintf(f, s.Median)
	}
	return fmt.Sprintf(f+" ("+f+" to "+f+")", s.Median, s.Min, s.Max)
}

func count(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// target is one of the targets, checked against a measured figure.
type target struct {
	what  string
	limit string
	got   string
	met   bool
}

const rssLimitMiB = 150

func (r *Results) targets() []target {
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
	if p := r.Plan; p != nil && p.Gateways == 20 && p.Seconds.ok() {
		ts = append(ts, target{"plan of compromise-master on 20 gateways", "under 1 s", secs(p.Seconds.Median), p.Seconds.Median < 1})
	}
	for _, k := range []struct {
		keys  int
		limit float64
	}{{10000, 5}, {100000, 30}} {
		if x := r.reissueAt(k.keys); x != nil {
			ts = append(ts, target{fmt.Sprintf("re-issue of %s keys, Vault writes included", count(k.keys)), fmt.Sprintf("under %.0f s", k.limit),
				secs(x.Seconds.Median), x.Seconds.Median < k.limit})
		}
	}
	if c := r.Compromise; c != nil && c.Seconds.ok() && c.Gateways == 3 && c.Keys == 10000 {
		ts = append(ts, target{"compromise-master end to end, 3 gateways, 10,000 keys", "under 15 s", secs(c.Seconds.Median), c.Seconds.Median < 15})
	}
	if ro := r.Rotation; ro != nil && ro.Seconds.ok() {
		var failed, total float64
		for i := range ro.Failed.Values {
			failed += ro.Failed.Values[i]
			total += ro.Requests.Values[i]
		}
		ts = append(ts, target{fmt.Sprintf("rotate-master on %d gateways under load: failed requests", ro.Gateways), "zero",
			fmt.Sprintf("%.0f of %.0f", failed, total), failed == 0})
	}
	for _, x := range r.Reissue {
		if x.MaxRSSMiB.ok() {
			ts = append(ts, target{fmt.Sprintf("peak RSS, re-issue of %s keys", count(x.Keys)), fmt.Sprintf("under %d MiB", rssLimitMiB),
				fmt.Sprintf("%.1f MiB", x.MaxRSSMiB.Max), x.MaxRSSMiB.Max < rssLimitMiB})
		}
	}
	if c := r.Compromise; c != nil && c.MaxRSSMiB.ok() {
		ts = append(ts, target{fmt.Sprintf("peak RSS, compromise-master with %s keys", count(c.Keys)), fmt.Sprintf("under %d MiB", rssLimitMiB),
			fmt.Sprintf("%.1f MiB", c.MaxRSSMiB.Max), c.MaxRSSMiB.Max < rssLimitMiB})
	}
	if r.Mode == "full" && r.Elapsed > 0 {
		ts = append(ts, target{"make bench, the whole harness", "under 15 minutes", fmt.Sprintf("%.1f minutes", r.Elapsed/60), r.Elapsed < 15*60})
	}
	return ts
}

func markdown(r *Results) string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Written by `make bench` (internal/bench); the raw figures are in `results.json` beside this file.\n")
	b.WriteString("Absolute times drift on shared machines: compare the ratios, which are taken in the same run.\n\n")
	fmt.Fprintf(&b, "- Date: %s (mode %s: %d warm-up and %d timed iterations per figure unless a section says otherwise)\n", r.Date, r.Mode, r.Warmup, r.Iters)
	fmt.Fprintf(&b, "- Machine: %s cores (%s), %s, Debian %s; load average %s before, %s after\n",
		r.Machine["nproc"], r.Machine["cpu"], r.Machine["kernel"], r.Machine["debian"], r.Machine["load_before"], r.Machine["load_after"])
	fmt.Fprintf(&b, "- Versions: runbook %s, %s, %s, OpenSSH server %s, %s, %s, PostgreSQL %s, %s, Vault %s\n",
		r.Versions["runbook"], r.Versions["go"], r.Versions["openssh"], r.Versions["sshd"], r.Versions["ansible-playbook"], r.Versions["iptables"],
		r.Versions["postgresql"], r.Versions["nginx"], r.Versions["vault"])
	if r.Elapsed > 0 {
		fmt.Fprintf(&b, "- The whole harness took %.1f minutes (builds and labs included)", r.Elapsed/60)
		if a := r.ansibleSeconds(); a > 0 {
			fmt.Fprintf(&b, "; ansible-playbook's runs about %.1f of them (timed runs, and each warm-up counted at its way's median)", a/60)
		}
		b.WriteString("\n")
	}
	b.WriteString("\nFigures are medians with the range (min to max) in brackets.\n")

	ts := r.targets()
	if len(ts) > 0 {
		b.WriteString("\n## Targets\n\n| target | limit | measured | |\n|---|---|---|---|\n")
		for _, t := range ts {
			verdict := "met"
			if !t.met {
				verdict = "**MISSED**"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.what, t.limit, t.got, verdict)
		}
		b.WriteString("\nWhere a target is missed, the last section says where the time goes.\n")
	}

	r.containmentSection(&b)
	r.planSection(&b)
	r.reissueSection(&b)
	r.compromiseSection(&b)
	r.rotationSection(&b)
	r.memorySection(&b)
	r.timeSection(&b, ts)
	return b.String()
}

func (r *Results) containmentSection(b *strings.Builder) {
	b.WriteString("\n## 1. Containment\n\n")
	b.WriteString("Stop the proxy and drop its port, for IPv4 and IPv6, on every gateway of a lab, from the same state each time\n")
	b.WriteString("(no DROP rule, proxy running), process start included for every way. All four ways do the same work, and after\n")
	b.WriteString("each run the harness checks every gateway: a DROP rule for TCP port 4000 at the top of INPUT in both iptables\n")
	b.WriteString("and ip6tables, and the proxy inactive.\n\n")
	b.WriteString("- runbook: `runbook exec contain --yes` (runbooks/contain.yaml; it also journals the run and writes an incident record)\n")
	b.WriteString("- ansible-playbook: playbooks/bench/contain.yml (`command: systemctl stop litellm`, `ansible.builtin.iptables` for ipv4 and ipv6, gather_facts off); tuned with playbooks/bench/ansible.cfg (pipelining on) and `--forks N`; stock: an empty ansible.cfg (forks 5, no pipelining). The stock way has no warm-up run of its own: it runs the same playbook on the same gateways right after the tuned way's warm-up\n")
	fmt.Fprintf(b, "- OpenSSH client: one `ssh` per gateway at once, running `%s`\n", remoteCommand)
	b.WriteString("- floor: internal/bench/cmd/sshfloor, x/crypto/ssh connecting to every gateway at once, one session each, the same command\n\n")
	ns := r.sizes()
	if len(ns) == 0 {
		b.WriteString("Not measured in this run.\n")
		return
	}
	b.WriteString("Wall time:\n\n| way |")
	for _, n := range ns {
		fmt.Fprintf(b, " %d gateway%s |", n, plural(n))
	}
	b.WriteString("\n|---|")
	for range ns {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, w := range []string{wayRunbook, wayAnsible, wayAnsibleStock, wayOpenSSH, wayFloor} {
		fmt.Fprintf(b, "| %s |", w)
		for _, n := range ns {
			if s := r.find(w, n); s != nil {
				fmt.Fprintf(b, " %.3f s (%.3f to %.3f) |", s.Median, s.Min, s.Max)
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
		fmt.Fprintf(b, "| %d | %s | %s | %s | %s |\n", n,
			ratio(r.find(wayAnsible, n), rb), ratio(r.find(wayAnsibleStock, n), rb),
			ratio(rb, r.find(wayFloor, n)), ratio(rb, r.find(wayOpenSSH, n)))
	}
}

func (r *Results) planSection(b *strings.Builder) {
	b.WriteString("\n## 2. Plan\n\n")
	p := r.Plan
	if p == nil || !p.Seconds.ok() {
		b.WriteString("Not measured in this run.\n")
		return
	}
	fmt.Fprintf(b, "`runbook plan compromise-master -o json` on the containment lab of %s (with Vault and PostgreSQL), from\n", gateways(p.Gateways))
	b.WriteString("the state before an incident: every step's observation on every gateway, in Vault and in the database; nothing\n")
	b.WriteString("written. The harness checks the plan stops the proxy and drops the port on every gateway. Process start included.\n\n")
	b.WriteString("| gateways | wall time | runner CPU time | peak RSS |\n|---|---|---|---|\n")
	fmt.Fprintf(b, "| %d | %s | %s | %s |\n", p.Gateways, spread(p.Seconds, "%.3f s"), spread(p.CPUSeconds, "%.3f s"), spread(p.MaxRSSMiB, "%.1f MiB"))
}

func (r *Results) reissueSection(b *strings.Builder) {
	b.WriteString("\n## 3. Re-issue of virtual keys\n\n")
	if len(r.Reissue) == 0 {
		b.WriteString("Not measured in this run.\n")
		return
	}
	b.WriteString("`runbook exec reissue-all` (internal/bench/runbooks/reissue-all.yaml: stop the proxy on the lab's one gateway,\n")
	b.WriteString("then `litellm.reissue_virtual_keys` with `all: true`, as compromise-master's reissue step) on a database of N\n")
	b.WriteString("keys (lab.Seed). Each key's new value is written to Vault before the database changes; after the warm-up at each\n")
	b.WriteString("size every key's Vault path exists, so each timed run writes a new version over it (one Vault request per key:\n")
	b.WriteString("a run's first attempt reads a path first only where it requires check-and-set; a resumed attempt reads every\n")
	b.WriteString("path, to reuse the keys it stored before). Wall time is the process's, start to exit; the step's time is its\n")
	b.WriteString("span in the run's record. CPU times are the runner's (rusage) and the Vault server's (/proc) during the run.\n\n")
	b.WriteString("| keys | timed runs | wall time | reissue step | keys per second | runner CPU | Vault CPU | peak RSS |\n|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Reissue {
		rate := ""
		if x.Seconds.Median > 0 {
			rate = fmt.Sprintf("%.0f", float64(x.Keys)/x.Seconds.Median)
		}
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", count(x.Keys), len(x.Seconds.Values),
			spread(x.Seconds, "%.2f s"), spread(x.StepSeconds, "%.2f s"), rate,
			spread(x.RunnerCPU, "%.2f s"), spread(x.VaultCPU, "%.2f s"), spread(x.MaxRSSMiB, "%.1f MiB"))
	}
	for _, x := range r.Reissue {
		if x.Note != "" {
			fmt.Fprintf(b, "\n%s keys: %s.\n", count(x.Keys), x.Note)
		}
	}
}

func (r *Results) compromiseSection(b *strings.Builder) {
	b.WriteString("\n## 4. compromise-master end to end\n\n")
	c := r.Compromise
	if c == nil || !c.Seconds.ok() {
		b.WriteString("Not measured in this run.\n")
		return
	}
	fmt.Fprintf(b, "`runbook exec compromise-master --yes` on %d gateways with %s virtual keys: contain (stop, drop), rotate (a new\n", c.Gateways, count(c.Keys))
	b.WriteString("master key in Vault, re-encryption, every virtual key re-issued, the exposure report), recover (each gateway\n")
	b.WriteString("restarted on the new key behind its health gate, containment lifted; the key promoted). Each run starts where the\n")
	b.WriteString("last left the lab; the harness checks the record says succeeded and every gateway serves again. Phase and step\n")
	b.WriteString("times come from the run's incident record (a step's time: first observation to last journal record, all hosts).\n\n")
	fmt.Fprintf(b, "| | target | time |\n|---|---|---|\n| whole run (process) | | %s |\n", spread(c.Seconds, "%.2f s"))
	for _, p := range c.Phases {
		fmt.Fprintf(b, "| phase %s | %s | %s |\n", p.Name, p.Target, spread(p.Seconds, "%.2f s"))
	}
	for _, s := range c.Steps {
		fmt.Fprintf(b, "| step %s | | %s |\n", s.Name, spread(s.Seconds, "%.2f s"))
	}
	fmt.Fprintf(b, "\nRunner CPU %s, Vault CPU %s, runner peak RSS %s.\n", spread(c.RunnerCPU, "%.2f s"), spread(c.VaultCPU, "%.2f s"), spread(c.MaxRSSMiB, "%.1f MiB"))
}

func (r *Results) rotationSection(b *strings.Builder) {
	b.WriteString("\n## 5. Zero-downtime rotation\n\n")
	ro := r.Rotation
	if ro == nil || !ro.Seconds.ok() {
		b.WriteString("Not measured in this run.\n")
		return
	}
	b.WriteString("`runbook exec rotate-master --yes`: the shipped runbook (one gateway at a time behind its health gate) with, in its\n")
	b.WriteString("two rollout steps, the drain and undrain its description advises for a balancer that does not retry a POST:\n")
	b.WriteString("`runbook-lab drain|undrain GATEWAY`, which mark the gateway down in the lab's nginx and return once no worker from\n")
	b.WriteString("before the reload is left (so `settle` is 0 s instead of 2 s). The lab gateway closes its listener at once on SIGTERM.\n")
	fmt.Fprintf(b, "On %d gateways behind the lab's nginx, while %d clients send requests through nginx with a virtual key, half\n", ro.Gateways, ro.Clients)
	b.WriteString("chat completions (POST), half model lists, each on a new connection. A failed request is a transport error or\n")
	if r.Warmup > 0 {
		b.WriteString("any status but 200. The warm-up run also pins LITELLM_SALT_KEY (a rolling restart of its own).\n\n")
	} else {
		b.WriteString("any status but 200. Without a warm-up, the first timed run also pins LITELLM_SALT_KEY (a rolling restart of\nits own).\n\n")
	}
	b.WriteString("| gateways | rotate-master | requests per run | failed per run |\n|---|---|---|---|\n")
	fmt.Fprintf(b, "| %d | %s | %s | %s |\n", ro.Gateways, spread(ro.Seconds, "%.2f s"), spread(ro.Requests, "%.0f"), spread(ro.Failed, "%.0f"))
	if len(ro.Failures) > 0 {
		b.WriteString("\nFirst failures:\n\n")
		for _, f := range ro.Failures {
			fmt.Fprintf(b, "- %s\n", f)
		}
	}
}

func (r *Results) memorySection(b *strings.Builder) {
	b.WriteString("\n## 6. Peak memory\n\n")
	b.WriteString("Maximum resident set of the runbook process, from the kernel's accounting of the child (rusage ru_maxrss),\n")
	b.WriteString("taken through internal/bench/cmd/measure: a child started straight from the test binary is charged with the\n")
	b.WriteString("test's own high-water mark (Go starts children with vfork, in the parent's address space until exec), so the\n")
	b.WriteString("runner is started from that small program instead, whose few MiB are the figure's floor.\n\n")
	b.WriteString("| run | peak RSS |\n|---|---|\n")
	any := false
	if p := r.Plan; p != nil && p.MaxRSSMiB.ok() {
		fmt.Fprintf(b, "| plan of compromise-master, %s | %s |\n", gateways(p.Gateways), spread(p.MaxRSSMiB, "%.1f MiB"))
		any = true
	}
	for _, x := range r.Reissue {
		if x.MaxRSSMiB.ok() {
			fmt.Fprintf(b, "| re-issue of %s keys | %s |\n", count(x.Keys), spread(x.MaxRSSMiB, "%.1f MiB"))
			any = true
		}
	}
	if c := r.Compromise; c != nil && c.MaxRSSMiB.ok() {
		fmt.Fprintf(b, "| compromise-master, %d gateways, %s keys | %s |\n", c.Gateways, count(c.Keys), spread(c.MaxRSSMiB, "%.1f MiB"))
		any = true
	}
	if !any {
		b.WriteString("| not measured in this run | |\n")
	}
}

// timeSection is the closing note: for every missed target, the measured
// figure and where the time goes, from the run's own CPU accounting and
// profiles.
func (r *Results) timeSection(b *strings.Builder, ts []target) {
	b.WriteString("\n## Where the time goes\n\n")
	var missed []string
	for _, t := range ts {
		if !t.met {
			missed = append(missed, fmt.Sprintf("%s (%s, measured %s)", t.what, t.limit, t.got))
		}
	}
	if len(missed) == 0 {
		b.WriteString("Every target measured in this run was met.\n")
	} else {
		fmt.Fprintf(b, "Missed in this run: %s.\n", strings.Join(missed, "; "))
	}
	fmt.Fprintf(b, "\nThe load average on this %s-core machine was %s before the run and %s after: other work shared the cores, and\n",
		r.Machine["nproc"], r.Machine["load_before"], r.Machine["load_after"])
	b.WriteString("every wall time here includes waiting for them. CPU times are less affected.\n")

	if rb := r.find(wayRunbook, r.largest()); rb != nil && len(rb.CPUSeconds) > 0 {
		cpu, _, _ := stats(rb.CPUSeconds)
		fmt.Fprintf(b, "\n- Containment (%s): runbook took %.3f s of wall time but only %.3f s of its own CPU; the rest is waiting on\n",
			gateways(rb.Gateways), rb.Median, cpu)
		b.WriteString("  SSH (handshakes, sessions, the remote commands) and on the other processes sharing the cores.")
		if f := r.find(wayFloor, rb.Gateways); f != nil {
			fmt.Fprintf(b, " The floor, which does nothing but\n  that SSH work, took %.3f s in the same run.\n", f.Median)
		} else {
			b.WriteString("\n")
		}
		b.WriteString("  On 2 cores, CPU is the wall time at 20 gateways, and most of it is process creation on the gateways (traced\n")
		b.WriteString("  with `strace -f -e trace=execve` on a gateway's sshd). Every way pays for one sshd connection per gateway\n")
		b.WriteString("  (sshd re-executes itself and forks twice; handshake and authentication took 60 to 69 ms here, against the\n")
		b.WriteString("  29 ms in the figures measured before the project) and bash. The floor then runs three programs: systemctl\n")
		b.WriteString("  stop, iptables -I, ip6tables -I. runbook observes before it acts and runs nine: sh (its one shell per\n")
		b.WriteString("  host), systemctl is-active and stop, iptables -S and ip6tables -S (the step's check lists the chain),\n")
		b.WriteString("  then iptables -C and -I and ip6tables -C and -I (a -C before every insert, never a duplicate rule). Each\n")
		b.WriteString("  program costs 6 to 9 ms of CPU on these gateways. The 0.35 s target is below what the floor itself takes\n")
		b.WriteString("  here; 1.3 times the floor would leave runbook about 60 ms per gateway for six observations that the\n")
		b.WriteString("  floor does not make.\n")
	}
	if a := r.ansibleSeconds(); a > 0 && r.Elapsed > 0 {
		fmt.Fprintf(b, "- The harness (%.1f minutes): ansible-playbook's runs took about %.1f minutes of it. On 20 gateways one run\n", r.Elapsed/60, a/60)
		var runs []string
		for _, w := range []struct{ way, name string }{{wayAnsible, "tuned"}, {wayAnsibleStock, "stock"}} {
			if s := r.find(w.way, r.largest()); s != nil {
				runs = append(runs, fmt.Sprintf("%.1f s %s", s.Median, w.name))
			}
		}
		fmt.Fprintf(b, "  took %s, against the 5.5 s tuned and 6.65 s stock measured before the project: its\n", strings.Join(runs, " and "))
		b.WriteString("  workers and the Python each task starts on every gateway need the same 2 cores.")
		if s := r.find(wayAnsible, 1); s != nil {
			fmt.Fprintf(b, " On 1 gateway, where nothing\n  competes, one tuned run took %.2f s against the 1.09 s measured before the project. Traced with\n", s.Median)
			b.WriteString("  `strace -f -tt -e trace=execve` (2026-11-28, 1 gateway): the controller takes about 0.45 s to start and\n")
			b.WriteString("  1 s more before its first ssh (inventory, playbook, an `ssh -o ControlPersist` probe, `ldconfig -p`), then\n")
			b.WriteString("  about 0.1 s for each of its two Python discovery commands and 0.5 to 1 s for each module it runs (the\n")
			b.WriteString("  command, then iptables twice).")
		}
		fmt.Fprintf(b, " The other %.1f minutes are the labs, the restores between runs\n", (r.Elapsed-a)/60)
		b.WriteString("  (each way starts from the same state) and the other scenarios.\n")
		all, asRun := r.requiredSeconds()
		fmt.Fprintf(b, "  A warm-up and 5 timed runs of every figure, at this run's medians, take %.1f minutes before any lab\n", all/60)
		fmt.Fprintf(b, "  starts (%.1f minutes with each re-issue size run as often as here), against the 15-minute budget.\n", asRun/60)
	}
	if p := r.Plan; p != nil && p.Seconds.ok() {
		fmt.Fprintf(b, "- Plan (%s): %.3f s of wall time, %.3f s of runner CPU: the plan waits on its observations (SSH to every\n",
			gateways(p.Gateways), p.Seconds.Median, p.CPUSeconds.Median)
		b.WriteString("  gateway, Vault, the database), not on its own work. Per gateway it opens one SSH connection and runs\n")
		b.WriteString("  bash, sh, systemctl is-active, iptables -S and ip6tables -S (traced as above): the containment floor's\n")
		b.WriteString("  connection and as many programs")
		if f := r.find(wayFloor, p.Gateways); f != nil {
			fmt.Fprintf(b, ", and the floor took %.3f s on as many gateways in the same run", f.Median)
		}
		b.WriteString(".\n")
	}
	for _, x := range r.Reissue {
		if !x.Seconds.ok() {
			continue
		}
		k := float64(x.Keys)
		fmt.Fprintf(b, "- Re-issue of %s keys: %.2f ms of wall time per key; per key the runner spent %.0f µs of CPU and Vault %.0f µs",
			count(x.Keys), 1000*x.Seconds.Median/k, 1e6*x.RunnerCPU.Median/k, 1e6*x.VaultCPU.Median/k)
		if x.Seconds.Median > 0 {
			fmt.Fprintf(b, " (together %.1f cores busy on average over the run)", (x.RunnerCPU.Median+x.VaultCPU.Median)/x.Seconds.Median)
		}
		b.WriteString(".\n")
	}
	if len(r.Reissue) > 0 {
		b.WriteString("  Vault's CPU per request dominates re-issue: every key costs one write, and the server's per-request work\n")
		b.WriteString("  (token lookup, ACL, the KV engine's metadata and path encryption, request handling, garbage collection)\n")
		b.WriteString("  outweighs the runner's. A write over an existing path costs Vault more than a new path, and more with each\n")
		b.WriteString("  version the path keeps (up to the mount's max_versions, 10 by default): the timed runs at one size get\n")
		b.WriteString("  slower one after another. With 10,000 keys, the first attempt used to read each path before writing it\n")
		b.WriteString("  (two requests per key; 10.6 s median under load average 7, 2026-11-28), and the masker searched every\n")
		b.WriteString("  output for each of the 10,000 new keys in turn (7.7 s to mask 1 MiB; BenchmarkMaskManySecrets in\n")
		b.WriteString("  internal/secret now measures 43 ms with a prefix index).\n")
		b.WriteString("  The lab's runner token is made without Vault's default policy (internal/lab/vault.go): that policy is\n")
		b.WriteString("  templated, so Vault parsed its HCL again on every request. Measured before and after that change on this\n")
		b.WriteString("  machine (2026-11-28, under load, two runs each), re-issuing 10,000 keys cost Vault 38 and 49 s of CPU with\n")
		b.WriteString("  the default policy and 18 and 22 s without; Vault's profile then had 31% of its samples in\n")
		b.WriteString("  `vault.(*PolicyStore).ACL` (`parseACLPolicyWithTemplating`, the HCL decoder).\n")
	}
	if c := r.Compromise; c != nil && c.Seconds.ok() {
		var top []*NamedSeries
		top = append(top, c.Steps...)
		sort.SliceStable(top, func(i, j int) bool { return top[i].Seconds.Median > top[j].Seconds.Median })
		var parts []string
		for i, s := range top {
			if i == 3 {
				break
			}
			parts = append(parts, fmt.Sprintf("%s %.2f s", s.Name, s.Seconds.Median))
		}
		fmt.Fprintf(b, "- compromise-master (%d gateways, %s keys): %.2f s; the longest steps: %s.\n",
			c.Gateways, count(c.Keys), c.Seconds.Median, strings.Join(parts, ", "))
	}
	if ro := r.Rotation; ro != nil && ro.Failed.ok() && ro.Failed.Max > 0 {
		b.WriteString("- Rotation: requests failed during rotate-master; the first are listed in section 5.")
		post502 := true
		for _, f := range ro.Failures {
			post502 = post502 && strings.Contains(f, "POST ") && strings.HasSuffix(f, "status 502")
		}
		if post502 {
			b.WriteString(" Every one listed is a\n")
			b.WriteString("  chat completion (POST) nginx answered 502 during the rolling restarts: nginx passes a request to another gateway\n")
			b.WriteString("  on error, but not a POST it already sent (its proxy_next_upstream has no non_idempotent), and the shipped\n")
			b.WriteString("  runbook has no drain and undrain commands, which its description says to add for such a load balancer.\n")
		} else {
			b.WriteString("\n")
		}
	}

	for _, p := range r.Profiles {
		fmt.Fprintf(b, "\nCPU profile of %s during the %s", p.Process, p.Run)
		if p.Error != "" {
			fmt.Fprintf(b, ": not taken (%s).\n", p.Error)
			continue
		}
		fmt.Fprintf(b, " (%s; %.0f%% of samples in the garbage collector). The functions with the most samples under them,\n", p.Header, p.GCPercent)
		b.WriteString("leaving out the runtime and the standard library's plumbing (`go tool pprof -top -cum`):\n\n")
		b.WriteString("| function | cumulative | flat |\n|---|---|---|\n")
		for _, l := range p.Top {
			fmt.Fprintf(b, "| `%s` | %.1f%% | %.1f%% |\n", l.Func, l.CumPct, l.FlatPct)
		}
	}
	if len(r.Profiles) > 0 {
		b.WriteString("\nThe runner's profile comes from RUNBOOK_CPUPROFILE (cmd/runbook), Vault's from its sys/pprof/profile endpoint,\n")
		b.WriteString("both taken over the same timed run.\n")
	}
}

func gateways(n int) string { return fmt.Sprintf("%d gateway%s", n, plural(n)) }

// largest is the largest containment fleet measured.
func (r *Results) largest() int {
	ns := r.sizes()
	if len(ns) == 0 {
		return 0
	}
	return ns[len(ns)-1]
}
