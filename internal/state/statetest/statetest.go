// Package statetest is the conformance suite that every state.Store passes.
//
// A store's tests run it with Run, and route their TestMain through Main so
// that the suite can start the test binary again as a second runner that
// takes a lock and is then killed:
//
//	func TestMain(m *testing.M) {
//		statetest.Main(m, func() (state.Store, error) { return Open(os.Getenv("MY_STORE")) })
//	}
//
//	func TestConformance(t *testing.T) {
//		dir := t.TempDir()
//		statetest.Run(t, func(t *testing.T) state.Store { ... Open(dir) ... }, []string{"MY_STORE=" + dir})
//	}
package statetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/state"
)

const (
	envTarget = "RUNBOOK_STATETEST_CHILD_TARGET"
	envRun    = "RUNBOOK_STATETEST_CHILD_RUN"
)

// Main runs the tests, unless this process was started by the suite as a
// child runner: then it opens the store with open, takes the lock the suite
// names, appends the header of the run it names, prints "locked" and waits
// to be killed.
func Main(m *testing.M, open func() (state.Store, error)) {
	target := os.Getenv(envTarget)
	if target == "" {
		os.Exit(m.Run())
	}
	os.Exit(child(open, target, os.Getenv(envRun)))
}

func child(open func() (state.Store, error), target, runID string) int {
	ctx := context.Background()
	s, err := open()
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: open store: %v\n", err)
		return 2
	}
	host, _ := os.Hostname()
	now := time.Now().UTC()
	l, err := s.Lock(ctx, target, state.Holder{RunID: runID, Operator: "child", Hostname: host, PID: os.Getpid(), Since: now})
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: lock: %v\n", err)
		return 2
	}
	hdr := journal.Seal("", journal.FirstSeq, journal.Record{Time: now, Type: journal.THeader, Header: &journal.Header{
		RunID: runID, Runbook: "child", Target: target, Operator: "child", Hostname: host, PID: os.Getpid(), Started: now,
	}})
	if err := s.Append(ctx, runID, hdr); err != nil {
		fmt.Fprintf(os.Stderr, "child: append header: %v\n", err)
		return 2
	}
	fmt.Println("locked")
	// The suite kills this process; if it does not, give up in time.
	time.Sleep(2 * time.Minute)
	_ = l
	return 3
}

// Run runs the conformance suite. open opens a store; stores opened by
// separate calls must share their state, as two runners sharing one state
// directory or database do. childEnv is the environment (NAME=value) with
// which the test binary, its TestMain calling Main, opens a store over the
// same state in a child process.
//
// The suite names its runs and targets uniquely, so the state may be shared
// with other tests.
func Run(t *testing.T, open func(t *testing.T) state.Store, childEnv []string) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, open) })
	t.Run("Chain", func(t *testing.T) { testChain(t, open) })
	t.Run("DuplicateHeader", func(t *testing.T) { testDuplicateHeader(t, open) })
	t.Run("UnknownRun", func(t *testing.T) { testUnknownRun(t, open) })
	t.Run("Runs", func(t *testing.T) { testRuns(t, open) })
	t.Run("ConcurrentRuns", func(t *testing.T) { testConcurrentRuns(t, open) })
	t.Run("NoFork", func(t *testing.T) { testNoFork(t, open) })
	t.Run("LockExclusion", func(t *testing.T) { testLockExclusion(t, open) })
	t.Run("KilledHolder", func(t *testing.T) { testKilledHolder(t, open, childEnv) })
}

var idCounter atomic.Int64

