package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/state"
)

// The reliability suite's concurrency test (internal/reliability/
// RELIABILITY.md, section 3): several runners of compromise-master, then
// several `runbook resume` of the run, race for the lock on the lab's
// environment, with the state store in a database of the lab's own
// PostgreSQL cluster. Exactly one of each race proceeds; the others are
// refused with the holder named; killing the holder frees the lock at
// once; the resumed run completes with the crash matrix's invariants.

const concurrencyReason = "reliability: concurrency"

// concurrencyWait bounds each wait on a runner or a server: generous,
// since other tests load the machine.
const concurrencyWait = 4 * time.Minute

// concurrencyTarget is the lock target of the lab's inventory.
const concurrencyTarget = "env:lab"

// pgStateURL creates the database runbook_state in the lab's PostgreSQL
// cluster and returns its URL, for RUNBOOK_STATE.
func pgStateURL(t *testing.T, lb *lab.Lab) string {
	t.Helper()
	ctx := context.Background()
	conn := connectDB(t, lb.DatabaseURL)
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE DATABASE runbook_state`); err != nil {
		t.Fatalf("create the state database: %v", err)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/runbook_state?sslmode=disable", lb.Postgres.Port)
}

// racer is one runner of a race: a shell that waits at a gate (a line on
// its stdin), then execs the runner, which keeps the shell's pid.
type racer struct {
	cmd       *exec.Cmd
	gate      *os.File
	out, errb bytes.Buffer
	done      chan struct{}
	code      int
	end       time.Time
}

func (x *racer) exited() bool {
	select {
	case <-x.done:
		return true
	default:
		return false
	}
}

// startRacers starts n runners of `runbook args...`, each held at its gate
// once it is ready, and returns when all of them wait there.
func startRacers(t *testing.T, r *labRun, n int, args ...string) []*racer {
	t.Helper()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	var rs []*racer
	for i := 0; i < n; i++ {
		gr, gw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		x := &racer{gate: gw, done: make(chan struct{})}
		x.cmd = r.w.cmd(r.env, args...)
		x.cmd.Path = "/bin/sh"
		x.cmd.Args = append([]string{"sh", "-c", `printf x >&3 && exec 3>&- && read -r line && exec "$0" "$@"`, r.w.bin}, args...)
		x.cmd.Stdin = gr
		x.cmd.ExtraFiles = []*os.File{readyW}
		x.cmd.Stdout, x.cmd.Stderr = &x.out, &x.errb
		if err := x.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		gr.Close()
		go func() {
			err := x.cmd.Wait()
			x.end = time.Now()
			x.code = processExit(err)
			close(x.done)
		}()
		t.Cleanup(func() {
			x.gate.Close()
			if !x.exited() {
				_ = x.cmd.Process.Kill()
				<-x.done
			}
		})
		rs = append(rs, x)
	}
	readyW.Close()
	_ = readyR.SetReadDeadline(time.Now().Add(concurrencyWait))
	buf := make([]byte, n)
	got := 0
	for got < n {
		k, err := readyR.Read(buf[got:])
		got += k
		if err != nil {
			t.Fatalf("%d of %d runners ready at the gate: %v", got, n, err)
		}
	}
	return rs
}

// releaseRacers opens every gate, one write after the other, and returns
// when it opened them and how long the writes took.
func releaseRacers(t *testing.T, rs []*racer) (time.Time, time.Duration) {
	t.Helper()
	start := time.Now()
	for _, x := range rs {
		if _, err := x.gate.Write([]byte("go\n")); err != nil {
			t.Fatal(err)
		}
	}
	spread := time.Since(start)
	for _, x := range rs {
		x.gate.Close()
	}
	return start, spread
}

// raceOutcome waits until all runners but one have ended and returns the
// one still running (the winner) and the others; it fails when none runs
// on, or more than one still runs after concurrencyWait.
func raceOutcome(t *testing.T, rs []*racer, what string) (*racer, []*racer) {
	t.Helper()
	deadline := time.Now().Add(concurrencyWait)
	for {
		var running, ended []*racer
		for _, x := range rs {
			if x.exited() {
				ended = append(ended, x)
			} else {
				running = append(running, x)
			}
		}
		if len(running) == 1 {
			return running[0], ended
		}
		if len(running) == 0 {
			t.Fatalf("%s: every runner ended, none proceeds:\n%s", what, racerOutputs(rs))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d runners still run after %v, want exactly one:\n%s", what, len(running), concurrencyWait, racerOutputs(rs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func racerOutputs(rs []*racer) string {
	var b strings.Builder
	for i, x := range rs {
		state := "running"
		if x.exited() {
			state = fmt.Sprintf("exit %d", x.code)
		}
		fmt.Fprintf(&b, "--- runner %d (pid %d, %s)\n%s%s", i+1, x.cmd.Process.Pid, state, x.out.String(), x.errb.String())
	}
	return b.String()
}

// checkRefused checks that each loser exited with ExitLockHeld and that
// its error names the target, the holder's run id, operator and pid. It
// returns the longest time a loser took from the release to its exit.
func checkRefused(t *testing.T, losers []*racer, released time.Time, runID string, holderPID int) time.Duration {
	t.Helper()
	var slowest time.Duration
	for _, x := range losers {
		if x.code != ExitLockHeld {
			t.Errorf("runner pid %d: exit %d, want %d (lock held)\n%s%s", x.cmd.Process.Pid, x.code, ExitLockHeld, x.out.String(), x.errb.String())
			continue
		}
		for _, want := range []string{"runbook: error: target " + concurrencyTarget + " is locked by run " + runID, "by tester on", fmt.Sprintf("(pid %d)", holderPID)} {
			if !strings.Contains(x.errb.String(), want) {
				t.Errorf("runner pid %d: the lock-held error does not say %q:\n%s", x.cmd.Process.Pid, want, x.errb.String())
			}
		}
		if out := strings.TrimSpace(x.out.String()); out != "" {
			t.Errorf("runner pid %d was refused but printed on stdout:\n%s", x.cmd.Process.Pid, out)
		}
		if d := x.end.Sub(released); d > slowest {
			slowest = d
		}
	}
	if len(losers) > 0 {
		t.Logf("a refused runner printed:\n%s", losers[0].errb.String())
	}
	return slowest
}

// holderRow reads the state store's holder row of the lab's target.
func holderRow(t *testing.T, stateURL string) (runID string, h state.Holder, lockKey int64, backendPID int32) {
	t.Helper()
	ctx := context.Background()
	conn := connectDB(t, stateURL)
	defer conn.Close(ctx)
	var b []byte
	if err := conn.QueryRow(ctx, `SELECT run_id, holder, lock_key, backend_pid FROM runbook.lock_holders WHERE target = $1`,
		concurrencyTarget).Scan(&runID, &b, &lockKey, &backendPID); err != nil {
		t.Fatalf("read the holder of %s: %v", concurrencyTarget, err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return runID, h, lockKey, backendPID
}

// advisoryHeld reports whether any session holds the advisory lock key in
// the state database, as pg_locks shows it.
func advisoryHeld(ctx context.Context, conn *pgx.Conn, key int64) (bool, error) {
	var n int
	err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid::bigint = (($1::bigint >> 32) & 4294967295) AND objid::bigint = ($1::bigint & 4294967295)`, key).Scan(&n)
	return n > 0, err
}

