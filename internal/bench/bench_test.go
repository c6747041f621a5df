package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
)

type settings struct {
	mode    string
	warmup  int
	iters   int
	outDir  string
	profile bool // CPU profiles of the runner and Vault in one timed run

	// containment
	sizes   []int
	stockAt int // the fleet size ansible's stock settings run at
	// plan: on the containment lab of this size
	planAt int
	// re-issue sizes; from bigKeys on, bigWarmup and bigIters replace the
	// usual iterations (to fit the time budget)
	keys                []int
	bigKeys             int
	bigWarmup, bigIters int
	// compromise-master end to end
	compromiseGateways, compromiseKeys int
	// zero-downtime rotation
	rotationGateways, clients int
}

func benchSettings(t *testing.T) settings {
	out := os.Getenv("RUNBOOK_BENCH_OUT")
	switch m := os.Getenv("RUNBOOK_BENCH"); m {
	case "full":
		if out == "" {
			out = "."
		}
		return settings{mode: m, warmup: 1, iters: 5, outDir: out, profile: true,
			sizes: []int{1, 5, 20}, stockAt: 20, planAt: 20,
			keys: []int{1000, 10000, 100000}, bigKeys: 100000, bigWarmup: 0, bigIters: 1,
			compromiseGateways: 3, compromiseKeys: 10000,
			rotationGateways: 3, clients: 8}
	case "smoke":
		if out == "" {
			out = t.TempDir()
		}
		return settings{mode: m, warmup: 0, iters: 1, outDir: out,
			sizes: []int{1}, stockAt: 1, planAt: 1,
			keys:               []int{1000},
			compromiseGateways: 3, compromiseKeys: 1000,
			rotationGateways: 3, clients: 8}
	case "":
		t.Skip("benchmark: set RUNBOOK_BENCH=full (make bench) or RUNBOOK_BENCH=smoke")
	default:
		t.Fatalf("RUNBOOK_BENCH=%q: want full or smoke", m)
	}
	return settings{}
}

