package bench_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
)

// PlanResult is scenario 2: `runbook plan compromise-master` (the dry
// run: every step's observation on every gateway, nothing written).
type PlanResult struct {
	Gateways int    `json:"gateways"`
	Seconds  Series `json:"seconds"`
	// CPUSeconds is the runner's own CPU time.
	CPUSeconds Series `json:"cpu_seconds"`
	MaxRSSMiB  Series `json:"max_rss_mib"`
}

// plan times the dry run of compromise-master on lab l, from the state
// before an incident (proxies serving, no DROP rule).
func plan(t *testing.T, h *harness, cfg settings, l *lab.Lab, res *Results) {
	ctx := context.Background()
	restore(ctx, t, l)
	r := &PlanResult{Gateways: len(l.Gateways)}
	for i := 0; i < cfg.warmup+cfg.iters; i++ {
		dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
		p, err := h.runMeasured(h.runbookCmd(ctx, l, dir, "plan", "compromise-master", "--reason", "benchmark", "-o", "json"))
		if err != nil {
			t.Fatalf("plan on %d gateways: %v", len(l.Gateways), err)
		}
		if err := checkPlan(p.out, l); err != nil {
			t.Fatalf("plan on %d gateways: %v", len(l.Gateways), err)
		}
		t.Logf("plan of compromise-master, %d gateways, iteration %d: %v", len(l.Gateways), i, p.took.Round(time.Millisecond))
		if i >= cfg.warmup {
			r.Seconds.add(p.took.Seconds())
			r.CPUSeconds.add(p.cpu.Seconds())
			r.MaxRSSMiB.add(p.rssMiB())
		}
	}
	res.Plan = r
}

// checkPlan checks the plan observed every gateway: the proxy to stop and
// the port to drop on each, the rotation to follow.
func checkPlan(out string, l *lab.Lab) error {
	var p struct {
		Items []struct {
			Step   string `json:"step"`
			Host   string `json:"host"`
			Status string `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return fmt.Errorf("plan JSON: %w", err)
	}
	hosts := map[string]map[string]string{}
	steps := map[string]bool{}
	for _, it := range p.Items {
		steps[it.Step] = true
		if it.Host != "" {
			if hosts[it.Step] == nil {
				hosts[it.Step] = map[string]string{}
			}
			hosts[it.Step][it.Host] = it.Status
		}
	}
	for _, s := range []string{"stop-proxy", "drop-port"} {
		if len(hosts[s]) != len(l.Gateways) {
			return fmt.Errorf("step %s planned on %d hosts, want %d", s, len(hosts[s]), len(l.Gateways))
		}
		for host, st := range hosts[s] {
			if st != "change" {
				return fmt.Errorf("step %s on %s: %q, want change", s, host, st)
			}
		}
	}
	for _, s := range []string{"new-master-key", "reissue", "rollout", "promote"} {
		if !steps[s] {
			return fmt.Errorf("no step %s in the plan", s)
		}
	}
	return nil
}
