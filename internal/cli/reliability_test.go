package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
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
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/vault"
)

// The reliability suite (internal/reliability/RELIABILITY.md): the crash
// matrix of compromise-master and rotate-master against the lab. It runs
// only when RUNBOOK_RELIABILITY is set: "full" tries every journal point
// and every apply point, "smoke" a handful spread over the run's phases.

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
// included (one point: the middle one).
func spread(total, n int) []int {
	if n == 1 && total > 1 {
		return []int{(total + 1) / 2}
	}
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

// matrixRunbook is a shipped runbook the crash matrix runs, with what must
// hold after it ended beyond the invariants every run shares, and how many
// points the smoke mode tries.
type matrixRunbook struct {
	name string
	// check checks the runbook's own invariants and returns the secrets
	// it read on the way (for the leak scan).
	check func(r *labRun, t *testing.T) []secret.Value
	// smoke: record points, apply points and random kills in smoke mode.
	smokeRecords, smokeApplies, smokeRandom int
}

// matrixRunbooks: compromise-master re-issues every virtual key and lifts
// the containment it put up; rotate-master leaves virtual keys and the
// firewall alone and pins the salt key before it rolls the master key.
var matrixRunbooks = []matrixRunbook{
	{name: "compromise-master", check: (*labRun).checkVirtualKeysReissued, smokeRecords: 4, smokeApplies: 2, smokeRandom: 1},
	{name: "rotate-master", check: (*labRun).checkRotateMasterKept, smokeRecords: 3, smokeApplies: 1, smokeRandom: 1},
}

// labRun is one lab with a workdir and the environment that runs a
// matrix runbook against it, what the lab looked like before the run, and
// the leak watch over it.
type labRun struct {
	rb    matrixRunbook
	lb    *lab.Lab
	w     *workdir
	env   []string
	watch *leakWatch
	// Before the run: each gateway's firewall rules, and a digest of the
	// virtual key table.
	rulesBefore map[string]string
	keysBefore  string
}

// newLabRun is a lab run of compromise-master.
func newLabRun(t *testing.T) *labRun {
	t.Helper()
	return newMatrixRun(t, matrixRunbooks[0])
}

func newMatrixRun(t *testing.T, rb matrixRunbook) *labRun {
	t.Helper()
	return newMatrixRunState(t, rb, nil)
}

// newMatrixRunState is newMatrixRun with the workdir's state store given
// by stateURL (for example a database of the lab's own PostgreSQL
// cluster); nil keeps the workdir's state directory.
func newMatrixRunState(t *testing.T, rb matrixRunbook, stateURL func(t *testing.T, lb *lab.Lab) string) *labRun {
	t.Helper()
	lb := labtest.Full(t, 3)
	url := ""
	if stateURL != nil {
		url = stateURL(t, lb)
	}
	w := newWorkdir(t, url, nil)
	watch := watchLeaks(t, lb, w.bin)
	env := append(labRunbookEnv(t, lb), watch.env()...)
	r := &labRun{rb: rb, lb: lb, w: w, env: env, watch: watch, rulesBefore: map[string]string{}}
	for _, g := range lb.Gateways {
		r.rulesBefore[g.Name] = firewallRules(t, g)
	}
	r.keysBefore = tableDigest(t, lb, litellm.TableVerificationToken)
	return r
}

// checkUntouched fails t unless every gateway's firewall rules and the
// virtual key table are as they were before the run.
func (r *labRun) checkUntouched(t *testing.T) {
	t.Helper()
	for _, g := range r.lb.Gateways {
		if got := firewallRules(t, g); got != r.rulesBefore[g.Name] {
			t.Errorf("%s: firewall changed by a run that journaled nothing:\n%s", g.Name, got)
		}
	}
	if got := tableDigest(t, r.lb, litellm.TableVerificationToken); got != r.keysBefore {
		t.Errorf("virtual keys changed by a run that journaled nothing")
	}
}

func (r *labRun) exec(extra ...string) (string, string, int) {
	return r.w.run(append(append([]string{}, r.env...), extra...), "exec", r.rb.name, "--yes", "--reason", reliabilityReason)
}

// firewallRules lists g's iptables and ip6tables rules (iptables -S).
func firewallRules(t *testing.T, g *lab.Gateway) string {
	t.Helper()
	var b strings.Builder
	for _, bin := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command("ip", "netns", "exec", g.Namespace, bin, "-w", "-S").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %s -S: %v\n%s", g.Name, bin, err, out)
		}
		fmt.Fprintf(&b, "# %s\n%s", bin, out)
	}
	return b.String()
}

