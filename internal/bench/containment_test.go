package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
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
// runs the same; see cmd/sshfloor).
const remoteCommand = "systemctl stop litellm && iptables -w -I INPUT 1 -p tcp --dport 4000 -j DROP"

type settings struct {
	mode    string
	sizes   []int
	warmup  int
	iters   int
	outDir  string
	stockAt int // the fleet size ansible's stock settings run at
}

func benchSettings(t *testing.T) settings {
	switch m := os.Getenv("RUNBOOK_BENCH"); m {
	case "full":
		out := os.Getenv("RUNBOOK_BENCH_OUT")
		if out == "" {
			out = "."
		}
		return settings{mode: m, sizes: []int{1, 5, 20}, warmup: 1, iters: 5, outDir: out, stockAt: 20}
	case "smoke":
		out := os.Getenv("RUNBOOK_BENCH_OUT")
		if out == "" {
			out = t.TempDir()
		}
		return settings{mode: m, sizes: []int{1}, warmup: 0, iters: 1, outDir: out, stockAt: 1}
	case "":
		t.Skip("benchmark: set RUNBOOK_BENCH=full (make bench) or RUNBOOK_BENCH=smoke")
	default:
		t.Fatalf("RUNBOOK_BENCH=%q: want full or smoke", m)
	}
	return settings{}
}

// Sample is one way's figures on one fleet size.
type Sample struct {
	Way      string    `json:"way"`
	Gateways int       `json:"gateways"`
	Seconds  []float64 `json:"seconds"` // every timed iteration, in order
	Median   float64   `json:"median"`
	Min      float64   `json:"min"`
	Max      float64   `json:"max"`
}

// Results is results.json.
type Results struct {
	Date     string            `json:"date"`
	Mode     string            `json:"mode"`
	Machine  map[string]string `json:"machine"`
	Versions map[string]string `json:"versions"`
	Warmup   int               `json:"warmup"`
	Iters    int               `json:"iterations"`
	Samples  []*Sample         `json:"containment"`
}

