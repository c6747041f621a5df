package firewall_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/step/service"
	"github.com/runbook-dev/runbook/internal/transport"
	rbssh "github.com/runbook-dev/runbook/internal/transport/ssh"
	"github.com/runbook-dev/runbook/internal/transport/transporttest"
)

// The containment tests run the kinds the way the engine does (Check, then
// Apply when Check reports a change) against lab gateways: network
// namespaces with OpenSSH, their own iptables, a systemctl stand-in and a
// LiteLLM-compatible gateway on port 4000.

func hostOf(g *lab.Gateway) *inventory.Host {
	return &inventory.Host{Name: g.Name, Address: g.Address, Port: g.SSHPort, User: g.User, Sudo: g.Sudo}
}

func newDialer(t testing.TB, l *lab.Lab, knownHosts string) *rbssh.Dialer {
	t.Helper()
	if knownHosts == "" {
		knownHosts = l.KnownHosts
	}
	d, err := rbssh.NewDialer(rbssh.Config{KnownHosts: knownHosts, Identity: l.ClientKey, ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func mustStep(t testing.TB, s *step.Spec, p step.Params) step.Step {
	t.Helper()
	st, err := s.New(p)
	if err != nil {
		t.Fatalf("%s: %v", s.Name, err)
	}
	return st
}

// containment is the two steps of the issue: stop the proxy, drop its port.
func containment(t testing.TB) []named {
	return []named{
		{"stop-proxy", mustStep(t, service.StopSpec, step.Params{"unit": "litellm"})},
		{"drop-proxy", mustStep(t, firewall.DropSpec, step.Params{"port": "4000"})},
	}
}

type named struct {
	id string
	st step.Step
}

// hostResult is what one run did on one host.
type hostResult struct {
	changes []string // Observation.Change of steps that were applied
	outputs map[string]step.Outputs
	err     error
}

// runOn runs steps on one host as the engine does.
func runOn(ctx context.Context, runID string, tr transport.Transport, steps []named) hostResult {
	r := hostResult{outputs: map[string]step.Outputs{}}
	for _, s := range steps {
		env := &step.Env{RunID: runID, StepID: s.id, Host: tr.Host(), Transport: tr, Secrets: &secret.Masker{}}
		obs, err := s.st.Check(ctx, env)
		if err != nil {
			r.err = fmt.Errorf("%s: check: %w", s.id, err)
			return r
		}
		out := step.Outputs{}
		for k, v := range obs.Outputs {
			out[k] = v
		}
		if !obs.OK() {
			ao, err := s.st.Apply(ctx, env)
			if err != nil {
				r.err = fmt.Errorf("%s: apply: %w", s.id, err)
				return r
			}
			for k, v := range ao {
				out[k] = v
			}
			r.changes = append(r.changes, s.id+": "+obs.Change)
		}
		r.outputs[s.id] = out
	}
	return r
}

// fleet dials every gateway and runs steps on each, all at once; a host
// that fails (dial included) does not stop the others (policy continue).
func fleet(ctx context.Context, d *rbssh.Dialer, gws []*lab.Gateway, runID string, steps func() []named) map[string]hostResult {
	res := make(map[string]hostResult, len(gws))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, g := range gws {
		wg.Add(1)
		go func(g *lab.Gateway) {
			defer wg.Done()
			var r hostResult
			tr, err := d.Dial(ctx, hostOf(g))
			if err != nil {
				r.err = err
			} else {
				r = runOn(ctx, runID, tr, steps())
				tr.Close()
			}
			mu.Lock()
			res[g.Name] = r
			mu.Unlock()
		}(g)
	}
	wg.Wait()
	return res
}

// portState probes port 4000 of a gateway from the root namespace.
func portState(g *lab.Gateway) string {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(g.Address, "4000"), 1500*time.Millisecond)
	if err == nil {
		c.Close()
		return "open"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "refused"
	}
	return err.Error()
}

func run(t testing.TB, tr transport.Transport, args ...string) transport.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := tr.Run(ctx, transport.Command{Args: args, Sudo: true})
	if err != nil {
		t.Fatalf("%s on %s: %v", transport.Join(args), tr.Host(), err)
	}
	return res
}

// runbookRules counts the rules with a runbook comment in a family's INPUT.
func runbookRules(t testing.TB, tr transport.Transport, bin string) int {
	t.Helper()
	res := run(t, tr, bin, "-w", "-S", "INPUT")
	if res.ExitCode != 0 {
		t.Fatalf("%s -S on %s: exit %d: %s", bin, tr.Host(), res.ExitCode, res.Stderr)
	}
	return bytes.Count(res.Stdout, []byte(firewall.CommentPrefix))
}

func upLab(t testing.TB, n int) *lab.Lab {
	t.Helper()
	return labtest.Up(t, lab.Config{Gateways: n, Postgres: true})
}

func TestContainment(t *testing.T) {
	l := upLab(t, 3)
	gws := l.Gateways
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d := newDialer(t, l, "")
	conns := map[string]transport.Transport{}
	for _, g := range gws {
		tr, err := d.Dial(ctx, hostOf(g))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		conns[g.Name] = tr
		if s := portState(g); s != "open" {
			t.Fatalf("before: port 4000 on %s is %s", g.Name, s)
		}
	}

	// The plan: Check alone lists exactly the two changes on each host.
	const runID = "20261128-080000-ab12"
	for _, g := range gws {
		for _, s := range containment(t) {
			env := &step.Env{RunID: runID, StepID: s.id, Host: g.Name, Transport: conns[g.Name], DryRun: true, Secrets: &secret.Masker{}}
			obs, err := s.st.Check(ctx, env)
			if err != nil {
				t.Fatalf("plan %s on %s: %v", s.id, g.Name, err)
			}
			if obs.OK() {
				t.Errorf("plan %s on %s: no change", s.id, g.Name)
			}
			t.Logf("plan %s %s: %s", g.Name, s.id, obs.Change)
		}
	}

	start := time.Now()
	res := fleet(ctx, d, gws, runID, func() []named { return containment(t) })
	t.Logf("containment of %d gateways: %v", len(gws), time.Since(start))
	for _, g := range gws {
		r := res[g.Name]
		if r.err != nil {
			t.Fatalf("%s: %v", g.Name, r.err)
		}
		if len(r.changes) != 2 {
			t.Errorf("%s: changes %q", g.Name, r.changes)
		}
		if got := r.outputs["stop-proxy"]["previous_state"]; got != "active" {
			t.Errorf("%s: previous_state %q", g.Name, got)
		}
		if got := r.outputs["drop-proxy"]["comment"]; got != "runbook:"+runID+":drop-proxy" {
			t.Errorf("%s: comment %q", g.Name, got)
		}
	}

	t.Run("Contained", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, g := range gws {
			wg.Add(1)
			go func(g *lab.Gateway) {
				defer wg.Done()
				if s := portState(g); s != "timeout" {
					t.Errorf("port 4000 on %s is %s, want a timeout", g.Name, s)
				}
			}(g)
		}
		wg.Wait()
		for _, g := range gws {
			// SSH still works, on a new connection too.
			d2 := newDialer(t, l, "")
			tr, err := d2.Dial(ctx, hostOf(g))
			if err != nil {
				t.Fatalf("ssh to %s after containment: %v", g.Name, err)
			}
			res := run(t, tr, "systemctl", "is-active", "litellm")
			if res.ExitCode != 3 || strings.TrimSpace(string(res.Stdout)) != "inactive" {
				t.Errorf("%s: systemctl is-active: exit %d %q", g.Name, res.ExitCode, res.Stdout)
			}
			for _, bin := range []string{"iptables", "ip6tables"} {
				if n := runbookRules(t, tr, bin); n != 1 {
					t.Errorf("%s: %d runbook rules in %s INPUT, want 1", g.Name, n, bin)
				}
			}
			tr.Close()
		}
	})

	t.Run("SecondRunChangesNothing", func(t *testing.T) {
		// A second run has a run id of its own: the rules of the first
		// run, found by their tag (the step id), count as present.
		for _, id := range []string{"20261128-080500-cd34", runID} {
			res := fleet(ctx, d, gws, id, func() []named { return containment(t) })
			for _, g := range gws {
				r := res[g.Name]
				if r.err != nil || len(r.changes) != 0 {
					t.Errorf("%s: run %s: changes %q, err %v", g.Name, id, r.changes, r.err)
				}
			}
		}
		for _, g := range gws {
			for _, bin := range []string{"iptables", "ip6tables"} {
				if n := runbookRules(t, conns[g.Name], bin); n != 1 {
					t.Errorf("%s: %d runbook rules in %s INPUT, want 1", g.Name, n, bin)
				}
			}
		}
	})

	t.Run("Lift", func(t *testing.T) {
		lift := func() []named {
			return []named{
				{"lift-new", mustStep(t, firewall.LiftSpec, step.Params{"tag": "drop-proxy"})},
				{"start-proxy", mustStep(t, service.StartSpec, step.Params{"unit": "litellm"})},
			}
		}
		res := fleet(ctx, d, gws, "20261128-081000-ef56", lift)
		for _, g := range gws {
			r := res[g.Name]
			if r.err != nil {
				t.Fatalf("%s: %v", g.Name, r.err)
			}
			if len(r.changes) != 2 {
				t.Errorf("%s: changes %q", g.Name, r.changes)
			}
			if s := portState(g); s != "open" {
				t.Errorf("after lift and start: port 4000 on %s is %s", g.Name, s)
			}
			for _, bin := range []string{"iptables", "ip6tables"} {
				if n := runbookRules(t, conns[g.Name], bin); n != 0 {
					t.Errorf("%s: %d runbook rules left in %s INPUT", g.Name, n, bin)
				}
			}
		}
		res = fleet(ctx, d, gws, "20261128-081500-0a0b", lift)
		for _, g := range gws {
			if r := res[g.Name]; r.err != nil || len(r.changes) != 0 {
				t.Errorf("%s: second lift: changes %q, err %v", g.Name, r.changes, r.err)
			}
		}
	})

	t.Run("ChangedHostKey", func(t *testing.T) {
		// known_hosts with gw1's line holding another key.
		b, err := os.ReadFile(l.KnownHosts)
		if err != nil {
			t.Fatal(err)
		}
		_, other := newKey(t)
		var out []string
		gw1 := knownhosts.Normalize(gws[0].SSHAddr())
		replaced := false
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == gw1 {
				line = knownhosts.Line([]string{gw1}, other)
				replaced = true
			}
			out = append(out, line)
		}
		if !replaced {
			t.Fatalf("no known_hosts line for %s in %s", gw1, b)
		}
		kh := t.TempDir() + "/known_hosts"
		if err := os.WriteFile(kh, []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		const run2 = "20261128-082000-1c2d"
		res := fleet(ctx, newDialer(t, l, kh), gws, run2, func() []named { return containment(t) })
		err = res["gw1"].err
		if !errors.Is(err, rbssh.ErrHostKeyChanged) || transport.IsRetryable(err) || !strings.Contains(err.Error(), "gw1") {
			t.Fatalf("gw1: got %v, want a non-retryable changed host key error naming gw1", err)
		}
		t.Logf("gw1: %v", err)
		for _, g := range gws[1:] {
			if r := res[g.Name]; r.err != nil || len(r.changes) != 2 {
				t.Errorf("%s: %v %q", g.Name, r.err, r.changes)
			}
		}
		// gw1 was not touched.
		if s := portState(gws[0]); s != "open" {
			t.Errorf("gw1 port 4000 is %s", s)
		}
		if n := runbookRules(t, conns["gw1"], "iptables"); n != 0 {
			t.Errorf("gw1 has %d runbook rules", n)
		}
		// Put the others back.
		fleet(ctx, d, gws[1:], run2, func() []named {
			return []named{
				{"lift", mustStep(t, firewall.LiftSpec, step.Params{"run_id": run2})},
				{"start", mustStep(t, service.StartSpec, step.Params{"unit": "litellm"})},
			}
		})
	})

	t.Run("RefuseSSHPort", func(t *testing.T) {
		for _, port := range []string{"22", "1:1024", "20:30"} {
			st := mustStep(t, firewall.DropSpec, step.Params{"port": port})
			env := &step.Env{RunID: runID, StepID: "x", Host: "gw1", Transport: conns["gw1"], Secrets: &secret.Masker{}}
			_, err := st.Check(ctx, env)
			if err == nil || !strings.Contains(err.Error(), "SSH") {
				t.Errorf("drop of port %s: %v", port, err)
			}
			if _, err := st.Apply(ctx, env); err == nil {
				t.Errorf("apply of a drop of port %s went through", port)
			}
		}
		if n := runbookRules(t, conns["gw1"], "iptables"); n != 0 {
			t.Errorf("gw1 has %d runbook rules", n)
		}
		// udp 22 does not cut SSH.
		st := mustStep(t, firewall.DropSpec, step.Params{"port": "22", "protocol": "udp", "families": []string{"ipv4"}})
		env := &step.Env{RunID: runID, StepID: "udp22", Host: "gw1", Transport: conns["gw1"], Secrets: &secret.Masker{}}
		if _, err := st.Check(ctx, env); err != nil {
			t.Errorf("udp 22: %v", err)
		}
	})

	t.Run("ExemptSources", func(t *testing.T) {
		// The root namespace's address on gw3's link is exempt: it still
		// reaches port 4000 while the rule stands.
		g := gws[2]
		tr := conns[g.Name]
		steps := []named{{"drop-exempt", mustStep(t, firewall.DropSpec, step.Params{"port": "4000", "exempt_sources": []string{g.HostAddress, "2001:db8::/32"}})}}
		const run3 = "20261128-083000-3e4f"
		r := runOn(ctx, run3, tr, steps)
		if r.err != nil || len(r.changes) != 1 {
			t.Fatalf("%v %q", r.err, r.changes)
		}
		if s := portState(g); s != "open" {
			t.Errorf("exempt source: port 4000 is %s", s)
		}
		if n := runbookRules(t, tr, "iptables"); n != 2 {
			t.Errorf("%d iptables rules, want DROP and ACCEPT", n)
		}
		if n := runbookRules(t, tr, "ip6tables"); n != 2 {
			t.Errorf("%d ip6tables rules, want DROP and ACCEPT", n)
		}
		// Remove the ACCEPT by hand: a new run puts it back above the DROP.
		acc := []string{"iptables", "-w", "-D", "INPUT", "-s", g.HostAddress + "/32", "-p", "tcp", "-m", "tcp", "--dport", "4000", "-m", "comment", "--comment", "runbook:" + run3 + ":drop-exempt", "-j", "ACCEPT"}
		if res := run(t, tr, acc...); res.ExitCode != 0 {
			t.Fatalf("delete accept: %s", res.Stderr)
		}
		if s := portState(g); s != "timeout" {
			t.Errorf("without the exemption: port 4000 is %s", s)
		}
		if r := runOn(ctx, run3, tr, steps); r.err != nil || len(r.changes) != 1 {
			t.Fatalf("%v %q", r.err, r.changes)
		}
		if s := portState(g); s != "open" {
			t.Errorf("exemption restored: port 4000 is %s", s)
		}
		if r := runOn(ctx, run3, tr, steps); r.err != nil || len(r.changes) != 0 {
			t.Fatalf("third run: %v %q", r.err, r.changes)
		}
		if r := runOn(ctx, run3, tr, []named{{"lift", mustStep(t, firewall.LiftSpec, step.Params{"run_id": run3})}}); r.err != nil || r.outputs["lift"]["removed"] != "4" {
			t.Fatalf("lift: %v %v", r.err, r.outputs)
		}
	})

	t.Run("MissingUnit", func(t *testing.T) {
		for _, s := range []*step.Spec{service.StopSpec, service.StartSpec, service.RestartSpec} {
			st := mustStep(t, s, step.Params{"unit": "no-such-unit"})
			env := &step.Env{RunID: runID, StepID: "x", Host: "gw1", Transport: conns["gw1"], Secrets: &secret.Masker{}}
			_, err := st.Check(ctx, env)
			if !errors.Is(err, service.ErrNoUnit) || !strings.Contains(err.Error(), "gw1") {
				t.Errorf("%s of a missing unit: %v", s.Name, err)
			}
		}
	})

	t.Run("Restart", func(t *testing.T) {
		tr := conns["gw1"]
		r := runOn(ctx, runID, tr, []named{{"restart", mustStep(t, service.RestartSpec, step.Params{"unit": "litellm"})}})
		if r.err != nil || len(r.changes) != 1 || r.outputs["restart"]["state"] != "active" {
			t.Fatalf("restart: %v %q %v", r.err, r.changes, r.outputs)
		}
		r = runOn(ctx, runID, tr, []named{
			{"stop", mustStep(t, service.StopSpec, step.Params{"unit": "litellm.service"})},
			{"restart", mustStep(t, service.RestartSpec, step.Params{"unit": "litellm", "if_active": true})},
		})
		if r.err != nil || len(r.changes) != 1 || r.outputs["restart"]["state"] != "inactive" {
			t.Fatalf("restart if_active of a stopped unit: %v %q %v", r.err, r.changes, r.outputs)
		}
		r = runOn(ctx, runID, tr, []named{{"start", mustStep(t, service.StartSpec, step.Params{"unit": "litellm"})}})
		if r.err != nil || len(r.changes) != 1 {
			t.Fatalf("start: %v %q", r.err, r.changes)
		}
	})

	t.Run("SudoUser", func(t *testing.T) {
		var g *lab.Gateway
		for _, x := range gws {
			if x.Sudo {
				g = x
			}
		}
		if g == nil {
			t.Skip("the lab has no sudo gateway")
		}
		tr := conns[g.Name]
		res, err := tr.Run(ctx, transport.Command{Args: []string{"id", "-u"}})
		if err != nil || strings.TrimSpace(string(res.Stdout)) == "0" {
			t.Errorf("without Sudo: %v uid %q", err, res.Stdout)
		}
		res = run(t, tr, "id", "-u")
		if strings.TrimSpace(string(res.Stdout)) != "0" {
			t.Errorf("with Sudo: uid %q", res.Stdout)
		}
		s := secret.New("rb-sudo-secret-0123456789")
		res, err = tr.Run(ctx, transport.Command{Args: []string{"cat"}, Stdin: &s, Sudo: true})
		if err != nil || string(res.Stdout) != s.Reveal() {
			t.Errorf("stdin through sudo: %v %q", err, res.Stdout)
		}
	})

	t.Run("Injection", func(t *testing.T) {
		mark := "/tmp/rb-injected-" + fmt.Sprint(time.Now().UnixNano())
		payloads := transporttest.Payloads(mark)
		// Validation refuses every payload in every parameter that
		// reaches a command line...
		for _, p := range payloads {
			for _, c := range []struct {
				spec *step.Spec
				p    step.Params
			}{
				{service.StopSpec, step.Params{"unit": p}},
				{service.StartSpec, step.Params{"unit": p}},
				{service.RestartSpec, step.Params{"unit": p}},
				{firewall.DropSpec, step.Params{"port": p}},
				{firewall.DropSpec, step.Params{"port": "4000", "chain": p}},
				{firewall.DropSpec, step.Params{"port": "4000", "tag": p}},
				{firewall.DropSpec, step.Params{"port": "4000", "exempt_sources": []string{p}}},
				{firewall.LiftSpec, step.Params{"run_id": p}},
				{firewall.LiftSpec, step.Params{"tag": p}},
				{firewall.LiftSpec, step.Params{"tag": "x", "chain": p}},
			} {
				if st, err := c.spec.New(c.p); err == nil {
					// A payload the validators accept must be inert:
					// run it.
					for _, g := range gws[:2] {
						env := &step.Env{RunID: runID, StepID: "inj", Host: g.Name, Transport: conns[g.Name], Secrets: &secret.Masker{}}
						_, _ = st.Check(ctx, env)
					}
					t.Logf("%s accepted %v", c.spec.Name, c.p)
				}
			}
		}
		// ...and so is a run id, which reaches a comment: refused, or
		// accepted and inert.
		st := mustStep(t, firewall.DropSpec, step.Params{"port": "4000"})
		for _, p := range payloads {
			env := &step.Env{RunID: p, StepID: "x", Host: "gw1", Transport: conns["gw1"], Secrets: &secret.Masker{}}
			if _, err := st.Check(ctx, env); err == nil {
				t.Logf("run id %q accepted", p)
			}
		}
		// Below validation, the same payloads as arguments of the commands
		// the kinds build, in one batch, as root and through sudo: inert.
		var wg sync.WaitGroup
		for _, g := range gws[:2] {
			wg.Add(1)
			go func(g *lab.Gateway) {
				defer wg.Done()
				tr := conns[g.Name]
				var cmds []rbssh.Cmd
				for _, p := range payloads {
					// Quoting does not depend on the argument's position:
					// one unit name and one comment per payload.
					for _, args := range [][]string{
						{"systemctl", "stop", p},
						{"iptables", "-w", "-C", "INPUT", "-p", "tcp", "--dport", "4000", "-m", "comment", "--comment", p, "-j", "DROP"},
					} {
						cmds = append(cmds, rbssh.Cmd{Command: transport.Command{Args: args, Sudo: true}})
					}
				}
				if _, err := rbssh.RunBatch(ctx, tr, cmds); err != nil {
					t.Errorf("%s: %v", g.Name, err)
				}
			}(g)
		}
		wg.Wait()
		for _, g := range gws[:2] {
			tr := conns[g.Name]
			if res := run(t, tr, "test", "-e", mark); res.ExitCode != 1 {
				t.Fatalf("%s: an injected command ran: %s exists", g.Name, mark)
			}
			if res := run(t, tr, "systemctl", "is-active", "litellm"); res.ExitCode != 0 {
				t.Errorf("%s: litellm is no longer active after the corpus", g.Name)
			}
		}
	})

	t.Run("ConformanceOnSudoGateway", func(t *testing.T) {
		// The transport suite on a lab gateway whose login user is not
		// root: argv intact, no secret in any /proc/*/cmdline there.
		for _, g := range gws {
			if !g.Sudo {
				continue
			}
			tr, err := newDialer(t, l, "").Dial(ctx, hostOf(g))
			if err != nil {
				t.Fatal(err)
			}
			transporttest.Run(t, tr)
		}
	})

	// Last: it takes gw3 down for good.
	t.Run("SSHDDown", func(t *testing.T) {
		g := gws[2]
		if err := syscall.Kill(g.SSHDPID, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			c, err := net.DialTimeout("tcp", g.SSHAddr(), time.Second)
			if err != nil {
				break
			}
			c.Close()
			time.Sleep(20 * time.Millisecond)
		}
		res := fleet(ctx, d, gws, "20261128-084000-5a6b", func() []named { return containment(t) })
		err := res[g.Name].err
		var ce *transport.ConnError
		if !errors.As(err, &ce) || !transport.IsRetryable(err) || !strings.Contains(err.Error(), g.Name) {
			t.Fatalf("%s: got %v, want a retryable connection error naming the host", g.Name, err)
		}
		t.Logf("%s: %v", g.Name, err)
		for _, x := range gws[:2] {
			if r := res[x.Name]; r.err != nil {
				t.Errorf("%s: %v", x.Name, r.err)
			}
		}
		// An open transport to the host fails the same way on its next
		// command once the connection is gone.
		conns[g.Name].(*rbssh.Transport).Close()
	})
}