// killAndWaitLockFree checks that a session holds the advisory lock key,
// kills its holder (kill), then waits until no session holds the lock and
// a new session can take it (it lets it go at once); it returns how long
// that took from the kill.
func killAndWaitLockFree(t *testing.T, stateURL string, key int64, kill func()) time.Duration {
	t.Helper()
	ctx := context.Background()
	conn := connectDB(t, stateURL)
	defer conn.Close(ctx)
	if held, err := advisoryHeld(ctx, conn, key); err != nil || !held {
		t.Fatalf("the advisory lock of %s is not held before the kill (%v)", concurrencyTarget, err)
	}
	start := time.Now()
	kill()
	for {
		held, err := advisoryHeld(ctx, conn, key)
		if err != nil {
			t.Fatal(err)
		}
		if !held {
			var got bool
			if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got {
				took := time.Since(start)
				if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, key); err != nil {
					t.Fatal(err)
				}
				return took
			}
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the advisory lock of %s is still held %v after its holder was killed", concurrencyTarget, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(time.Millisecond)
	}
}

// pendingSteps lists the steps whose last record is an intent (their
// side effect under way), as step@host.
func pendingSteps(recs []journal.Record) []string {
	last := map[string]journal.Type{}
	for _, rec := range recs {
		if rec.Step == "" {
			continue
		}
		switch rec.Type {
		case journal.TIntent, journal.TDone, journal.TFailed, journal.TOK, journal.TSkipped:
			last[rec.Step+"@"+rec.Host] = rec.Type
		}
	}
	var out []string
	for k, typ := range last {
		if typ == journal.TIntent {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// checkBlockedInRotation checks that the run's only side effect under way
// is the re-encryption or the re-issue (the steps that write the virtual
// key table).
func checkBlockedInRotation(t *testing.T, w *workdir, runID string) {
	t.Helper()
	p := pendingSteps(w.journal(runID))
	if len(p) != 1 || (!strings.HasPrefix(p[0], "reencrypt@") && !strings.HasPrefix(p[0], "reissue@")) {
		t.Fatalf("steps under way: %v, want the re-encryption or the re-issue alone", p)
	}
	t.Logf("the holder waits on the test's table lock inside step %s", p[0])
}

// runStatuses reads `runbook runs -o json`.
func runStatuses(t *testing.T, r *labRun) []state.RunSummary {
	t.Helper()
	out, errOut, code := r.w.run(r.env, "runs", "-o", "json")
	if code != 0 {
		t.Fatalf("runs -o json: exit %d\n%s", code, errOut)
	}
	var runs []state.RunSummary
	if err := json.Unmarshal([]byte(out), &runs); err != nil {
		t.Fatalf("runs -o json: %v\n%s", err, out)
	}
	return runs
}

func checkOneRun(t *testing.T, r *labRun, runID, status string) {
	t.Helper()
	runs := runStatuses(t, r)
	if len(runs) != 1 || runs[0].RunID != runID || runs[0].Status != status {
		t.Fatalf("runs: %+v, want run %s alone, %s", runs, runID, status)
	}
}

// ruleRunID finds the run id in a comment of the runner's firewall rules
// (runbook:RUN:TAG, see internal/step/firewall).
var ruleRunID = regexp.MustCompile(`runbook:([^:\s"]+):`)

// checkRulesOf checks that every gateway is contained by run runID and
// that no firewall rule carries another run's id.
func checkRulesOf(t *testing.T, r *labRun, runID string) {
	t.Helper()
	for _, g := range r.lb.Gateways {
		rules := firewallRules(t, g)
		found := false
		for _, m := range ruleRunID.FindAllStringSubmatch(rules, -1) {
			if m[1] != runID {
				t.Errorf("%s: a firewall rule of run %s, not of the holder %s:\n%s", g.Name, m[1], runID, rules)
			}
			found = true
		}
		if !found {
			t.Errorf("%s: no containment rule of run %s:\n%s", g.Name, runID, rules)
		}
	}
}

// concurrencyFigures are one round's results.
type concurrencyFigures struct {
	runners                    int
	execRefused, resumeRefused int
	execSpread, resumeSpread   time.Duration
	execSlowest, resumeSlowest time.Duration
	freed                      time.Duration
	took                       time.Duration
}

// TestReliabilityConcurrency: on a fresh lab of 3 gateways, with the state
// store in the database runbook_state of the lab's PostgreSQL cluster:
//  1. the test locks the virtual key table (LOCK TABLE ... IN EXCLUSIVE
//     MODE), so a runner that got through containment waits inside the
//     re-encryption (its SELECT ... FOR UPDATE), holding the run lock;
//  2. n runners of `exec compromise-master` race for the lock. Each is held
//     by a shell at a read of its stdin; the test opens the gates with n
//     writes a few microseconds apart (measured), then each shell execs
//     the runner, which loads the runbook and inventory and connects to
//     the state store before pg_try_advisory_lock: the runners reach the
//     lock within their start-up's jitter of each other (milliseconds on
//     2 shared cores), so that is where they race. Exactly one proceeds;
//     the others exit with ExitLockHeld naming the target and the holder's
//     run id, operator and pid; one run is in the store; no firewall rule
//     carries another run's id; the holder waits behind the table lock;
//  3. the holder is killed with SIGKILL there: its advisory lock is free at
//     once (pg_locks, and a new session takes it) and `runbook runs` says
//     interrupted;
//  4. with the table still locked, n `runbook resume RUN_ID` race the same
//     way: one takes the lock over (and says so), the others are refused
//     naming it; once the table lock goes, the winner completes and the
//     crash matrix's invariants hold, leak scan included.
//
// Smoke mode: one round of 4 runners; full mode: 3 rounds of 6 runners,
// each on a fresh lab.
func TestReliabilityConcurrency(t *testing.T) {
	mode := reliabilityMode(t)
	rounds, runners := 1, 4
	if mode == "full" {
		rounds, runners = 3, 6
	}
	var figs []*concurrencyFigures
	for i := 1; i <= rounds; i++ {
		f := &concurrencyFigures{runners: runners}
		figs = append(figs, f)
		t.Run(fmt.Sprintf("round-%d", i), func(t *testing.T) {
			start := time.Now()
			defer func() { f.took = time.Since(start) }()
			concurrencyRound(t, runners, f)
		})
	}
	for i, f := range figs {
		t.Logf("round %d: exec: %d runners, %d refused (gates opened within %v, last refusal %v after); "+
			"holder killed, lock free after %v; resume: %d runners, %d refused (gates within %v, last refusal %v after); round %v",
			i+1, f.runners, f.execRefused, f.execSpread, f.execSlowest.Round(time.Millisecond), f.freed.Round(time.Millisecond),
			f.runners, f.resumeRefused, f.resumeSpread, f.resumeSlowest.Round(time.Millisecond), f.took.Round(time.Second))
	}
	leakSummary(t)
}

func concurrencyRound(t *testing.T, n int, f *concurrencyFigures) {
	r := newMatrixRunState(t, matrixRunbooks[0], pgStateURL)
	stateURL := r.w.state
	outputs := map[string][]byte{}
	keep := func(what string, rs []*racer) {
		for i, x := range rs {
			outputs[fmt.Sprintf("%s %d stdout", what, i+1)] = x.out.Bytes()
			outputs[fmt.Sprintf("%s %d stderr", what, i+1)] = x.errb.Bytes()
		}
	}

	// 1. The virtual key table locked: the holder will wait inside the
	// rotation, with the run lock.
	l := lockTables(t, r.lb, litellm.TableVerificationToken)

	// 2. n runners of exec at once.
	rs := startRacers(t, r, n, "exec", r.rb.name, "--yes", "--reason", concurrencyReason)
	released, spread := releaseRacers(t, rs)
	f.execSpread = spread.Round(time.Microsecond)
	winner, losers := raceOutcome(t, rs, "exec")
	runs := r.w.runs()
	if len(runs) != 1 {
		t.Fatalf("%d runs in the state store after %d runners raced, want 1:\n%s", len(runs), n, racerOutputs(rs))
	}
	id := runs[0].RunID
	hid, h, key, _ := holderRow(t, stateURL)
	if hid != id || h.PID != winner.cmd.Process.Pid || h.RunID != id {
		t.Fatalf("the lock's holder is run %s pid %d, want run %s pid %d (the runner still running)", hid, h.PID, id, winner.cmd.Process.Pid)
	}
	f.execSlowest = checkRefused(t, losers, released, id, winner.cmd.Process.Pid)
	f.execRefused = len(losers)
	t.Logf("exec: %d runners released within %v; run %s (pid %d) proceeds; %d refused, the last %v after the release",
		n, f.execSpread, id, winner.cmd.Process.Pid, len(losers), f.execSlowest.Round(time.Millisecond))
	q := l.waitBlocked(t, 1, "the holder")
	t.Logf("the holder waits behind the table lock in: %s", q)
	checkBlockedInRotation(t, r.w, id)
	checkOneRun(t, r, id, journal.StatusRunning)
	checkRulesOf(t, r, id)
	if winner.exited() {
		t.Fatalf("the holder ended while blocked (exit %d)\n%s%s", winner.code, winner.out.String(), winner.errb.String())
	}

	// 3. SIGKILL the holder while it waits.
	f.freed = killAndWaitLockFree(t, stateURL, key, func() {
		if err := winner.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	})
	<-winner.done
	t.Logf("holder killed: its advisory lock free after %v", f.freed.Round(time.Millisecond))
	checkOneRun(t, r, id, journal.StatusInterrupted)
	keep("exec", rs)
	// The killed runner's database session still waits behind the table
	// lock: PostgreSQL notices a dead client only when it next talks to
	// it. It rolls back once the lock goes.
	orphans, _ := l.blocked(t)

	// 4. With the table still locked, n resumes at once.
	rs = startRacers(t, r, n, "resume", id)
	released, spread = releaseRacers(t, rs)
	f.resumeSpread = spread.Round(time.Microsecond)
	winner, losers = raceOutcome(t, rs, "resume")
	hid, h, _, _ = holderRow(t, stateURL)
	if hid != id || h.PID != winner.cmd.Process.Pid {
		t.Fatalf("the lock's holder is run %s pid %d, want run %s pid %d (the resume still running)", hid, h.PID, id, winner.cmd.Process.Pid)
	}
	f.resumeSlowest = checkRefused(t, losers, released, id, winner.cmd.Process.Pid)
	f.resumeRefused = len(losers)
	t.Logf("resume: %d runners released within %v; pid %d proceeds; %d refused, the last %v after the release",
		n, f.resumeSpread, winner.cmd.Process.Pid, len(losers), f.resumeSlowest.Round(time.Millisecond))
	l.waitBlocked(t, orphans+1, "the resumed holder")
	checkOneRun(t, r, id, journal.StatusRunning)
	checkRulesOf(t, r, id)

	l.release(t)
	unlocked := time.Now()
	select {
	case <-winner.done:
	case <-time.After(2 * concurrencyWait):
		t.Fatalf("the resumed run did not end within %v\n%s%s", 2*concurrencyWait, winner.out.String(), winner.errb.String())
	}
	keep("resume", rs)
	if winner.code != 0 {
		t.Fatalf("resume: exit %d\n%s%s", winner.code, winner.out.String(), winner.errb.String())
	}
	if want := "took over the lock on " + concurrencyTarget + " from run " + id; !strings.Contains(winner.out.String(), want) {
		t.Errorf("the resume does not say %q:\n%s", want, winner.out.String())
	}
	t.Logf("resume: exit 0 %v after the release of the table lock", winner.end.Sub(unlocked).Round(time.Millisecond))
	checkOneRun(t, r, id, journal.StatusSucceeded)
	// The journal lives in the state database, not in the workdir: give
	// it to the leak scan as an output.
	if b, err := json.Marshal(r.w.journal(id)); err == nil {
		outputs["state store journal"] = b
	} else {
		t.Fatal(err)
	}
	r.checkInvariants(t, id, outputs)
}
