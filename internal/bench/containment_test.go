package bench_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
)

// The ways of containing a fleet, in the order they run in each iteration.
const (
	wayRunbook      = "runbook"
	wayAnsible      = "ansible-playbook (forks = N, pipelining)"
	wayAnsibleStock = "ansible-playbook, stock settings (forks 5)"
	wayOpenSSH      = "OpenSSH client, parallel"
	wayFloor        = "minimal Go client (the floor)"
)

// remoteCommand is what the OpenSSH client runs on each gateway (the floor
// runs the same; see cmd/sshfloor): the work of runbooks/contain.yaml,
// which drops the port for IPv4 and IPv6.
const remoteCommand = "systemctl stop litellm && iptables -w -I INPUT 1 -p tcp --dport 4000 -j DROP && ip6tables -w -I INPUT 1 -p tcp --dport 4000 -j DROP"

// Sample is one way's figures on one fleet size.
type Sample struct {
	Way      string    `json:"way"`
	Gateways int       `json:"gateways"`
	Seconds  []float64 `json:"seconds"` // every timed iteration, in order
	Median   float64   `json:"median"`
	Min      float64   `json:"min"`
	Max      float64   `json:"max"`
	// CPUSeconds is the runner's own CPU time (user and system) in each
	// timed iteration; only for runbook.
	CPUSeconds []float64 `json:"cpu_seconds,omitempty"`
}

