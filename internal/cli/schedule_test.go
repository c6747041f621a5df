package cli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// metricValue returns the value of a gauge in a textfile-collector file.
func metricValue(t *testing.T, text, name string) (float64, bool) {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, name+"{") {
			_, v, _ := strings.Cut(line, "} ")
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f, true
		}
	}
	return 0, false
}

// TestRotateMasterIfDueOnTheLab runs the scheduled rotation the way its
// timer does, against 3 real gateways behind nginx, Vault and PostgreSQL.
// With a fresh key --if-due changes nothing and leaves no run behind. The
// key is then made old the way an imported key is: its path's custom
// metadata rotated_at is set 100 days back (Vault's own created_time cannot
// be written). 'runbook due' then reports it overdue (exit 6), and --if-due
// rotates it with no request failing, after which it is fresh again. The
// metrics file follows each step.
func TestRotateMasterIfDueOnTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the lab")
	}
	lb := labtest.Full(t, 3)
	ctx := context.Background()
	w := newWorkdir(t, "", nil)
	metrics := filepath.Join(w.dir, "metrics")
	env := append(labRunbookEnv(t, lb), "RUNBOOK_METRICS_DIR="+metrics)
	promFile := filepath.Join(metrics, "runbook_rotate_master.prom")
	readProm := func() string {
		t.Helper()
		b, err := os.ReadFile(promFile)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	// Fresh: not due, nothing run.
	out, errOut, code := w.run(env, "exec", "rotate-master", "--yes", "--if-due")
	if code != 0 || !strings.Contains(out, "rotate-master is not due") || !strings.Contains(out, "(version 1)") {
		t.Fatalf("fresh key: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("fresh: %s", strings.TrimSpace(out))
	if _, err := os.Stat(filepath.Join(w.dir, "state")); err == nil {
		if runs := w.runs(); len(runs) != 0 {
			t.Fatalf("a run that was not due left %d runs in the state store", len(runs))
		}
	}
	if _, err := os.Stat(filepath.Join(w.dir, "records")); err == nil {
		t.Fatalf("a run that was not due wrote a records directory")
	}
	prom := readProm()
	if v, ok := metricValue(t, prom, "runbook_due"); !ok || v != 0 {
		t.Errorf("runbook_due after a fresh check: %v %v\n%s", v, ok, prom)
	}
	if age, ok := metricValue(t, prom, "runbook_key_age_seconds"); !ok || age < 0 || age > 3600 {
		t.Errorf("runbook_key_age_seconds after a fresh check: %v %v", age, ok)
	}
	if _, ok := metricValue(t, prom, "runbook_last_attempt_timestamp_seconds"); ok {
		t.Errorf("a check that was not due recorded an attempt:\n%s", prom)
	}

	out, errOut, code = w.run(env, "due")
	if code != 0 || !strings.Contains(out, "rotate-master") || !strings.Contains(out, " ok") {
		t.Fatalf("due with a fresh key: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("due (fresh):\n%s", out)

	// Old: rotated_at 100 days back.
	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	md, err := vc.Metadata(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	cm := map[string]string{}
	for k, v := range md.CustomMetadata {
		cm[k] = v
	}
	old := time.Now().Add(-100 * 24 * time.Hour).UTC()
	cm[vault.MetaRotatedAt] = old.Format(time.RFC3339)
	if err := vc.WriteCustomMetadata(ctx, "litellm/master", cm); err != nil {
		t.Fatal(err)
	}

	out, errOut, code = w.run(env, "due")
	if code != ExitAuditFailed || !strings.Contains(out, "overdue") || !strings.Contains(out, "100d") {
		t.Fatalf("due with an old key: exit %d, want %d\n%s%s", code, ExitAuditFailed, out, errOut)
	}
	t.Logf("due (old):\n%s%s", out, errOut)

	start := time.Now()
	out, errOut, code = w.run(env, "exec", "rotate-master", "--yes", "--if-due")
	took := time.Since(start)
	if code != 0 || !strings.Contains(out, "rotate-master is due") {
		t.Fatalf("old key: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("rotation by --if-due took %v:\n%s", took.Round(time.Millisecond), out)
	cur, err := vc.ReadCurrent(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	newKey := cur.Secret("key")
	if cur.Version < 2 || newKey.Equal(lb.MasterKey) {
		t.Fatalf("current master key is version %d after the rotation", cur.Version)
	}
	for _, g := range lb.Gateways {
		if st := status(t, g.URL(), newKey); st != 200 {
			t.Errorf("%s: new master key gets %d", g.Name, st)
		}
		if st := status(t, g.URL(), lb.MasterKey); st != 401 {
			t.Errorf("%s: old master key gets %d", g.Name, st)
		}
	}
	if runs := w.runs(); len(runs) != 1 {
		t.Errorf("%d runs after one due rotation", len(runs))
	}
	prom = readProm()
	t.Logf("metrics after the rotation:\n%s", prom)
	attempt, okA := metricValue(t, prom, "runbook_last_attempt_timestamp_seconds")
	success, okS := metricValue(t, prom, "runbook_last_success_timestamp_seconds")
	if !okA || !okS || success < attempt || float64(start.Unix())-1 > attempt {
		t.Errorf("attempt %v (%v), success %v (%v), started %d", attempt, okA, success, okS, start.Unix())
	}
	if v, _ := metricValue(t, prom, "runbook_due"); v != 0 {
		t.Errorf("runbook_due after the rotation: %v", v)
	}
	if v, _ := metricValue(t, prom, "runbook_last_attempt_failed"); v != 0 {
		t.Errorf("runbook_last_attempt_failed after the rotation: %v", v)
	}
	if age, _ := metricValue(t, prom, "runbook_key_age_seconds"); age > 600 {
		t.Errorf("key age after the rotation: %v s", age)
	}

	// Fresh again: the next daily check does nothing and keeps the success.
	out, errOut, code = w.run(env, "exec", "rotate-master", "--yes", "--if-due")
	if code != 0 || !strings.Contains(out, "is not due") {
		t.Fatalf("after the rotation: exit %d\n%s%s", code, out, errOut)
	}
	if v, ok := metricValue(t, readProm(), "runbook_last_success_timestamp_seconds"); !ok || v != success {
		t.Errorf("a later check lost the last success: %v %v", v, ok)
	}
	if runs := w.runs(); len(runs) != 1 {
		t.Errorf("%d runs after a check that was not due", len(runs))
	}
	leakScan(t, append([]secret.Value{newKey}, lb.MasterKey), map[string][]byte{"stdout": []byte(out)}, w.dir)
}

// TestScheduleInstall writes the unit pair into a directory and checks it
// with systemd-analyze verify where that is installed, else by parsing.
func TestScheduleInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	abs, err := filepath.Abs("../../runbooks")
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkdir(t, "", map[string]string{"inventory.yaml": "environment: prod\ngroups:\n  gateways: {}\n"})
	units := filepath.Join(w.dir, "units")
	if err := os.Mkdir(units, 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"RUNBOOK_RUNBOOKS=" + abs}
	out, errOut, code := w.run(env, "schedule", "install", "rotate-master", "--dir", units, "--binary", w.bin,
		"--env-file", "/etc/runbook/env", "--metrics-dir", "/var/lib/prometheus/node-exporter")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	svc := filepath.Join(units, "runbook-rotate-master.service")
	tmr := filepath.Join(units, "runbook-rotate-master.timer")
	if !strings.Contains(out, svc) || !strings.Contains(out, tmr) || !strings.Contains(out, "systemctl enable --now runbook-rotate-master.timer") {
		t.Errorf("output does not say where or how to enable:\n%s", out)
	}
	sb, _ := os.ReadFile(svc)
	tb, _ := os.ReadFile(tmr)
	t.Logf("%s\n%s", sb, tb)
	for _, want := range []string{"Type=oneshot", "EnvironmentFile=/etc/runbook/env",
		"exec rotate-master --yes --if-due --metrics-dir /var/lib/prometheus/node-exporter",
		"--inventory " + filepath.Join(w.dir, "inventory.yaml"), "--state " + w.state, "--records " + filepath.Join(w.dir, "records")} {
		if !strings.Contains(string(sb), want) {
			t.Errorf("service lacks %q", want)
		}
	}
	for _, want := range []string{"OnCalendar=daily", "Persistent=true", "RandomizedDelaySec=3600", "Unit=runbook-rotate-master.service", "WantedBy=timers.target"} {
		if !strings.Contains(string(tb), want) {
			t.Errorf("timer lacks %q", want)
		}
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		b, err := exec.Command(sa, "verify", svc, tmr).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(b))) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, b)
		}
	}

	// The same again is fine; different content needs --force.
	if out, errOut, code := w.run(env, "schedule", "install", "rotate-master", "--dir", units, "--binary", w.bin,
		"--env-file", "/etc/runbook/env", "--metrics-dir", "/var/lib/prometheus/node-exporter"); code != 0 {
		t.Errorf("same install again: exit %d\n%s%s", code, out, errOut)
	}
	if _, _, code := w.run(env, "schedule", "install", "rotate-master", "--dir", units, "--binary", w.bin); code != ExitUsage {
		t.Errorf("changed install without --force: exit %d, want %d", code, ExitUsage)
	}
	// A password in the state URL never goes into a unit.
	if _, errOut, code := w.run(append(env, "RUNBOOK_STATE=postgres://u:pw@127.0.0.1/db"), "schedule", "install", "rotate-master", "--dir", units, "--binary", w.bin, "--force"); code != ExitUsage || !strings.Contains(errOut, "password") {
		t.Errorf("state URL with a password: exit %d\n%s", code, errOut)
	}
}

func TestScheduleMetricsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_800_000_000, 0).UTC()
	m := scheduleMetrics{Runbook: "rotate-master", Check: now, Attempt: now.Add(-time.Hour), Success: now.Add(-time.Hour + time.Minute),
		KeyAge: 5 * time.Second, haveKeyAge: true, Schedule: 90 * 24 * time.Hour, LastFailure: true}
	p, err := writeScheduleMetrics(filepath.Join(dir, "m"), true, m)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p) != "runbook_rotate_master.prom" {
		t.Errorf("file %s", p)
	}
	got := readScheduleMetrics(p)
	if !got.Check.Equal(m.Check) || !got.Attempt.Equal(m.Attempt) || !got.Success.Equal(m.Success) || !got.LastFailure {
		t.Errorf("read back %+v, wrote %+v", got, m)
	}
	b, _ := os.ReadFile(p)
	for _, want := range []string{
		`runbook_last_success_timestamp_seconds{runbook="rotate-master"} 1799996460`,
		`runbook_key_age_seconds{runbook="rotate-master"} 5`,
		`runbook_schedule_seconds{runbook="rotate-master"} 7776000`,
		"# TYPE runbook_due gauge",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q:\n%s", want, b)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "m"))
	if len(entries) != 1 {
		t.Errorf("%d files in the metrics directory; the temporary file must be gone", len(entries))
	}
}

func TestSystemdQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/usr/bin/runbook": "/usr/bin/runbook",
		"a b":              `"a b"`,
		`x"y`:              `"x\"y"`,
		"50%":              "50%%",
		"$HOME":            "$$HOME",
	} {
		if got := systemdQuote(in); got != want {
			t.Errorf("systemdQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