func TestContainment(t *testing.T) {
	cfg := benchSettings(t)
	ap, err := exec.LookPath("ansible-playbook")
	if err != nil {
		labtest.Missing(t, "ansible-playbook is not installed")
	}
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		labtest.Missing(t, "the OpenSSH client is not installed")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	// go build -o DIR names each binary after its package directory.
	for _, p := range []string{"cmd/runbook", "internal/bench/cmd/sshfloor"} {
		c := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./"+p)
		c.Dir = root
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", p, err, out)
		}
	}
	stockCfg := filepath.Join(t.TempDir(), "ansible.cfg")
	if err := os.WriteFile(stockCfg, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	res := &Results{
		Date: time.Now().UTC().Format(time.RFC3339), Mode: cfg.mode,
		Machine: machine(), Versions: versions(root, ap, sshBin),
		Warmup: cfg.warmup, Iters: cfg.iters,
	}
	ctx := context.Background()
	for _, n := range cfg.sizes {
		t.Run(fmt.Sprintf("gateways=%d", n), func(t *testing.T) {
			l := labtest.Up(t, lab.Config{Gateways: n, Postgres: true})
			inv := ansibleInventory(t, l)
			work := t.TempDir()
			type way struct {
				name string
				cmd  func(i int) []*exec.Cmd
			}
			ways := []way{
				{wayRunbook, func(i int) []*exec.Cmd {
					d := filepath.Join(work, "rb"+strconv.Itoa(i))
					return []*exec.Cmd{exec.Command(filepath.Join(bin, "runbook"), "exec", "contain", "--yes",
						"--runbooks", filepath.Join(root, "runbooks"), "-i", l.InventoryPath,
						"--state", filepath.Join(d, "state"), "--records", filepath.Join(d, "records"),
						"--reason", "benchmark")}
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
						cs = append(cs, exec.Command(sshBin, "-F", "/dev/null", "-o", "BatchMode=yes",
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
			for i := 0; i < cfg.warmup+cfg.iters; i++ {
				for k, w := range ways {
					restore(ctx, t, l)
					d, err := runAll(w.cmd(i))
					if err != nil {
						t.Fatalf("%s on %d gateways: %v", w.name, n, err)
					}
					checkContained(ctx, t, l, w.name)
					if i >= cfg.warmup {
						samples[k].Seconds = append(samples[k].Seconds, d.Seconds())
					}
					t.Logf("%s, %d gateways, iteration %d: %v", w.name, n, i, d.Round(time.Millisecond))
				}
			}
			restore(ctx, t, l)
			for _, s := range samples {
				summarize(s)
				res.Samples = append(res.Samples, s)
			}
		})
	}
	if t.Failed() {
		return
	}
	res.Machine["load_after"] = loadavg()
	if err := writeReport(cfg.outDir, res); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", filepath.Join(cfg.outDir, "BENCHMARKS.md"))
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

// inNet runs a command in gateway g's network namespace.
func inNet(ctx context.Context, g *lab.Gateway, args ...string) ([]byte, error) {
	argv := append([]string{"--target", strconv.Itoa(g.SSHDPID), "--net"}, args...)
	return exec.CommandContext(ctx, "nsenter", argv...).CombinedOutput()
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

// restore lifts containment on every gateway directly (the lab's
// namespaces hold no INPUT rules of their own) and starts the proxy.
func restore(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	err := forEach(l, func(g *lab.Gateway) error {
		for _, ipt := range []string{"iptables", "ip6tables"} {
			if out, err := inNet(ctx, g, ipt, "-w", "-F", "INPUT"); err != nil {
				return fmt.Errorf("%s: %s -F INPUT: %w: %s", g.Name, ipt, err, out)
			}
		}
		if out, err := l.Systemctl(ctx, g, "start", "litellm"); err != nil {
			return fmt.Errorf("%s: start litellm: %w: %s", g.Name, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
}

var dropRule = regexp.MustCompile(`(?m)^-A INPUT .*-p tcp .*--dport 4000 .*-j DROP`)

// checkContained checks the state every way must leave: the proxy
// inactive and a DROP rule for TCP port 4000 in INPUT.
func checkContained(ctx context.Context, t *testing.T, l *lab.Lab, way string) {
	t.Helper()
	err := forEach(l, func(g *lab.Gateway) error {
		out, err := inNet(ctx, g, "iptables", "-w", "-S", "INPUT")
		if err != nil {
			return fmt.Errorf("%s: iptables -S: %w: %s", g.Name, err, out)
		}
		if !dropRule.Match(out) {
			return fmt.Errorf("%s: no DROP rule for port 4000 in INPUT:\n%s", g.Name, out)
		}
		st, _ := l.Systemctl(ctx, g, "is-active", "litellm")
		if s := strings.TrimSpace(string(st)); s != "inactive" {
			return fmt.Errorf("%s: litellm is %q, want inactive", g.Name, s)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after %s: %v", way, err)
	}
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

func summarize(s *Sample) {
	v := append([]float64(nil), s.Seconds...)
	sort.Float64s(v)
	if len(v) == 0 {
		return
	}
	s.Min, s.Max = v[0], v[len(v)-1]
	if len(v)%2 == 1 {
		s.Median = v[len(v)/2]
	} else {
		s.Median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func machine() map[string]string {
	m := map[string]string{"nproc": strconv.Itoa(runtime.NumCPU()), "load_before": loadavg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m["cpu"] = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-sr").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/etc/debian_version"); err == nil {
		m["debian"] = strings.TrimSpace(string(b))
	}
	return m
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func versions(root, ap, sshBin string) map[string]string {
	v := map[string]string{
		"go":               runtime.Version(),
		"ansible-playbook": firstLine(ap, "--version"),
		"openssh":          firstLine(sshBin, "-V"),
		"sshd":             firstLine("dpkg-query", "-W", "-f", "${Version}", "openssh-server"),
		"iptables":         firstLine("iptables", "--version"),
	}
	c := exec.Command("git", "rev-parse", "--short", "HEAD")
	c.Dir = root
	if out, err := c.Output(); err == nil {
		v["runbook"] = strings.TrimSpace(string(out))
	}
	return v
}

func writeReport(dir string, res *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "BENCHMARKS.md"), []byte(markdown(res)), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