// NewID returns a run id or target no other test uses.
func NewID(prefix string) string {
	return fmt.Sprintf("%s-%d-%d-%d", prefix, time.Now().UnixNano(), os.Getpid(), idCounter.Add(1))
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// Fixture returns records for a run: a header started at started, n step
// records (intent and done, alternating over a few hosts) and, if end is
// not "", an end record with that status. They are sealed as a chain.
func Fixture(runID, target string, started time.Time, n int, end string) []journal.Record {
	var c journal.Chain
	recs := []journal.Record{c.Seal(journal.Record{Time: started, Type: journal.THeader, Header: &journal.Header{
		RunID: runID, Runbook: "rotate", RunbookFile: "runbooks/rotate.yaml", RunbookDigest: "sha256:1",
		InventoryFile: "inventory/staging.yaml", InventoryDigest: "sha256:2", Environment: "staging",
		Target: target, Inputs: map[string]string{"reason": "drill"}, Operator: "alice", Hostname: "ops1",
		PID: 1234, Started: started,
	}})}
	at := started
	for i := range n {
		at = at.Add(time.Second)
		host := fmt.Sprintf("gw%d", i/2%3)
		step := fmt.Sprintf("s%d", i/2)
		if i%2 == 0 {
			recs = append(recs, c.Seal(journal.Record{Time: at, Type: journal.TIntent, Step: step, Host: host, Change: "restart", Attempt: 1}))
		} else {
			recs = append(recs, c.Seal(journal.Record{Time: at, Type: journal.TDone, Step: step, Host: host, Change: "restarted", Attempt: 1, Outputs: map[string]string{"pid": fmt.Sprint(i)}}))
		}
	}
	if end != "" {
		recs = append(recs, c.Seal(journal.Record{Time: at.Add(time.Second), Type: journal.TEnd, End: &journal.End{Status: end}}))
	}
	return recs
}

func appendAll(t testing.TB, s state.Store, runID string, recs []journal.Record) {
	t.Helper()
	for _, r := range recs {
		if err := s.Append(context.Background(), runID, r); err != nil {
			t.Fatalf("append record %d: %v", r.Seq, err)
		}
	}
}

func sameRecords(t *testing.T, got, want []journal.Record) {
	t.Helper()
	g, err := journal.EncodeLines(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := journal.EncodeLines(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g, w) {
		t.Fatalf("journal differs:\ngot:\n%s\nwant:\n%s", g, w)
	}
}

func open2(t *testing.T, open func(t *testing.T) state.Store) state.Store {
	t.Helper()
	s := open(t)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

func testRoundTrip(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	s := open2(t, open)
	id := NewID("roundtrip")
	var c journal.Chain
	began := t0.Add(2 * time.Second)
	recs := []journal.Record{
		c.Seal(journal.Record{Time: t0, Type: journal.THeader, Header: &journal.Header{
			RunID: id, Runbook: "rotate", Target: NewID("t"), Operator: "bob", Hostname: "ops", PID: 7, Started: t0,
			Inputs: map[string]string{"a": "1", "b": ""}, Phases: []journal.Phase{{Name: "contain", Target: "5m0s", Steps: []string{"stop"}}},
			Steps: []journal.StepInfo{{ID: "stop", Kind: "service.stop", Phase: "contain"}},
		}}),
		c.Seal(journal.Record{Time: t0.Add(time.Second), Type: journal.TOK, Step: "stop", Host: "gw1"}),
		c.Seal(journal.Record{Time: t0.Add(2 * time.Second).In(time.FixedZone("CEST", 7200)), Type: journal.TIntent, Step: "drop", Host: "gw1", Change: "add rule", Attempt: 1}),
		// Command output can hold anything: quotes, newlines, NUL, invalid UTF-8.
		c.Seal(journal.Record{Time: t0.Add(3 * time.Second), Type: journal.TFailed, Step: "drop", Host: "gw1", Error: "iptables: \"x\"\n\x00\xff<&>", Attempt: 1, Began: &began}),
		c.Seal(journal.Record{Time: t0.Add(4 * time.Second), Type: journal.TNote, Note: &journal.Note{Kind: "key_fingerprint", Fields: map[string]string{"sha256": "ab", "\x00k": "v\\u0000"}, Text: "ünï"}}),
		c.Seal(journal.Record{Time: t0.Add(5 * time.Second), Type: journal.TEnd, End: &journal.End{Status: journal.StatusFailed, Error: "drop failed"}}),
	}
	appendAll(t, s, id, recs)
	got, err := s.Journal(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	sameRecords(t, got, recs)
	if err := journal.Verify(got); err != nil {
		t.Fatal(err)
	}
	// Another runner sees the same journal.
	got, err = open2(t, open).Journal(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	sameRecords(t, got, recs)
	st, err := journal.Replay(got)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status() != journal.StatusFailed || st.Action("drop", "gw1") != journal.ActionRetry {
		t.Fatalf("replay: status %s, action %s", st.Status(), st.Action("drop", "gw1"))
	}
}

func testChain(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	s := open2(t, open)
	id := NewID("chain")
	recs := Fixture(id, NewID("t"), t0, 4, journal.StatusSucceeded)
	appendAll(t, s, id, recs[:2])

	refuse := func(name string, rec journal.Record) {
		t.Helper()
		if err := s.Append(ctx, id, rec); !errors.Is(err, state.ErrBrokenChain) {
			t.Errorf("%s: err = %v, want ErrBrokenChain", name, err)
		}
	}
	refuse("repeat", recs[1])
	refuse("skip one", recs[3])
	wrongPrev := recs[2]
	wrongPrev = journal.Seal(recs[0].Hash, wrongPrev.Seq, wrongPrev)
	refuse("wrong prev", wrongPrev)
	wrongSeq := journal.Seal(recs[1].Hash, 7, recs[2])
	refuse("wrong seq", wrongSeq)
	edited := recs[2]
	edited.Change = "something else"
	refuse("edited after sealing", edited)
	unsealed := recs[2]
	unsealed.Hash = ""
	refuse("unsealed", unsealed)
	// A second header is refused as such, whatever its chain.
	if err := s.Append(ctx, id, recs[0]); !errors.Is(err, state.ErrRunExists) {
		t.Errorf("header again: err = %v, want ErrRunExists", err)
	}

	appendAll(t, s, id, recs[2:])
	got, err := s.Journal(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	sameRecords(t, got, recs)
}

func testDuplicateHeader(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	s1, s2 := open2(t, open), open2(t, open)
	id := NewID("dup")
	recs := Fixture(id, NewID("t"), t0, 2, "")
	appendAll(t, s1, id, recs)
	other := Fixture(id, NewID("t"), t0.Add(time.Hour), 0, "")[0]
	for name, s := range map[string]state.Store{"same store": s1, "other store": s2} {
		for _, h := range []journal.Record{recs[0], other} {
			if err := s.Append(ctx, id, h); !errors.Is(err, state.ErrRunExists) {
				t.Errorf("%s: err = %v, want ErrRunExists", name, err)
			}
		}
	}
	// A header must name the run it opens.
	wrong := Fixture(NewID("other"), NewID("t"), t0, 0, "")[0]
	if err := s1.Append(ctx, NewID("dup"), wrong); err == nil {
		t.Error("accepted a header naming another run")
	}
	got, err := s2.Journal(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	sameRecords(t, got, recs)
}

func testUnknownRun(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	s := open2(t, open)
	id := NewID("unknown")
	if _, err := s.Journal(ctx, id); !errors.Is(err, state.ErrNoRun) {
		t.Errorf("Journal: err = %v, want ErrNoRun", err)
	}
	recs := Fixture(id, NewID("t"), t0, 2, "")
	if err := s.Append(ctx, id, recs[1]); !errors.Is(err, state.ErrNoRun) {
		t.Errorf("Append without header: err = %v, want ErrNoRun", err)
	}
	if _, err := s.Journal(ctx, id); !errors.Is(err, state.ErrNoRun) {
		t.Errorf("Journal after a refused append: err = %v, want ErrNoRun", err)
	}
	runs, err := s.Runs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.RunID == id {
			t.Errorf("Runs lists the unknown run")
		}
	}
}

func testRuns(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	s1, s2 := open2(t, open), open2(t, open)
	prefix := NewID("runs")
	base := time.Now().UTC().Truncate(time.Second).Add(24 * time.Hour)
	type run struct {
		id, target string
		recs       []journal.Record
	}
	mk := func(i, n int, end string) run {
		id, target := fmt.Sprintf("%s-%d", prefix, i), NewID("t")
		return run{id, target, Fixture(id, target, base.Add(time.Duration(i)*time.Minute), n, end)}
	}
	succeeded, failed, running, interrupted := mk(0, 3, journal.StatusSucceeded), mk(1, 1, journal.StatusFailed), mk(2, 2, ""), mk(3, 4, "")
	for _, r := range []run{interrupted, failed, succeeded, running} {
		appendAll(t, s1, r.id, r.recs)
	}
	// The running run's lock is held, by a holder naming it.
	l, err := s2.Lock(ctx, running.target, state.Holder{RunID: running.id, Operator: "alice", Hostname: "ops1", PID: os.Getpid(), Since: base})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(ctx) //nolint:errcheck
	// The interrupted run's lock is held too, but for another run.
	l2, err := s2.Lock(ctx, interrupted.target, state.Holder{RunID: NewID("other"), PID: os.Getpid(), Since: base})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release(ctx) //nolint:errcheck

	for name, s := range map[string]state.Store{"writer": s1, "other runner": s2} {
		all, err := s.Runs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []state.RunSummary
		for _, r := range all {
			if strings.HasPrefix(r.RunID, prefix+"-") {
				got = append(got, r)
			}
		}
		want := []struct {
			r      run
			status string
		}{{interrupted, journal.StatusInterrupted}, {running, journal.StatusRunning}, {failed, journal.StatusFailed}, {succeeded, journal.StatusSucceeded}}
		if len(got) != len(want) {
			t.Fatalf("%s: %d runs listed, want %d: %+v", name, len(got), len(want), got)
		}
		for i, w := range want {
			g := got[i]
			last := w.r.recs[len(w.r.recs)-1]
			if g.RunID != w.r.id || g.Status != w.status || g.Records != len(w.r.recs) ||
				!g.Started.Equal(w.r.recs[0].Header.Started) || !g.Updated.Equal(last.Time) ||
				g.Runbook != "rotate" || g.Environment != "staging" || g.Operator != "alice" {
				t.Errorf("%s: run %d = %+v, want %s with status %s, %d records, updated %s", name, i, g, w.r.id, w.status, len(w.r.recs), last.Time)
			}
		}
	}
	// Once its lock is released, the run without an end is interrupted.
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	all, err := s1.Runs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r.RunID == running.id && r.Status != journal.StatusInterrupted {
			t.Errorf("after release: status %s, want interrupted", r.Status)
		}
	}
}

func testConcurrentRuns(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	stores := []state.Store{open2(t, open), open2(t, open)}
	const runs, n = 6, 20
	ids := make([]string, runs)
	fixtures := make([][]journal.Record, runs)
	for i := range ids {
		ids[i] = NewID("conc")
		fixtures[i] = Fixture(ids[i], NewID("t"), t0, n, journal.StatusSucceeded)
	}
	var wg sync.WaitGroup
	errs := make(chan error, runs)
	for i := range ids {
		wg.Go(func() {
			s := stores[i%len(stores)]
			for _, r := range fixtures[i] {
				if err := s.Append(ctx, ids[i], r); err != nil {
					errs <- fmt.Errorf("run %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, id := range ids {
		got, err := stores[(i+1)%len(stores)].Journal(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		sameRecords(t, got, fixtures[i])
	}
}

// testNoFork has two runners race to append different records after the
// same one: exactly one wins each time, and the loser, having read the
// journal again, continues it.
func testNoFork(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	a, b := open2(t, open), open2(t, open)
	id := NewID("fork")
	recs := Fixture(id, NewID("t"), t0, 0, "")
	appendAll(t, a, id, recs)
	c := journal.Chain{Last: recs[0].Hash, Seq: recs[0].Seq}
	for round := range 10 {
		base := c
		ca, cb := base, base
		ra := ca.Seal(journal.Record{Time: t0, Type: journal.TNote, Note: &journal.Note{Kind: "a", Text: fmt.Sprint(round)}})
		rb := cb.Seal(journal.Record{Time: t0, Type: journal.TNote, Note: &journal.Note{Kind: "b", Text: fmt.Sprint(round)}})
		var ea, eb error
		var wg sync.WaitGroup
		wg.Go(func() { ea = a.Append(ctx, id, ra) })
		wg.Go(func() { eb = b.Append(ctx, id, rb) })
		wg.Wait()
		switch {
		case ea == nil && eb == nil:
			t.Fatalf("round %d: both appends succeeded: the journal forked", round)
		case ea != nil && eb != nil:
			t.Fatalf("round %d: both failed: %v; %v", round, ea, eb)
		case ea == nil:
			if !errors.Is(eb, state.ErrBrokenChain) {
				t.Fatalf("round %d: loser's error %v, want ErrBrokenChain", round, eb)
			}
			c = ca
		default:
			if !errors.Is(ea, state.ErrBrokenChain) {
				t.Fatalf("round %d: loser's error %v, want ErrBrokenChain", round, ea)
			}
			c = cb
		}
		// Each runner continues from what it reads, alternately.
		w := []state.Store{a, b}[round%2]
		got, err := w.Journal(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		st, err := journal.Replay(got)
		if err != nil {
			t.Fatal(err)
		}
		if st.LastHash() != c.Last {
			t.Fatalf("round %d: journal ends with another record than the winner's", round)
		}
		next := st.Chain().Seal(journal.Record{Time: t0, Type: journal.TNote, Note: &journal.Note{Kind: "next"}})
		if err := w.Append(ctx, id, next); err != nil {
			t.Fatalf("round %d: continue: %v", round, err)
		}
		c = journal.Chain{Last: next.Hash, Seq: next.Seq}
	}
	got, err := a.Journal(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := journal.Verify(got); err != nil || len(got) != 21 {
		t.Fatalf("final journal: %d records, %v", len(got), err)
	}
}

func testLockExclusion(t *testing.T, open func(t *testing.T) state.Store) {
	ctx := context.Background()
	s1, s2 := open2(t, open), open2(t, open)
	target := NewID("prod/gateways")
	since := time.Now().UTC().Truncate(time.Millisecond)
	h1 := state.Holder{RunID: NewID("run"), Operator: "alice", Hostname: "ops1", PID: 101, Since: since}
	h2 := state.Holder{RunID: NewID("run"), Operator: "bob", Hostname: "ops2", PID: 202, Since: since}
	l1, err := s1.Lock(ctx, target, h1)
	if err != nil {
		t.Fatal(err)
	}
	if l1.TookOver() != nil {
		t.Errorf("fresh lock took over from %v", l1.TookOver())
	}
	for name, s := range map[string]state.Store{"other runner": s2, "same store": s1} {
		_, err := s.Lock(ctx, target, h2)
		var held *state.LockHeldError
		if !errors.As(err, &held) {
			t.Fatalf("%s: err = %v, want *LockHeldError", name, err)
		}
		if held.Target != target || !sameHolder(held.Holder, h1) {
			t.Errorf("%s: held by %v, want %v", name, held.Holder, h1)
		}
		if !strings.Contains(err.Error(), "alice") || !strings.Contains(err.Error(), h1.RunID) {
			t.Errorf("%s: error %q does not say who holds the lock", name, err)
		}
	}
	// Another target is free.
	other, err := s2.Lock(ctx, target+"/other", h2)
	if err != nil {
		t.Fatalf("other target: %v", err)
	}
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}

	if err := l1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l1.Release(ctx); err != nil {
		t.Fatalf("second release: %v", err)
	}
	l2, err := s2.Lock(ctx, target, h2)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	if l2.TookOver() != nil {
		t.Errorf("lock released cleanly, yet taken over from %v", l2.TookOver())
	}
	_, err = s1.Lock(ctx, target, h1)
	var held *state.LockHeldError
	if !errors.As(err, &held) || !sameHolder(held.Holder, h2) {
		t.Errorf("re-taken lock: err = %v, want held by %v", err, h2)
	}
	if err := l2.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func sameHolder(a, b state.Holder) bool {
	return a.RunID == b.RunID && a.Operator == b.Operator && a.Hostname == b.Hostname && a.PID == b.PID && a.Since.Equal(b.Since)
}

// testKilledHolder starts the test binary as a second runner that takes a
// lock and opens a run, kills it with SIGKILL, and takes the lock over.
func testKilledHolder(t *testing.T, open func(t *testing.T) state.Store, childEnv []string) {
	ctx := context.Background()
	s := open2(t, open)
	target, runID := NewID("killed"), NewID("childrun")

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv...), envTarget+"="+target, envRun+"="+runID)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill() //nolint:errcheck
			cmd.Wait()         //nolint:errcheck
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case line, ok := <-lines:
		if !ok || line != "locked" {
			cmd.Process.Kill() //nolint:errcheck
			cmd.Wait()         //nolint:errcheck
			killed = true
			t.Fatalf("child did not lock (does TestMain call statetest.Main?): %q; stderr: %s", line, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("child did not lock within 30s; stderr: %s", stderr.String())
	}
	pid := cmd.Process.Pid

	_, err = s.Lock(ctx, target, state.Holder{RunID: NewID("run"), PID: os.Getpid()})
	var held *state.LockHeldError
	if !errors.As(err, &held) || held.Holder.PID != pid || held.Holder.RunID != runID {
		t.Fatalf("while the child lives: err = %v, want held by pid %d", err, pid)
	}
	if st := runStatus(t, s, runID); st != journal.StatusRunning {
		t.Errorf("while the child lives, its run is %q, want running", st)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() //nolint:errcheck
	killed = true

	// The lock is free once the store notices the holder is gone: at once
	// for a file lock, when the server ends the session for a database.
	me := state.Holder{RunID: NewID("run"), Operator: "taker", Hostname: "ops", PID: os.Getpid(), Since: time.Now().UTC()}
	var l state.Lock
	deadline := time.Now().Add(20 * time.Second)
	for {
		l, err = s.Lock(ctx, target, me)
		if !errors.As(err, &held) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after the holder was killed: %v", err)
	}
	defer l.Release(ctx) //nolint:errcheck
	prev := l.TookOver()
	if prev == nil || prev.PID != pid || prev.RunID != runID || prev.Operator != "child" {
		t.Fatalf("TookOver = %v, want the killed child (pid %d, run %s)", prev, pid, runID)
	}
	if st := runStatus(t, s, runID); st != journal.StatusInterrupted {
		t.Errorf("after the child died, its run is %q, want interrupted", st)
	}
}

func runStatus(t *testing.T, s state.Store, runID string) string {
	t.Helper()
	runs, err := s.Runs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.RunID == runID {
			return r.Status
		}
	}
	t.Fatalf("run %s not listed", runID)
	return ""
}

// BenchAppend measures Append: b.N records, one after another, to one run
// (each durable before the next, as the engine writes them).
func BenchAppend(b *testing.B, s state.Store) {
	ctx := context.Background()
	id := NewID("bench")
	target := NewID("t")
	recs := Fixture(id, target, t0, 0, "")
	appendAll(b, s, id, recs)
	c := journal.Chain{Last: recs[0].Hash, Seq: recs[0].Seq}
	b.ResetTimer()
	for i := range b.N {
		rec := c.Seal(journal.Record{Time: t0, Type: journal.TDone, Step: "restart", Host: fmt.Sprintf("gw%d", i%8), Change: "restarted litellm", Attempt: 1, Outputs: map[string]string{"pid": fmt.Sprint(i)}})
		if err := s.Append(ctx, id, rec); err != nil {
			b.Fatal(err)
		}
	}
}