// connectDB connects to the PostgreSQL database at url; the caller closes
// the connection.
func connectDB(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	return conn
}

// tableDigest is an MD5 of every row of a LiteLLM table.
func tableDigest(t *testing.T, lb *lab.Lab, table string) string {
	t.Helper()
	ctx := context.Background()
	conn := connectDB(t, lb.DatabaseURL)
	defer conn.Close(ctx)
	var sum string
	if err := conn.QueryRow(ctx, "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), 'empty') FROM "+table+" t").Scan(&sum); err != nil {
		t.Fatalf("%s: %v", table, err)
	}
	return sum
}

// checkInvariants checks what must hold after the runbook ended, however
// often it was killed and resumed on the way, then scans for leaks.
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
	jsons, _ := filepath.Glob(filepath.Join(w.dir, "records", "*-"+r.rb.name+"-"+runID+".json"))
	mds, _ := filepath.Glob(filepath.Join(w.dir, "records", "*-"+r.rb.name+"-"+runID+".md"))
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

	// Vault gained exactly one master-key version, and it is current (no
	// version left pending).
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
	if cv, pv := md.CustomMetadata[vault.MetaCurrentVersion], md.CustomMetadata[vault.MetaPendingVersion]; cv != "2" || pv != "" {
		t.Errorf("Vault master key: custom metadata current_version %q, pending_version %q; want 2 and none", cv, pv)
	}
	cur, err := vc.ReadCurrent(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	newMaster := cur.Secret("key")
	if cur.Version != 2 || newMaster.IsZero() || newMaster.Equal(lb.MasterKey) {
		t.Errorf("Vault's current master key is version %d, not a new key", cur.Version)
	}

	// Each gateway serves on the master key current in Vault (port 4000
	// answers: no containment left) and refuses the old one; its
	// environment file holds that key; its firewall rules are as before
	// the run (compromise-master's containment lifted, rotate-master's
	// never put up) and none the runner made is left.
	for _, g := range lb.Gateways {
		if st := status(t, g.URL(), newMaster); st != 200 {
			t.Errorf("%s: the master key current in Vault gets %d, want 200", g.Name, st)
		}
		if st := status(t, g.URL(), lb.MasterKey); st != 401 {
			t.Errorf("%s: the old master key gets %d, want 401", g.Name, st)
		}
		if env := gatewayEnv(t, g); env != nil {
			if v, _ := env.Lookup("LITELLM_MASTER_KEY"); !v.Equal(newMaster) {
				t.Errorf("%s: litellm.env's LITELLM_MASTER_KEY is not the key current in Vault", g.Name)
			}
		}
		rules := firewallRules(t, g)
		if rules != r.rulesBefore[g.Name] {
			t.Errorf("%s: firewall rules after the run:\n%s\nbefore:\n%s", g.Name, rules, r.rulesBefore[g.Name])
		}
		if strings.Contains(rules, firewall.CommentPrefix) {
			t.Errorf("%s: a rule of the runner is left:\n%s", g.Name, rules)
		}
	}

	secrets := append([]secret.Value{newMaster}, r.rb.check(r, t)...)
	// No secret in any output, journal, state, record, temporary file,
	// command line or lab log; files holding one are 0600.
	r.watch.finish(t, secrets, outputs, w.dir)
}

// gatewayEnv reads g's /etc/litellm/litellm.env.
func gatewayEnv(t *testing.T, g *lab.Gateway) *litellm.EnvFile {
	t.Helper()
	b, err := os.ReadFile(g.EnvPath())
	if err != nil {
		t.Errorf("%s: %v", g.Name, err)
		return nil
	}
	env, err := litellm.ParseEnvFile(b)
	if err != nil {
		t.Errorf("%s: %v", g.Name, err)
		return nil
	}
	return env
}

