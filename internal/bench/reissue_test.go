package bench_test

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
)

// ReissueResult is scenario 3 at one size: internal/bench/runbooks/
// reissue-all.yaml (stop the proxy, re-issue every virtual key with its new
// value written to Vault first) run by the runbook binary.
type ReissueResult struct {
	Keys   int    `json:"keys"`
	Warmup int    `json:"warmup"`
	Iters  int    `json:"iterations"`
	Note   string `json:"note,omitempty"`
	// Seconds is the process's wall time, start to exit; StepSeconds the
	// reissue step's span in the run's record.
	Seconds     Series `json:"seconds"`
	StepSeconds Series `json:"step_seconds"`
	// MaxRSSMiB is the runner's peak resident set (scenario 6).
	MaxRSSMiB Series `json:"max_rss_mib"`
	// CPU time of the runner and of the Vault server during the run.
	RunnerCPU Series `json:"runner_cpu_seconds"`
	VaultCPU  Series `json:"vault_cpu_seconds"`
}

// reissue re-issues every virtual key of one lab, reseeded at each size.
// The warm-up run at each size leaves a Vault path for every key, so every
// timed run writes a new version over it, as a repeated rotation does.
func reissue(t *testing.T, h *harness, cfg settings, res *Results) {
	ctx := context.Background()
	l := labtest.Up(t, lab.Config{Gateways: 1, Postgres: true, Vault: true, Keys: cfg.keys[0]})
	seeded := cfg.keys[0]
	for _, n := range cfg.keys {
		t.Run(fmt.Sprintf("keys=%d", n), func(t *testing.T) {
			if n != seeded {
				t0 := time.Now()
				_, err := lab.Seed(ctx, l.DatabaseURL, lab.SeedConfig{Keys: n, MasterKey: l.MasterKey, SaltKey: l.SaltKey,
					SpendLogsPerKey: -1, MasterKeyRequests: 1})
				if err != nil {
					t.Fatalf("seed %d keys: %v", n, err)
				}
				seeded = n
				t.Logf("seeded %d keys in %v", n, time.Since(t0).Round(time.Millisecond))
			}
			r := &ReissueResult{Keys: n, Warmup: cfg.warmup, Iters: cfg.iters}
			if cfg.bigKeys > 0 && n >= cfg.bigKeys {
				r.Warmup, r.Iters = cfg.bigWarmup, cfg.bigIters
				r.Note = fmt.Sprintf("%d timed run%s, %d warm-up, to fit the 15-minute budget of make bench", r.Iters, plural(r.Iters), r.Warmup)
				if r.Warmup == 0 {
					r.Note += "; without a warm-up at this size most Vault paths are new (a first version, which costs Vault less than a version over an existing one)"
				}
			}
			if r.Warmup == 0 && r.Note == "" {
				r.Note = "no warm-up: in the timed run most Vault paths are new (a first version, which costs Vault less than a version over an existing one)"
			}
			for i := 0; i < r.Warmup+r.Iters; i++ {
				dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
				c := h.runbookCmd(ctx, l, dir, "exec", "reissue-all", "--yes", "--reason", "benchmark",
					"--runbooks", filepath.Join(h.root, "internal/bench/runbooks"))
				var prof *profiling
				if cfg.profile && n == profileKeys && i == r.Warmup+r.Iters-1 {
					// The last timed run, profiled: pprof's sampling costs about 1%.
					secs := 10
					if r.Seconds.ok() {
						secs = int(math.Max(2, math.Floor(r.Seconds.Median*0.8)))
					}
					prof = startProfiles(ctx, t, l, c, secs)
				}
				v0 := procCPU(l.Vault.PID)
				p, err := h.runMeasured(c)
				vcpu := procCPU(l.Vault.PID) - v0
				if err != nil {
					t.Fatalf("re-issue %d keys: %v", n, err)
				}
				rec, err := readRecord(dir)
				if err != nil {
					t.Fatal(err)
				}
				want := fmt.Sprintf("re-issue %d virtual keys", n)
				if rec.Status != "succeeded" || !strings.HasPrefix(rec.changeOf("reissue"), want) {
					t.Fatalf("re-issue %d keys: record %s, change %q, want %q", n, rec.Status, rec.changeOf("reissue"), want)
				}
				_, steps := rec.stepSeconds()
				t.Logf("re-issue %d keys, iteration %d: %v (step %.3f s), runner CPU %v, Vault CPU %v, max RSS %.1f MiB",
					n, i, p.took.Round(time.Millisecond), steps["reissue"], p.cpu.Round(time.Millisecond), vcpu.Round(10*time.Millisecond), p.rssMiB())
				if prof != nil {
					res.Profiles = append(res.Profiles, prof.finish(t, fmt.Sprintf("re-issue of %s keys (reissue-all), the last timed run", count(n)))...)
				}
				if i < r.Warmup {
					continue
				}
				r.Seconds.add(p.took.Seconds())
				r.StepSeconds.add(steps["reissue"])
				r.MaxRSSMiB.add(p.rssMiB())
				r.RunnerCPU.add(p.cpu.Seconds())
				r.VaultCPU.add(vcpu.Seconds())
			}
			res.Reissue = append(res.Reissue, r)
		})
	}
}

// profileKeys is the re-issue size profiled in full mode.
const profileKeys = 10000

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
