package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// The reliability suite (internal/reliability/RELIABILITY.md): the crash
// matrix of compromise-master against the lab. It runs only when
// RUNBOOK_RELIABILITY is set: "full" tries every journal point and every
// apply point, "smoke" a handful spread over the run's phases.

const reliabilityReason = "reliability: crash matrix"

// reliabilityMode returns "full" or "smoke", skipping the test otherwise.
func reliabilityMode(t *testing.T) string {
	t.Helper()
	mode := os.Getenv("RUNBOOK_RELIABILITY")
	switch mode {
	case "full", "smoke":
		return mode
	case "":
		t.Skip("set RUNBOOK_RELIABILITY=smoke or =full to run the crash matrix")
	default:
		t.Fatalf("RUNBOOK_RELIABILITY=%q: want smoke or full", mode)
	}
	return ""
}

// spread picks up to n points of 1..total, evenly spaced, first and last
// included.
func spread(total, n int) []int {
	if total <= n {
		out := make([]int, total)
		for i := range out {
			out[i] = i + 1
		}
		return out
	}
	var out []int
	for i := 0; i < n; i++ {
		k := 1 + i*(total-1)/(n-1)
		if len(out) == 0 || out[len(out)-1] != k {
			out = append(out, k)
		}
	}
	return out
}

// labRun is one lab with a workdir and the environment that runs
// compromise-master against it.
type labRun struct {
	lb  *lab.Lab
	w   *workdir
	env []string
}

func newLabRun(t *testing.T) *labRun {
	t.Helper()
	lb := labtest.Full(t, 3)
	w := newWorkdir(t, "", nil)
	env := labRunbookEnv(t, lb)
	return &labRun{lb: lb, w: w, env: env}
}

func (r *labRun) exec(extra ...string) (string, string, int) {
	return r.w.run(append(append([]string{}, r.env...), extra...), "exec", "compromise-master", "--yes", "--reason", reliabilityReason)
}