// containment contains every fleet size four ways; on the lab of
// cfg.planAt gateways it also runs the plan scenario.
func containment(t *testing.T, h *harness, cfg settings, res *Results) {
	ctx := context.Background()
	stockCfg := filepath.Join(t.TempDir(), "ansible.cfg")
	if err := os.WriteFile(stockCfg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	root, bin := h.root, filepath.Dir(h.runbook)
	ap := h.ansible
	for _, n := range cfg.sizes {
		t.Run(fmt.Sprintf("gateways=%d", n), func(t *testing.T) {
			// The plan needs Vault and the database; containment ignores them.
			l := labtest.Up(t, lab.Config{Gateways: n, Postgres: true, Vault: n == cfg.planAt})
			inv := ansibleInventory(t, l)
			work := t.TempDir()
			type way struct {
				name string
				cmd  func(i int) []*exec.Cmd
			}
			ways := []way{
				{wayRunbook, func(i int) []*exec.Cmd {
					d := filepath.Join(work, "rb"+strconv.Itoa(i))
					return []*exec.Cmd{h.runbookCmd(ctx, l, d, "exec", "contain", "--yes", "--reason", "benchmark")}
				}},
				{wayAnsible, func(int) []*exec.Cmd {
					c := exec.Command(ap, "-i", inv, "--forks", strconv.Itoa(n), filepath.Join(root, "playbooks/bench/contain.yml"))
					c.Env = append(os.Environ(), "ANSIBLE_CONFIG="+filepath.Join(root, "playbooks/bench/ansible.cfg"))
					return []*exec.Cmd{c}
				}},
			}
			if n == cfg.stockAt {
				ways = append(ways, way{wayAnsibleStock, func(int) []*exec.Cmd {
					c := exec.Command(ap, "-i", inv, filepath.Join(root, "playbooks/bench/contain.yml"))
					c.Env = append(os.Environ(), "ANSIBLE_CONFIG="+stockCfg)
					return []*exec.Cmd{c}
				}})
			}
			ways = append(ways,
				way{wayOpenSSH, func(int) []*exec.Cmd {
					var cs []*exec.Cmd
					for _, g := range l.Gateways {
						cmd := remoteCommand
						if g.User != "root" {
							cmd = "sudo -n sh -c '" + remoteCommand + "'"
						}
						cs = append(cs, exec.Command(h.ssh, "-F", "/dev/null", "-o", "BatchMode=yes",
							"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+l.KnownHosts,
							"-o", "IdentitiesOnly=yes", "-i", l.ClientKey, "-p", strconv.Itoa(g.SSHPort),
							g.User+"@"+g.Address, cmd))
					}
					return cs
				}},
				way{wayFloor, func(int) []*exec.Cmd {
					args := []string{"-i", l.ClientKey, "-k", l.KnownHosts}
					for _, g := range l.Gateways {
						args = append(args, fmt.Sprintf("%s@%s:%d", g.User, g.Address, g.SSHPort))
					}
					return []*exec.Cmd{exec.Command(filepath.Join(bin, "sshfloor"), args...)}
				}},
			)
			samples := make([]*Sample, len(ways))
			for k, w := range ways {
				samples[k] = &Sample{Way: w.name, Gateways: n}
			}
			// Round robin: every iteration runs each way once, so drift on
			// the machine touches all of them alike.
			// Every run starts from the same state: restored here, then
			// by the check after each run.
			restore(ctx, t, l)
			for i := 0; i < cfg.warmup+cfg.iters; i++ {
				for k, w := range ways {
					if w.name == wayAnsibleStock && i < cfg.warmup {
						// The tuned way's warm-up just ran the same playbook
						// on the same gateways: the same caches are warm.
						continue
					}
					cmds := w.cmd(i)
					d, err := runAll(cmds)
					if err != nil {
						t.Fatalf("%s on %d gateways: %v", w.name, n, err)
					}
					checkContained(ctx, t, l, w.name)
					if i >= cfg.warmup {
						samples[k].Seconds = append(samples[k].Seconds, d.Seconds())
						if w.name == wayRunbook {
							st := cmds[0].ProcessState
							samples[k].CPUSeconds = append(samples[k].CPUSeconds, (st.UserTime() + st.SystemTime()).Seconds())
						}
					}
					t.Logf("%s, %d gateways, iteration %d: %v", w.name, n, i, d.Round(time.Millisecond))
				}
			}
			for _, s := range samples {
				summarize(s)
				res.Samples = append(res.Samples, s)
			}
			if n == cfg.planAt {
				t.Run("plan", func(t *testing.T) { plan(t, h, cfg, l, res) })
			}
		})
	}
}

// runAll starts every command at once and waits for all; the time is from
// the first start to the last exit.
func runAll(cmds []*exec.Cmd) (time.Duration, error) {
	outs := make([]bytes.Buffer, len(cmds))
	errs := make([]error, len(cmds))
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range cmds {
		c.Stdout, c.Stderr = &outs[i], &outs[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Run()
		}()
	}
	wg.Wait()
	d := time.Since(start)
	for i, err := range errs {
		if err != nil {
			return d, fmt.Errorf("%s: %w\n%s", cmds[i].Args[0], err, outs[i].String())
		}
	}
	return d, nil
}

// inGateway runs a fixed shell script inside gateway g, in the namespaces
// of its sshd (network, mount for the systemctl stand-in, uts, pid): one
// process per gateway, where `ip netns exec` per command (which remounts
// /sys each time) cost the harness about 1.5 s per restore of 20 gateways.
// The scripts are constants of this file; nothing is pasted into them. The
// lab's own Systemctl finds a gateway the same way (the harness never
// restarts a gateway's sshd).
func inGateway(ctx context.Context, g *lab.Gateway, script string) ([]byte, error) {
	return exec.CommandContext(ctx, "nsenter", "--target", strconv.Itoa(g.SSHDPID), "--net", "--mount", "--uts", "--pid",
		"sh", "-c", script).CombinedOutput()
}

// gatewayState is what checkContained and checkOpen read: each family's
// INPUT chain and the proxy's state.
type gatewayState struct{ v4, v6, active string }

// listScript prints both INPUT chains and the proxy's state, separated by
// "#--" lines.
const listScript = `iptables -w -S INPUT || exit 1; echo '#--'; ip6tables -w -S INPUT || exit 1; echo '#--'; systemctl is-active litellm`

// restoreScript lifts containment (the lab's namespaces hold no INPUT
// rules of their own) and starts the proxy without waiting for it:
// waitServing waits for every gateway at once, from the harness, where the
// systemctl stand-in would start a sleep process for every poll.
const restoreScript = `iptables -w -F INPUT && ip6tables -w -F INPUT && systemctl start --no-block litellm`

// readState reads g's state and then, when then is set, runs it in the
// same process (restoreScript after a check).
func readState(ctx context.Context, g *lab.Gateway, then string) (gatewayState, error) {
	script, want := listScript+"; exit 0", 3
	if then != "" {
		script, want = listScript+"; echo '#--'; "+then, 4
	}
	out, err := inGateway(ctx, g, script)
	if err != nil {
		return gatewayState{}, fmt.Errorf("%s: read iptables and the proxy state: %w: %s", g.Name, err, out)
	}
	parts := strings.Split(string(out), "#--\n")
	if len(parts) != want {
		return gatewayState{}, fmt.Errorf("%s: unexpected state output:\n%s", g.Name, out)
	}
	return gatewayState{v4: parts[0], v6: parts[1], active: strings.TrimSpace(parts[2])}, nil
}

// waitServing waits until every gateway's proxy accepts connections on
// port 4000 (dialled from the root namespace: the firewall is lifted).
func waitServing(ctx context.Context, l *lab.Lab) error {
	return forEach(l, func(g *lab.Gateway) error {
		addr := net.JoinHostPort(g.Address, "4000")
		deadline := time.Now().Add(30 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
			if err == nil {
				c.Close()
				return nil
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%s: the proxy does not listen on %s after its start: %w", g.Name, addr, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// whereIs says which network namespace the gateway's sshd is in, for
// diagnosing a check that failed.
func whereIs(ctx context.Context, g *lab.Gateway) string {
	out, err := exec.CommandContext(ctx, "ip", "netns", "identify", strconv.Itoa(g.SSHDPID)).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("sshd %d: %v", g.SSHDPID, err)
	}
	return fmt.Sprintf("sshd %d in namespace %q, want %q", g.SSHDPID, strings.TrimSpace(string(out)), g.Namespace)
}

func forEach(l *lab.Lab, fn func(g *lab.Gateway) error) error {
	errs := make([]error, len(l.Gateways))
	var wg sync.WaitGroup
	for i, g := range l.Gateways {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(g)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// restore lifts containment on every gateway directly and starts the
// proxy, then waits until every proxy serves.
func restore(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	err := forEach(l, func(g *lab.Gateway) error {
		if out, err := inGateway(ctx, g, restoreScript); err != nil {
			return fmt.Errorf("%s: flush INPUT and start litellm: %w: %s", g.Name, err, out)
		}
		return nil
	})
	if err == nil {
		err = waitServing(ctx, l)
	}
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
}

var dropRule = regexp.MustCompile(`(?m)^-A INPUT .*-p tcp .*--dport 4000 .*-j DROP`)

// checkContained checks the state every way must leave: the proxy
// inactive and a DROP rule for TCP port 4000 in INPUT, for IPv4 and IPv6.
//
// In the same process per gateway it then restores the gateway for the
// next run, as restore does.
func checkContained(ctx context.Context, t *testing.T, l *lab.Lab, way string) {
	t.Helper()
	err := forEach(l, func(g *lab.Gateway) error {
		st, err := readState(ctx, g, restoreScript)
		if err != nil {
			return err
		}
		for _, f := range []struct{ ipt, rules string }{{"iptables", st.v4}, {"ip6tables", st.v6}} {
			if !dropRule.MatchString(f.rules) {
				return fmt.Errorf("%s: no %s DROP rule for port 4000 in INPUT (%s):\n%s", g.Name, f.ipt, whereIs(ctx, g), f.rules)
			}
		}
		if st.active != "inactive" {
			return fmt.Errorf("%s: litellm is %q, want inactive", g.Name, st.active)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after %s: %v", way, err)
	}
	if err := waitServing(ctx, l); err != nil {
		t.Fatalf("restore after %s: %v", way, err)
	}
}

// checkOpen checks a gateway serves again: no DROP rule for port 4000 in
// either family and the proxy active.
func checkOpen(ctx context.Context, l *lab.Lab) error {
	return forEach(l, func(g *lab.Gateway) error {
		st, err := readState(ctx, g, "")
		if err != nil {
			return err
		}
		for _, f := range []struct{ ipt, rules string }{{"iptables", st.v4}, {"ip6tables", st.v6}} {
			if dropRule.MatchString(f.rules) {
				return fmt.Errorf("%s: %s still drops port 4000:\n%s", g.Name, f.ipt, f.rules)
			}
		}
		if st.active != "active" {
			return fmt.Errorf("%s: litellm is %q, want active", g.Name, st.active)
		}
		return nil
	})
}

// ansibleInventory writes an Ansible inventory for the lab's gateways.
func ansibleInventory(t *testing.T, l *lab.Lab) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("[gateways]\n")
	for _, g := range l.Gateways {
		fmt.Fprintf(&b, "%s ansible_host=%s ansible_port=%d ansible_user=%s ansible_ssh_private_key_file=%s",
			g.Name, g.Address, g.SSHPort, g.User, l.ClientKey)
		if g.User != "root" {
			b.WriteString(" ansible_become=true")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n[gateways:vars]\nansible_ssh_common_args='-o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s -o IdentitiesOnly=yes'\n", l.KnownHosts)
	p := filepath.Join(t.TempDir(), "hosts.ini")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func summarize(s *Sample) { s.Median, s.Min, s.Max = stats(s.Seconds) }
