package bench_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
)

// CompromiseResult is scenario 4: `runbook exec compromise-master` end to
// end (contain, rotate, recover), with each phase's and step's time from
// the run's incident record.
type CompromiseResult struct {
	Gateways int    `json:"gateways"`
	Keys     int    `json:"keys"`
	Seconds  Series `json:"seconds"`
	// Phases and Steps are in the record's order.
	Phases []*NamedSeries `json:"phases"`
	Steps  []*NamedSeries `json:"steps"`
	// MaxRSSMiB is the runner's peak resident set (scenario 6).
	MaxRSSMiB Series `json:"max_rss_mib"`
	RunnerCPU Series `json:"runner_cpu_seconds"`
	VaultCPU  Series `json:"vault_cpu_seconds"`
}

// NamedSeries is the time of one phase or step across runs.
type NamedSeries struct {
	Name    string `json:"name"`
	Target  string `json:"target,omitempty"`
	Seconds Series `json:"seconds"`
}

func named(list *[]*NamedSeries, name string) *NamedSeries {
	for _, s := range *list {
		if s.Name == name {
			return s
		}
	}
	s := &NamedSeries{Name: name}
	*list = append(*list, s)
	return s
}

// compromise runs the main job again and again on one lab: each run starts
// where the last left it (a new master key running on every gateway, every
// virtual key re-issued, containment lifted), which is the state before an
// incident. The warm-up run leaves a Vault path for every virtual key, so
// every timed run overwrites each one.
func compromise(t *testing.T, h *harness, cfg settings, res *Results) {
	ctx := context.Background()
	n, keys := cfg.compromiseGateways, cfg.compromiseKeys
	l := labtest.Up(t, lab.Config{Gateways: n, Postgres: true, Vault: true, Keys: keys})
	r := &CompromiseResult{Gateways: n, Keys: keys}
	for i := 0; i < cfg.warmup+cfg.iters; i++ {
		dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
		v0 := procCPU(l.Vault.PID)
		p, err := h.runMeasured(h.runbookCmd(ctx, l, dir, "exec", "compromise-master", "--yes", "--reason", "benchmark: master key exposed"))
		vcpu := procCPU(l.Vault.PID) - v0
		if err != nil {
			t.Fatalf("compromise-master on %d gateways, %d keys: %v", n, keys, err)
		}
		rec, err := readRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("re-issue %d virtual keys", keys)
		if rec.Status != "succeeded" || len(rec.Phases) != 3 || !strings.HasPrefix(rec.changeOf("reissue"), want) {
			t.Fatalf("compromise-master: record %s, %d phases, re-issue %q", rec.Status, len(rec.Phases), rec.changeOf("reissue"))
		}
		if err := checkOpen(ctx, l); err != nil {
			t.Fatalf("after compromise-master: %v", err)
		}
		phases, ps, err := rec.phaseSeconds()
		if err != nil {
			t.Fatal(err)
		}
		steps, ss := rec.stepSeconds()
		var line []string
		for _, ph := range phases {
			line = append(line, fmt.Sprintf("%s %.3f s", ph, ps[ph]))
		}
		t.Logf("compromise-master, %d gateways, %d keys, iteration %d: %v (%s), runner CPU %v, Vault CPU %v, max RSS %.1f MiB",
			n, keys, i, p.took.Round(time.Millisecond), strings.Join(line, ", "), p.cpu.Round(time.Millisecond), vcpu.Round(10*time.Millisecond), p.rssMiB())
		if i < cfg.warmup {
			continue
		}
		r.Seconds.add(p.took.Seconds())
		r.MaxRSSMiB.add(p.rssMiB())
		r.RunnerCPU.add(p.cpu.Seconds())
		r.VaultCPU.add(vcpu.Seconds())
		for _, ph := range rec.Phases {
			s := named(&r.Phases, ph.Name)
			s.Target = ph.Target
			s.Seconds.add(ps[ph.Name])
		}
		for _, st := range steps {
			named(&r.Steps, st).Seconds.add(ss[st])
		}
	}
	res.Compromise = r
}