func newKey(t testing.TB) (ed25519.PrivateKey, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return priv, sp
}

// BenchmarkContainment20 is the benchmark: containment (dial,
// service.stop, firewall.drop, each Check then Apply) of 20 lab gateways
// at once, from a cold start (no connection open). It reports the wall
// time of one containment and, per host, the median dial, stop and drop
// times. The target is under 0.35 s wall.
func BenchmarkContainment20(b *testing.B) {
	const n = 20
	l := upLab(b, n)
	ctx := context.Background()
	restore := newDialer(b, l, "")
	var dials, stops, drops, walls []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		res := fleet(ctx, restore, l.Gateways, "bench-restore", func() []named {
			return []named{
				{"lift", mustStep(b, firewall.LiftSpec, step.Params{"tag": "drop-proxy"})},
				{"start", mustStep(b, service.StartSpec, step.Params{"unit": "litellm"})},
			}
		})
		for name, r := range res {
			if r.err != nil {
				b.Fatalf("restore %s: %v", name, r.err)
			}
		}
		d, err := rbssh.NewDialer(rbssh.Config{KnownHosts: l.KnownHosts, Identity: l.ClientKey, ConnectTimeout: 10 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		runID := fmt.Sprintf("bench-%d", i)
		var mu sync.Mutex
		var wg sync.WaitGroup
		errs := make(chan error, n)
		b.StartTimer()
		start := time.Now()
		for _, g := range l.Gateways {
			wg.Add(1)
			go func(g *lab.Gateway) {
				defer wg.Done()
				t0 := time.Now()
				tr, err := d.Dial(ctx, hostOf(g))
				if err != nil {
					errs <- err
					return
				}
				defer tr.Close()
				t1 := time.Now()
				steps := containment(b)
				if r := runOn(ctx, runID, tr, steps[:1]); r.err != nil || len(r.changes) != 1 {
					errs <- fmt.Errorf("%s: stop: %v %q", g.Name, r.err, r.changes)
					return
				}
				t2 := time.Now()
				if r := runOn(ctx, runID, tr, steps[1:]); r.err != nil || len(r.changes) != 1 {
					errs <- fmt.Errorf("%s: drop: %v %q", g.Name, r.err, r.changes)
					return
				}
				t3 := time.Now()
				mu.Lock()
				dials, stops, drops = append(dials, t1.Sub(t0)), append(stops, t2.Sub(t1)), append(drops, t3.Sub(t2))
				mu.Unlock()
			}(g)
		}
		wg.Wait()
		wall := time.Since(start)
		b.StopTimer()
		d.Close()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		walls = append(walls, wall)
		b.Logf("containment of %d gateways: %v", n, wall)
		b.StartTimer()
	}
	b.ReportMetric(float64(median(walls).Microseconds())/1000, "wall-ms")
	b.ReportMetric(float64(median(dials).Microseconds())/1000, "dial-ms")
	b.ReportMetric(float64(median(stops).Microseconds())/1000, "stop-ms")
	b.ReportMetric(float64(median(drops).Microseconds())/1000, "drop-ms")
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s[len(s)/2]
}