// Series is one figure's timed values, in order, with their median and
// range.
type Series struct {
	Values []float64 `json:"values"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
}

func (s *Series) add(v float64) {
	s.Values = append(s.Values, v)
	s.Median, s.Min, s.Max = stats(s.Values)
}

func (s *Series) ok() bool { return s != nil && len(s.Values) > 0 }

func stats(vs []float64) (median, lo, hi float64) {
	v := append([]float64(nil), vs...)
	sort.Float64s(v)
	if len(v) == 0 {
		return 0, 0, 0
	}
	if len(v)%2 == 1 {
		median = v[len(v)/2]
	} else {
		median = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return median, v[0], v[len(v)-1]
}

// Results is results.json.
type Results struct {
	Date     string            `json:"date"`
	Mode     string            `json:"mode"`
	Machine  map[string]string `json:"machine"`
	Versions map[string]string `json:"versions"`
	Warmup   int               `json:"warmup"`
	Iters    int               `json:"iterations"`
	// Elapsed is the harness's wall time, labs and builds included.
	Elapsed float64 `json:"elapsed_seconds"`

	Samples    []*Sample         `json:"containment"`
	Plan       *PlanResult       `json:"plan,omitempty"`
	Reissue    []*ReissueResult  `json:"reissue,omitempty"`
	Compromise *CompromiseResult `json:"compromise,omitempty"`
	Rotation   *RotationResult   `json:"rotation,omitempty"`
	Profiles   []*Profile        `json:"profiles,omitempty"`
}

// harness is what every scenario shares: the binaries it runs.
type harness struct {
	root     string
	runbook  string
	sshfloor string
	measure  string
	lab      string // runbook-lab
	ansible  string
	ssh      string
}

// benchRan keeps the harness to one run per process (TestBench and
// TestContainment are two names for it).
var benchRan bool

// TestBench is `make bench`: every scenario against the lab, then
// BENCHMARKS.md and results.json. Run one scenario with -run
// 'TestBench/NAME' and RUNBOOK_BENCH_OUT set to somewhere else, so the
// report in the tree keeps every scenario.
func TestBench(t *testing.T) { runBench(t) }

// TestContainment is the name CI's smoke run selects; it runs the whole
// harness, like TestBench.
func TestContainment(t *testing.T) { runBench(t) }

func runBench(t *testing.T) {
	if os.Getenv("RUNBOOK_BENCH") == "report" {
		rerender(t)
		return
	}
	cfg := benchSettings(t)
	if benchRan {
		t.Skip("the harness ran already in this process")
	}
	benchRan = true
	start := time.Now()
	h := newHarness(t)
	res := &Results{
		Date: time.Now().UTC().Format(time.RFC3339), Mode: cfg.mode,
		Machine: machine(), Versions: versions(h.root, h.ansible, h.ssh),
		Warmup: cfg.warmup, Iters: cfg.iters,
	}
	t.Run("containment", func(t *testing.T) { containment(t, h, cfg, res) })
	t.Run("reissue", func(t *testing.T) { reissue(t, h, cfg, res) })
	t.Run("compromise", func(t *testing.T) { compromise(t, h, cfg, res) })
	t.Run("rotation", func(t *testing.T) { rotation(t, h, cfg, res) })
	res.Elapsed = time.Since(start).Seconds()
	t.Logf("harness wall time %v", time.Since(start).Round(time.Second))
	if t.Failed() {
		return
	}
	res.Machine["load_after"] = loadavg()
	if err := writeReport(cfg.outDir, res); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", filepath.Join(cfg.outDir, "BENCHMARKS.md"))
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{}
	var err error
	if h.ansible, err = exec.LookPath("ansible-playbook"); err != nil {
		labtest.Missing(t, "ansible-playbook is not installed")
	}
	if h.ssh, err = exec.LookPath("ssh"); err != nil {
		labtest.Missing(t, "the OpenSSH client is not installed")
	}
	if h.root, err = filepath.Abs("../.."); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	// go build -o DIR names each binary after its package directory.
	for _, p := range []string{"cmd/runbook", "cmd/runbook-lab", "internal/bench/cmd/sshfloor", "internal/bench/cmd/measure"} {
		c := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./"+p)
		c.Dir = h.root
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", p, err, out)
		}
	}
	h.runbook, h.sshfloor, h.measure = filepath.Join(bin, "runbook"), filepath.Join(bin, "sshfloor"), filepath.Join(bin, "measure")
	h.lab = filepath.Join(bin, "runbook-lab")
	return h
}

// runbookCmd is the runbook binary run against lab l, with its state and
// records in dir, the Vault token and database URL in its environment
// (never in argv), and the shipped runbooks unless args name others.
func (h *harness) runbookCmd(ctx context.Context, l *lab.Lab, dir string, args ...string) *exec.Cmd {
	argv := append([]string{}, args...)
	argv = append(argv, "-i", l.InventoryPath, "--state", filepath.Join(dir, "state"), "--records", filepath.Join(dir, "records"))
	if !hasFlag(args, "--runbooks") {
		argv = append(argv, "--runbooks", filepath.Join(h.root, "runbooks"))
	}
	c := exec.CommandContext(ctx, h.runbook, argv...)
	c.Env = append(os.Environ(), "RUNBOOK_OPERATOR=benchmark")
	if l.Vault != nil {
		c.Env = append(c.Env, "VAULT_ADDR="+l.Vault.Addr, "VAULT_TOKEN="+l.Vault.RunnerToken.Reveal())
	}
	if l.DatabaseURL != "" {
		c.Env = append(c.Env, "DATABASE_URL="+l.DatabaseURL)
	}
	return c
}

func hasFlag(args []string, f string) bool {
	for _, a := range args {
		if a == f || strings.HasPrefix(a, f+"=") {
			return true
		}
	}
	return false
}

// proc is one finished process: wall time from start to exit, and from the
// kernel's accounting its peak resident set and CPU time.
type proc struct {
	took   time.Duration
	maxRSS int64 // bytes
	cpu    time.Duration
	out    string
}

func (p *proc) rssMiB() float64 { return float64(p.maxRSS) / (1 << 20) }

// runProc runs c to the end. Its peak RSS is only meaningful through
// runMeasured. The error carries the end of what it printed (the runner
// masks secrets in its output).
func runProc(c *exec.Cmd) (*proc, error) {
	label := filepath.Base(c.Args[0]) + " " + strings.Join(c.Args[1:min(3, len(c.Args))], " ")
	return runLabelled(c, label)
}

func runLabelled(c *exec.Cmd, label string) (*proc, error) {
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	t0 := time.Now()
	err := c.Run()
	p := &proc{took: time.Since(t0), out: out.String()}
	if st := c.ProcessState; st != nil {
		if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
			p.maxRSS = ru.Maxrss * 1024 // KiB on Linux
		}
		p.cpu = st.UserTime() + st.SystemTime()
	}
	if err != nil {
		return p, fmt.Errorf("%s: %w\n%s%s", label, err, lastLines(out.String(), 20), lastLines(errOut.String(), 20))
	}
	return p, nil
}

// runMeasured runs c through cmd/measure, so that the peak RSS is the
// runner's own and not the test binary's (see that command), with the wall
// and CPU times the kernel accounted for the runner.
func (h *harness) runMeasured(c *exec.Cmd) (*proc, error) {
	label := filepath.Base(c.Args[0]) + " " + strings.Join(c.Args[1:min(3, len(c.Args))], " ")
	f, err := os.CreateTemp("", "runbook-bench-usage-*.json")
	if err != nil {
		return nil, err
	}
	usage := f.Name()
	f.Close()
	defer os.Remove(usage)
	c.Args = append([]string{h.measure, "-o", usage, "--", c.Path}, c.Args[1:]...)
	c.Path = h.measure
	p, err := runLabelled(c, label)
	if err != nil {
		return p, err
	}
	b, err := os.ReadFile(usage)
	if err != nil {
		return p, fmt.Errorf("%s: usage: %w", label, err)
	}
	var u struct {
		WallNS    int64 `json:"wall_ns"`
		UserNS    int64 `json:"user_ns"`
		SystemNS  int64 `json:"system_ns"`
		MaxRSSKiB int64 `json:"max_rss_kib"`
	}
	if err := json.Unmarshal(b, &u); err != nil {
		return p, fmt.Errorf("%s: usage: %w", label, err)
	}
	p.took, p.cpu, p.maxRSS = time.Duration(u.WallNS), time.Duration(u.UserNS+u.SystemNS), u.MaxRSSKiB*1024
	return p, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// procCPU is a process's user and system CPU time, from /proc (clock ticks
// of 10 ms); zero when the process is gone.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// recordJSON is the part of an incident record (internal/record) the
// benchmarks read.
type recordJSON struct {
	Status string `json:"status"`
	Phases []struct {
		Name     string `json:"name"`
		Target   string `json:"target"`
		Duration string `json:"duration"`
		Met      string `json:"met"`
	} `json:"phases"`
	Timeline []struct {
		Time   time.Time `json:"time"`
		Began  time.Time `json:"began"`
		Event  string    `json:"event"`
		Step   string    `json:"step"`
		Host   string    `json:"host"`
		Change string    `json:"change"`
	} `json:"timeline"`
	Changes []struct {
		Step   string `json:"step"`
		Change string `json:"change"`
	} `json:"changes"`
}

// readRecord reads the one JSON record in dir/records.
func readRecord(dir string) (*recordJSON, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "records", "*.json"))
	if len(files) != 1 {
		return nil, fmt.Errorf("read record: %d JSON records in %s", len(files), filepath.Join(dir, "records"))
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	var r recordJSON
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read record %s: %w", files[0], err)
	}
	return &r, nil
}

// phaseSeconds is each phase's duration, in the record's order.
func (r *recordJSON) phaseSeconds() ([]string, map[string]float64, error) {
	var names []string
	out := map[string]float64{}
	for _, p := range r.Phases {
		d, err := time.ParseDuration(p.Duration)
		if err != nil {
			return nil, nil, fmt.Errorf("phase %s: duration %q: %w", p.Name, p.Duration, err)
		}
		names = append(names, p.Name)
		out[p.Name] = d.Seconds()
	}
	return names, out, nil
}

// stepSeconds is each step's span in the timeline, from the earliest
// observation on any host to the last record, in the order steps appear.
func (r *recordJSON) stepSeconds() ([]string, map[string]float64) {
	type span struct{ from, to time.Time }
	spans := map[string]*span{}
	var names []string
	for _, e := range r.Timeline {
		if e.Step == "" {
			continue
		}
		from := e.Time
		if !e.Began.IsZero() {
			from = e.Began
		}
		sp := spans[e.Step]
		if sp == nil {
			sp = &span{from, e.Time}
			spans[e.Step] = sp
			names = append(names, e.Step)
		}
		if from.Before(sp.from) {
			sp.from = from
		}
		if e.Time.After(sp.to) {
			sp.to = e.Time
		}
	}
	out := map[string]float64{}
	for k, sp := range spans {
		out[k] = sp.to.Sub(sp.from).Seconds()
	}
	return names, out
}

// changeOf is the change the record lists for step, or "".
func (r *recordJSON) changeOf(step string) string {
	for _, c := range r.Changes {
		if c.Step == step {
			return c.Change
		}
	}
	return ""
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
		"postgresql":       firstLine("dpkg-query", "-W", "-f", "${Version}", "postgresql-15"),
		"nginx":            firstLine("nginx", "-v"),
		"vault":            "1.21.4 (the lab's server core, testdata/vaultserver)",
	}
	c := exec.Command("git", "rev-parse", "--short", "HEAD")
	c.Dir = root
	if out, err := c.Output(); err == nil {
		v["runbook"] = strings.TrimSpace(string(out))
	}
	return v
}

// rerender writes BENCHMARKS.md again from the results.json beside it
// (RUNBOOK_BENCH=report, in RUNBOOK_BENCH_OUT or the package directory),
// after a change to the report's wording; it measures nothing.
func rerender(t *testing.T) {
	dir := os.Getenv("RUNBOOK_BENCH_OUT")
	if dir == "" {
		dir = "."
	}
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if err := writeReport(dir, &res); err != nil {
		t.Fatal(err)
	}
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