// checkVirtualKeysReissued (compromise-master): every virtual key row's
// token hashes a key held in Vault for it, and no old key is accepted by
// any gateway.
func (r *labRun) checkVirtualKeysReissued(t *testing.T) []secret.Value {
	t.Helper()
	ctx := context.Background()
	lb := r.lb
	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	var secrets []secret.Value
	vaultHashes := map[string]string{} // hash of the key in Vault -> its name
	aliasHash := map[string]string{}
	for _, k := range lb.Seed.Keys {
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
	conn := connectDB(t, lb.DatabaseURL)
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
	return secrets
}

// checkRotateMasterKept (rotate-master): the runbook does not touch
// virtual keys (LiteLLM checks them by their SHA-256, which does not
// depend on the master key), so the key table is as before the run, Vault
// holds no virtual key, and every seeded key is accepted by every gateway
// exactly when it is valid. Its first step pinned LITELLM_SALT_KEY to the
// key in use before the rotation on every gateway (the lab's have none),
// so stored credentials stay readable under the new master key.
func (r *labRun) checkRotateMasterKept(t *testing.T) []secret.Value {
	t.Helper()
	ctx := context.Background()
	lb := r.lb
	if after := tableDigest(t, lb, litellm.TableVerificationToken); after != r.keysBefore {
		t.Errorf("the virtual key table changed: %s before, %s after", r.keysBefore, after)
	}
	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := vc.List(ctx, "litellm/virtual-keys"); err == nil && len(keys) > 0 {
		t.Errorf("rotate-master wrote %d virtual keys to Vault", len(keys))
	}
	now := time.Now()
	for _, k := range lb.Seed.Keys {
		want := 401
		if k.Valid(now) {
			want = 200
		}
		for _, g := range lb.Gateways {
			if st := status(t, g.URL(), k.Key); st != want {
				t.Errorf("%s: virtual key %s gets %d, want %d", g.Name, secret.Fingerprint(k.Key.Reveal()), st, want)
			}
		}
	}
	for _, g := range lb.Gateways {
		env := gatewayEnv(t, g)
		if env == nil {
			continue
		}
		want := lb.SaltKey
		if want.IsZero() {
			want = lb.MasterKey
		}
		if v, ok := env.Lookup("LITELLM_SALT_KEY"); !ok || !v.Equal(want) {
			t.Errorf("%s: LITELLM_SALT_KEY is not pinned to the key in use before the rotation (set: %v)", g.Name, ok)
		}
	}
	return nil
}

// crashPoint is one way to kill the runner: an environment variable of the
// crash hook, or (env empty) SIGKILL after a delay.
type crashPoint struct {
	name  string
	env   string
	delay time.Duration
}

// crashAndResume runs the runbook on a fresh lab, has it killed at p,
// resumes it and checks the invariants.
func crashAndResume(t *testing.T, rb matrixRunbook, p crashPoint) {
	r := newMatrixRun(t, rb)
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
		c := r.w.cmd(r.env, "exec", rb.name, "--yes", "--reason", reliabilityReason)
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
	if len(runs) == 0 && killed {
		// Killed before the run's first record: nothing may have changed,
		// since every side effect is journaled first, and there is nothing
		// to resume. The responder runs the runbook again.
		t.Log("killed before the first record: nothing changed, nothing to resume; running it again")
		r.checkUntouched(t)
		out, errOut, code := r.exec()
		outputs["second exec stdout"], outputs["second exec stderr"] = []byte(out), []byte(errOut)
		if code != 0 {
			t.Fatalf("exec after a kill before the first record: exit %d\n%s%s", code, out, errOut)
		}
		if runs = r.w.runs(); len(runs) != 1 {
			t.Fatalf("%d runs after the second exec, want 1", len(runs))
		}
		r.checkInvariants(t, runs[0].RunID, outputs)
		return
	}
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

// matrixFigures are one runbook's results.
type matrixFigures struct {
	records, applies          int
	clean                     time.Duration
	recordPts, applyPts, rand int
	tried, passed             int
	took                      time.Duration
	failed                    []string
}

// TestReliabilityCrashMatrix: compromise-master and rotate-master, each on
// a lab of 3 gateways, are killed with SIGKILL after each journal record in
// turn (the crash hook's RUNBOOK_TEST_CRASH_AFTER), after each Apply
// before its outcome is journaled (RUNBOOK_TEST_CRASH_AFTER_APPLY), and at
// random times, each on a fresh lab; `runbook resume` then completes the
// run and the invariants hold. Every run is watched by the leak scan.
func TestReliabilityCrashMatrix(t *testing.T) {
	mode := reliabilityMode(t)
	figures := map[string]*matrixFigures{}
	for _, rb := range matrixRunbooks {
		f := &matrixFigures{}
		figures[rb.name] = f
		t.Run(rb.name, func(t *testing.T) {
			start := time.Now()
			defer func() { f.took = time.Since(start) }()
			runMatrix(t, mode, rb, f)
		})
	}
	for _, rb := range matrixRunbooks {
		f := figures[rb.name]
		t.Logf("%s: a clean run journals %d records and makes %d applies (%v); crash points tried: %d, passed: %d "+
			"(mode %s; record points %d, apply points %d, random %d, 1 before the first record) in %v",
			rb.name, f.records, f.applies, f.clean.Round(time.Millisecond), f.tried, f.passed, mode,
			f.recordPts, f.applyPts, f.rand, f.took.Round(time.Second))
		if len(f.failed) > 0 {
			t.Logf("%s: failed points: %s", rb.name, strings.Join(f.failed, " "))
		}
	}
	leakSummary(t)
}

func runMatrix(t *testing.T, mode string, rb matrixRunbook, f *matrixFigures) {
	var types []string
	t.Run("clean", func(t *testing.T) {
		r := newMatrixRun(t, rb)
		start := time.Now()
		out, errOut, code := r.exec()
		f.clean = time.Since(start)
		if code != 0 {
			t.Fatalf("clean run: exit %d\n%s%s", code, out, errOut)
		}
		runs := r.w.runs()
		if len(runs) != 1 {
			t.Fatalf("%d runs", len(runs))
		}
		recs := r.w.journal(runs[0].RunID)
		f.records = len(recs)
		for _, rec := range recs {
			types = append(types, fmt.Sprintf("%s %s@%s", rec.Type, rec.Step, rec.Host))
			if rec.Type == journal.TIntent {
				f.applies++
			}
		}
		r.checkInvariants(t, runs[0].RunID, map[string][]byte{"stdout": []byte(out), "stderr": []byte(errOut)})
	})
	if t.Failed() || f.records == 0 {
		t.Fatal("no clean run to count the points from")
	}
	t.Logf("a clean run: %d journal records, %d applies, %v", f.records, f.applies, f.clean.Round(time.Millisecond))

	recordPoints, applyPoints, randomPoints := spread(f.records, f.records), spread(f.applies, f.applies), 5
	if mode == "smoke" {
		recordPoints, applyPoints, randomPoints = spread(f.records, rb.smokeRecords), spread(f.applies, rb.smokeApplies), rb.smokeRandom
	}
	f.recordPts, f.applyPts, f.rand = len(recordPoints), len(applyPoints), randomPoints
	var points []crashPoint
	for _, k := range recordPoints {
		points = append(points, crashPoint{name: fmt.Sprintf("record-%d", k), env: fmt.Sprintf("RUNBOOK_TEST_CRASH_AFTER=%d", k)})
	}
	for _, k := range applyPoints {
		points = append(points, crashPoint{name: fmt.Sprintf("apply-%d", k), env: fmt.Sprintf("RUNBOOK_TEST_CRASH_AFTER_APPLY=%d", k)})
	}
	// A kill before the first record leaves nothing to resume; the
	// random points can land there too, this one always does.
	points = append(points, crashPoint{name: "early", delay: 5 * time.Millisecond})
	for i := 0; i < randomPoints; i++ {
		d := time.Duration(rand.Int64N(int64(f.clean)))
		points = append(points, crashPoint{name: fmt.Sprintf("random-%d", i+1), delay: d})
	}
	for _, p := range points {
		ran := false
		ok := t.Run(p.name, func(t *testing.T) {
			ran = true
			if strings.HasPrefix(p.name, "record-") {
				var k int
				fmt.Sscanf(p.name, "record-%d", &k)
				t.Logf("killed after record %d: %s", k, types[k-1])
			} else if p.env == "" {
				t.Logf("killed after %v", p.delay.Round(time.Millisecond))
			}
			crashAndResume(t, rb, p)
		})
		if !ran {
			continue // filtered out by -run
		}
		f.tried++
		if ok {
			f.passed++
		} else {
			f.failed = append(f.failed, p.name)
		}
	}
}
