package firewall_test

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/transport/local"
)

// TestLocalTransport runs the firewall kinds on the local transport, where
// they go through go-iptables, inside a network namespace of the test's
// own: the test binary runs itself there.
func TestLocalTransport(t *testing.T) {
	if os.Getenv("RB_FIREWALL_NETNS_CHILD") != "" {
		localChild(t)
		return
	}
	if os.Geteuid() != 0 {
		missing(t, "the local firewall test needs root")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing(t, tool+" not found")
		}
	}
	ns := "rbfwtest-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestLocalTransport$", "-test.v")
	cmd.Env = append(os.Environ(), "RB_FIREWALL_NETNS_CHILD=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestLocalTransport") {
		t.Fatal("the child did not run the test")
	}
}

func missing(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(why)
	}
	t.Skip(why)
}

func localChild(t *testing.T) {
	ctx := context.Background()
	tr := local.New("runner")
	env := func(run string) *step.Env {
		return &step.Env{RunID: run, StepID: "contain", Host: "runner", Transport: tr, Secrets: &secret.Masker{}}
	}
	count := func(bin string) int {
		out, err := exec.Command(bin, "-w", "-S", "INPUT").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(out), firewall.CommentPrefix)
	}
	drop := mustStep(t, firewall.DropSpec, step.Params{"port": "4000:4001", "exempt_sources": []string{"198.18.255.1", "2001:db8::/48"}})
	obs, err := drop.Check(ctx, env("r1"))
	if err != nil || obs.OK() {
		t.Fatalf("check: %v %+v", err, obs)
	}
	if _, err := drop.Apply(ctx, env("r1")); err != nil {
		t.Fatal(err)
	}
	if a, b := count("iptables"), count("ip6tables"); a != 2 || b != 2 {
		t.Fatalf("rules: %d ipv4, %d ipv6", a, b)
	}
	out, _ := exec.Command("iptables", "-w", "-S", "INPUT").Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "-j ACCEPT") || !strings.Contains(lines[2], "-j DROP") {
		t.Errorf("order: the exemption must come first:\n%s", out)
	}
	// A second run (another run id) changes nothing.
	drop2 := mustStep(t, firewall.DropSpec, step.Params{"port": "4000:4001", "exempt_sources": []string{"198.18.255.1", "2001:db8::/48"}})
	if obs, err := drop2.Check(ctx, env("r2")); err != nil || !obs.OK() {
		t.Fatalf("second check: %v %+v", err, obs)
	}
	lift := mustStep(t, firewall.LiftSpec, step.Params{"run_id": "r1"})
	if obs, err := lift.Check(ctx, env("r3")); err != nil || obs.OK() {
		t.Fatalf("lift check: %v %+v", err, obs)
	}
	outs, err := lift.Apply(ctx, env("r3"))
	if err != nil || outs["removed"] != "4" {
		t.Fatalf("lift: %v %v", err, outs)
	}
	if a, b := count("iptables"), count("ip6tables"); a != 0 || b != 0 {
		t.Fatalf("left: %d ipv4, %d ipv6", a, b)
	}
	if obs, err := lift.Check(ctx, env("r3")); err != nil || !obs.OK() {
		t.Fatalf("second lift: %v %+v", err, obs)
	}
	// SSH_CONNECTION of an operator logged in on port 2222 protects it.
	t.Setenv("SSH_CONNECTION", "198.18.255.1 50000 198.18.255.2 2222")
	guard := mustStep(t, firewall.DropSpec, step.Params{"port": "2000:3000"})
	if _, err := guard.Check(ctx, env("r4")); err == nil || !strings.Contains(err.Error(), "SSH") {
		t.Fatalf("drop of the operator's SSH port: %v", err)
	}
}
