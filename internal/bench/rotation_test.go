package bench_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
)

// RotationResult is scenario 5: requests sent through the lab's nginx
// while `runbook exec rotate-master` rolls a new master key over the
// gateways, one at a time behind its health gate.
type RotationResult struct {
	Gateways int    `json:"gateways"`
	Clients  int    `json:"clients"`
	Seconds  Series `json:"seconds"`
	Requests Series `json:"requests"`
	Failed   Series `json:"failed"`
	// Failures are the first few failed requests of any timed run.
	Failures []string `json:"failures,omitempty"`
}

// rotation runs rotate-master under load. The warm-up run also pins
// LITELLM_SALT_KEY (a first rolling restart the later runs skip).
func rotation(t *testing.T, h *harness, cfg settings, res *Results) {
	ctx := context.Background()
	n := cfg.rotationGateways
	l := labtest.Up(t, lab.Config{Gateways: n, Nginx: true, Postgres: true, Vault: true})
	key := loadKey(ctx, t, l)
	r := &RotationResult{Gateways: n, Clients: cfg.clients}
	// The load works before anything changes.
	probe := startLoad(l.Nginx.Addr, key, 1)
	time.Sleep(200 * time.Millisecond)
	probe.Finish()
	if probe.Total.Load() == 0 || probe.Failed.Load() > 0 {
		t.Fatalf("load through nginx before the rotation: %d of %d failed: %v", probe.Failed.Load(), probe.Total.Load(), probe.Failures())
	}
	runbooks := drainingRunbooks(t, h, l)
	for i := 0; i < cfg.warmup+cfg.iters; i++ {
		dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
		g := startLoad(l.Nginx.Addr, key, cfg.clients)
		p, err := runProc(h.runbookCmd(ctx, l, dir, "exec", "rotate-master", "--yes", "--reason", "benchmark", "--runbooks", runbooks))
		g.Finish()
		if err != nil {
			t.Fatalf("rotate-master on %d gateways: %v", n, err)
		}
		rec, err := readRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Status != "succeeded" || rec.changeOf("rollout") == "" {
			t.Fatalf("rotate-master: record %s, rollout %q", rec.Status, rec.changeOf("rollout"))
		}
		total, failed := g.Total.Load(), g.Failed.Load()
		t.Logf("rotate-master under load, %d gateways, iteration %d: %v, %d requests, %d failed %v",
			n, i, p.took.Round(time.Millisecond), total, failed, g.Failures())
		if i < cfg.warmup {
			continue
		}
		r.Seconds.add(p.took.Seconds())
		r.Requests.add(float64(total))
		r.Failed.add(float64(failed))
		for _, f := range g.Failures() {
			if len(r.Failures) < 10 {
				r.Failures = append(r.Failures, fmt.Sprintf("run %d: %s", i-cfg.warmup+1, f))
			}
		}
	}
	res.Rotation = r
}

// drainingRunbooks writes rotate-master as shipped plus, in each of its
// rollout steps, the drain and undrain commands of the lab's nginx
// (`runbook-lab drain|undrain GATEWAY`), as the runbook's description
// advises for a load balancer that does not retry a POST on another
// upstream. Both wait until nginx has taken the change, so the steps'
// settle time, meant for a balancer's passive checks, is 0. It returns the
// directory to pass as --runbooks.
func drainingRunbooks(t *testing.T, h *harness, l *lab.Lab) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(h.root, "runbooks", "rotate-master.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(h.lab+l.Dir, `"`) {
		t.Fatalf("a quote in %s or %s", h.lab, l.Dir)
	}
	cmd := func(verb string) string {
		return fmt.Sprintf("      %s: [\"%s\", %s, --dir, \"%s\", \"{host}\"]\n", verb, h.lab, verb, l.Dir)
	}
	var b strings.Builder
	rollout, settles := false, 0
	for _, line := range strings.SplitAfter(string(src), "\n") {
		switch {
		case strings.HasPrefix(line, "  - id: "):
			rollout = false
		case line == "    kind: litellm.rollout\n":
			rollout = true
		case rollout && strings.HasPrefix(line, "      settle: "):
			// The drain returns once no nginx worker can reach the
			// gateway, and the undrain once every worker can: there is
			// no balancer state to wait for.
			line = "      settle: 0s\n"
			settles++
		}
		b.WriteString(line)
		if line == "    with:\n" && rollout {
			b.WriteString(cmd("drain"))
			b.WriteString(cmd("undrain"))
		}
	}
	if settles != 2 {
		t.Fatalf("rotate-master.yaml: %d settle lines in its rollout steps, want 2", settles)
	}
	out := b.String()
	if got := strings.Count(out, "drain: ["); got != 4 {
		t.Fatalf("put %d drain and undrain commands into rotate-master's two rollout steps, want 4:\n%s", got, out)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rotate-master.yaml"), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// loadKey is a seeded virtual key every gateway accepts for the load's
// requests for as long as the benchmark runs: not blocked, not about to
// expire, no budget, allowed the load's model.
func loadKey(ctx context.Context, t *testing.T, l *lab.Lab) secret.Value {
	t.Helper()
	conn, err := pgx.Connect(ctx, l.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT token FROM "LiteLLM_VerificationToken"
		WHERE blocked IS NOT TRUE AND (expires IS NULL OR expires > now() + interval '1 day')
		AND max_budget IS NULL AND (models = '{}' OR $1 = ANY(models))`, loadModel)
	if err != nil {
		t.Fatal(err)
	}
	fit := map[string]bool{}
	for rows.Next() {
		var tok string
		if err := rows.Scan(&tok); err != nil {
			t.Fatal(err)
		}
		fit[tok] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range l.Seed.Keys {
		if fit[k.Hash] && k.Valid(time.Now().Add(24*time.Hour)) {
			return k.Key
		}
	}
	t.Fatal("no seeded virtual key fits the load")
	return secret.Value{}
}

const loadModel = "gpt-4o-mini"

// startLoad sends requests through nginx until finished: half chat
// completions (POST, which nginx does not retry on another gateway once
// sent), half model lists.
func startLoad(addr string, key secret.Value, clients int) *labtest.Load {
	return labtest.StartLoad(clients, labtest.LoadOptions{}, labtest.ChatOrModels(addr, loadModel, key))
}
