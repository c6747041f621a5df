package cli

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultMetricsDir is where Debian's prometheus-node-exporter reads
// textfile-collector files. Metrics are written there only when it exists;
// a directory given with --metrics-dir or $RUNBOOK_METRICS_DIR is created.
const DefaultMetricsDir = "/var/lib/prometheus/node-exporter"

// scheduleMetrics are the gauges a scheduled run leaves for Prometheus'
// node exporter textfile collector. Zero times are left out.
type scheduleMetrics struct {
	Runbook     string
	Check       time.Time     // the last --if-due check
	Attempt     time.Time     // the last run started (the key was due)
	Success     time.Time     // the last run that succeeded
	KeyAge      time.Duration // the master key's age after the check or run
	Schedule    time.Duration
	Due         bool // after the check or run: still due
	LastFailure bool // the last attempt failed
	haveKeyAge  bool
}

// metricsFile is the textfile-collector file of runbook name in dir.
func metricsFile(dir, name string) string {
	return filepath.Join(dir, "runbook_"+sanitizeMetricName(name)+".prom")
}

func sanitizeMetricName(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// readScheduleMetrics reads the timestamps a previous run left, so that a
// failed or skipped run keeps the last success. A missing or unreadable
// file gives zero times.
func readScheduleMetrics(path string) scheduleMetrics {
	var m scheduleMetrics
	f, err := os.Open(path)
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, "{")
		if !ok {
			continue
		}
		_, val, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if name == "runbook_last_attempt_failed" && err == nil {
			m.LastFailure = v == 1
			continue
		}
		if err != nil || v <= 0 {
			continue
		}
		t := time.Unix(int64(v), 0).UTC()
		switch name {
		case "runbook_last_check_timestamp_seconds":
			m.Check = t
		case "runbook_last_attempt_timestamp_seconds":
			m.Attempt = t
		case "runbook_last_success_timestamp_seconds":
			m.Success = t
		}
	}
	return m
}

// render writes the gauges in the Prometheus text exposition format.
func (m scheduleMetrics) render() string {
	var b strings.Builder
	label := fmt.Sprintf("{runbook=%q}", m.Runbook)
	gauge := func(name, help string, v string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s%s %s\n", name, help, name, name, label, v)
	}
	ts := func(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }
	b01 := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	if !m.Check.IsZero() {
		gauge("runbook_last_check_timestamp_seconds", "Time of the last scheduled check (runbook exec --if-due).", ts(m.Check))
	}
	if !m.Attempt.IsZero() {
		gauge("runbook_last_attempt_timestamp_seconds", "Time the last scheduled run started because the key was due.", ts(m.Attempt))
	}
	if !m.Success.IsZero() {
		gauge("runbook_last_success_timestamp_seconds", "Time the last scheduled run finished successfully.", ts(m.Success))
	}
	if m.haveKeyAge {
		gauge("runbook_key_age_seconds", "Age of the current master key in Vault.", strconv.FormatInt(int64(m.KeyAge/time.Second), 10))
	}
	if m.Schedule > 0 {
		gauge("runbook_schedule_seconds", "How often the runbook is due.", strconv.FormatInt(int64(m.Schedule/time.Second), 10))
	}
	gauge("runbook_due", "1 when the key is still older than the schedule after the last check or run.", b01(m.Due))
	gauge("runbook_last_attempt_failed", "1 when the last scheduled run failed.", b01(m.LastFailure))
	return b.String()
}

// writeScheduleMetrics writes m to dir atomically: a temporary file in the
// same directory, synced, then renamed, so the collector never reads half a
// file. create says whether dir may be created.
func writeScheduleMetrics(dir string, create bool, m scheduleMetrics) (string, error) {
	if create {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("create metrics directory %s: %w", dir, err)
		}
	}
	path := metricsFile(dir, m.Runbook)
	f, err := os.CreateTemp(dir, ".runbook-metrics-*")
	if err != nil {
		return "", fmt.Errorf("write metrics %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.WriteString(m.render()); err != nil {
		f.Close()
		return "", fmt.Errorf("write metrics %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return "", fmt.Errorf("write metrics %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("write metrics %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write metrics %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write metrics %s: %w", path, err)
	}
	return path, nil
}