// checkInvariants checks what must hold after compromise-master ended,
// however often it was killed and resumed on the way.
func (r *labRun) checkInvariants(t *testing.T, runID string, outputs map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	lb, w := r.lb, r.w

	// The run ended succeeded and its journal's hash chain verifies.
	recs := w.journal(runID)
	if err := journal.Verify(recs); err != nil {
		t.Errorf("journal hash chain: %v", err)
	}
	st, err := journal.Replay(recs)
	if err != nil || st.End == nil || st.End.Status != journal.StatusSucceeded {
		t.Errorf("run does not end succeeded: %v %+v", err, st)
	}
	// The incident record exists and says succeeded.
	jsons, _ := filepath.Glob(filepath.Join(w.dir, "records", "*-compromise-master-"+runID+".json"))
	mds, _ := filepath.Glob(filepath.Join(w.dir, "records", "*-compromise-master-"+runID+".md"))
	if len(jsons) != 1 || len(mds) != 1 {
		t.Errorf("records: %d JSON and %d Markdown, want one of each", len(jsons), len(mds))
	} else if b, err := os.ReadFile(jsons[0]); err != nil {
		t.Error(err)
	} else {
		var rec struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(b, &rec); err != nil || rec.Status != "succeeded" {
			t.Errorf("record status %q (%v), want succeeded", rec.Status, err)
		}
	}

	// Vault gained exactly one master-key version.
	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	md, err := vc.Metadata(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	if md.CurrentVersion != 2 || len(md.Versions) != 2 {
		t.Errorf("Vault master key: current version %d, %d versions; want 2 and 2", md.CurrentVersion, len(md.Versions))
	}
	cur, err := vc.ReadCurrent(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	newMaster := cur.Secret("key")
	if newMaster.IsZero() || newMaster.Equal(lb.MasterKey) {
		t.Errorf("Vault's current master key is not a new key")
	}

	// Each gateway serves on the master key current in Vault (so
	// containment is lifted: port 4000 answers) and refuses the old one.
	for _, g := range lb.Gateways {
		if st := status(t, g.URL(), newMaster); st != 200 {
			t.Errorf("%s: the master key current in Vault gets %d, want 200", g.Name, st)
		}
		if st := status(t, g.URL(), lb.MasterKey); st != 401 {
			t.Errorf("%s: the old master key gets %d, want 401", g.Name, st)
		}
	}

	// Every virtual key row's token hashes a key held in Vault for it, and
	// no old key is accepted by any gateway.
	secrets := []secret.Value{newMaster, lb.MasterKey}
	vaultHashes := map[string]string{} // hash of the key in Vault -> its name
	aliasHash := map[string]string{}
	for _, k := range lb.Seed.Keys {
		secrets = append(secrets, k.Key)
		for _, g := range lb.Gateways {
			if st := status(t, g.URL(), k.Key); st != 401 {
				t.Errorf("%s: old virtual key %s gets %d, want 401", g.Name, secret.Fingerprint(k.Key.Reveal()), st)
			}
		}
		name := k.Alias
		if name == "" {
			name = k.Hash
		}
		e, err := vc.Read(ctx, "litellm/virtual-keys/"+name)
		if err != nil {
			t.Errorf("no key in Vault for %s: %v", name, err)
			continue
		}
		nk := e.Secret("key")
		if nk.IsZero() {
			t.Errorf("Vault entry for %s holds no key", name)
			continue
		}
		secrets = append(secrets, nk)
		h := litellm.HashToken(nk.Reveal())
		if h == k.Hash {
			t.Errorf("key %s was not replaced", name)
		}
		vaultHashes[h] = name
		if k.Alias != "" {
			aliasHash[k.Alias] = h
		}
	}
	conn, err := pgx.Connect(ctx, lb.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT token, coalesce(key_alias, '') FROM `+litellm.TableVerificationToken)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var token, alias string
		if err := rows.Scan(&token, &alias); err != nil {
			t.Fatal(err)
		}
		n++
		if _, ok := vaultHashes[token]; !ok {
			t.Errorf("virtual key row %s (alias %q) hashes no key held in Vault", token, alias)
		}
		if want, ok := aliasHash[alias]; ok && alias != "" && token != want {
			t.Errorf("row of alias %q holds %s, Vault's key for it hashes to %s", alias, token, want)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != len(lb.Seed.Keys) {
		t.Errorf("%d virtual key rows, %d seeded", n, len(lb.Seed.Keys))
	}

	// No key value in any output, journal, state or record.
	leakScan(t, secrets, outputs, w.dir)
}

// crashPoint is one way to kill the runner: an environment variable of the
// crash hook, or (env empty) SIGKILL after a delay.
type crashPoint struct {
	name  string
	env   string
	delay time.Duration
}

// crashAndResume runs compromise-master on a fresh lab, has it killed at p,
// resumes it and checks the invariants.
func crashAndResume(t *testing.T, p crashPoint) {
	r := newLabRun(t)
	outputs := map[string][]byte{}
	var code int
	killed := true
	if p.env != "" {
		out, errOut, c := r.exec(p.env)
		outputs["crashed stdout"], outputs["crashed stderr"], code = []byte(out), []byte(errOut), c
		if code != 128+int(syscall.SIGKILL) {
			t.Fatalf("runner was not killed at %s (exit %d)\n%s%s", p.env, code, out, errOut)
		}
	} else {
		c := r.w.cmd(r.env, "exec", "compromise-master", "--yes", "--reason", reliabilityReason)
		var o, e strings.Builder
		c.Stdout, c.Stderr = &o, &e
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(p.delay, func() { _ = c.Process.Signal(syscall.SIGKILL) })
		err := c.Wait()
		timer.Stop()
		outputs["crashed stdout"], outputs["crashed stderr"] = []byte(o.String()), []byte(e.String())
		if err == nil {
			killed = false
			t.Logf("the run finished before the kill at %v", p.delay)
		}
	}
	runs := r.w.runs()
	if len(runs) != 1 {
		t.Fatalf("%d runs after the crash, want 1", len(runs))
	}
	id := runs[0].RunID
	// Resume even a run whose end record is durable: the runner may have
	// died before writing the incident record, which resume writes again.
	if killed {
		out, errOut, code := r.w.run(r.env, "resume", id)
		outputs["resume stdout"], outputs["resume stderr"] = []byte(out), []byte(errOut)
		if code != 0 {
			t.Fatalf("resume: exit %d\n%s%s", code, out, errOut)
		}
	}
	r.checkInvariants(t, id, outputs)
}

// TestReliabilityCrashMatrix: compromise-master on a lab of 3 gateways is
// killed with SIGKILL after each journal record in turn (the crash hook's
// RUNBOOK_TEST_CRASH_AFTER), after each Apply before its outcome is
// journaled (RUNBOOK_TEST_CRASH_AFTER_APPLY), and at random times, each on a
// fresh lab; `runbook resume` then completes it and the invariants hold.
func TestReliabilityCrashMatrix(t *testing.T) {
	mode := reliabilityMode(t)
	var records, applies int
	var cleanTime time.Duration
	var types []string
	t.Run("clean", func(t *testing.T) {
		r := newLabRun(t)
		start := time.Now()
		out, errOut, code := r.exec()
		cleanTime = time.Since(start)
		if code != 0 {
			t.Fatalf("clean run: exit %d\n%s%s", code, out, errOut)
		}
		runs := r.w.runs()
		if len(runs) != 1 {
			t.Fatalf("%d runs", len(runs))
		}
		recs := r.w.journal(runs[0].RunID)
		records = len(recs)
		for _, rec := range recs {
			types = append(types, fmt.Sprintf("%s %s@%s", rec.Type, rec.Step, rec.Host))
			if rec.Type == journal.TIntent {
				applies++
			}
		}
		r.checkInvariants(t, runs[0].RunID, map[string][]byte{"stdout": []byte(out), "stderr": []byte(errOut)})
	})
	if t.Failed() || records == 0 {
		t.Fatal("no clean run to count the points from")
	}
	t.Logf("a clean run: %d journal records, %d applies, %v", records, applies, cleanTime.Round(time.Millisecond))

	recordPoints, applyPoints, randomPoints := spread(records, records), spread(applies, applies), 5
	if mode == "smoke" {
		recordPoints, applyPoints, randomPoints = spread(records, 6), spread(applies, 3), 1
	}
	var points []crashPoint
	for _, k := range recordPoints {
		points = append(points, crashPoint{name: fmt.Sprintf("record-%d", k), env: fmt.Sprintf("RUNBOOK_TEST_CRASH_AFTER=%d", k)})
	}
	for _, k := range applyPoints {
		points = append(points, crashPoint{name: fmt.Sprintf("apply-%d", k), env: fmt.Sprintf("RUNBOOK_TEST_CRASH_AFTER_APPLY=%d", k)})
	}
	for i := 0; i < randomPoints; i++ {
		d := time.Duration(rand.Int64N(int64(cleanTime)))
		points = append(points, crashPoint{name: fmt.Sprintf("random-%d", i+1), delay: d})
	}
	passed := 0
	var failed []string
	for _, p := range points {
		ok := t.Run(p.name, func(t *testing.T) {
			if strings.HasPrefix(p.name, "record-") {
				var k int
				fmt.Sscanf(p.name, "record-%d", &k)
				t.Logf("killed after record %d: %s", k, types[k-1])
			} else if p.env == "" {
				t.Logf("killed after %v", p.delay.Round(time.Millisecond))
			}
			crashAndResume(t, p)
		})
		if ok {
			passed++
		} else {
			failed = append(failed, p.name)
		}
	}
	t.Logf("crash points tried: %d, passed: %d (mode %s; record points %d, apply points %d, random %d)",
		len(points), passed, mode, len(recordPoints), len(applyPoints), randomPoints)
	if len(failed) > 0 {
		t.Logf("failed points: %s", strings.Join(failed, " "))
	}
}
