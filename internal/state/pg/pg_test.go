package pg

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/state"
	"github.com/runbook-dev/runbook/internal/state/statetest"
)

const envURL = "RUNBOOK_PG_TEST_URL"

func TestMain(m *testing.M) {
	statetest.Main(m, func() (state.Store, error) {
		return Open(context.Background(), os.Getenv(envURL))
	})
}

func openURL(url string) func(t *testing.T) state.Store {
	return func(t *testing.T) state.Store {
		s, err := Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func mustOpen(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// TestPostgres starts one PostgreSQL cluster for the package's tests.
func TestPostgres(t *testing.T) {
	pg := labtest.Postgres(t)
	ctx := context.Background()
	url := pg.URL("postgres")

	t.Run("Conformance", func(t *testing.T) {
		statetest.Run(t, openURL(url), []string{envURL + "=" + url})
	})

	t.Run("SchemaIdempotent", func(t *testing.T) {
		if err := pg.CreateDatabase(ctx, "schema"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() {
				s, err := Open(ctx, pg.URL("schema"))
				if err == nil {
					s.Close()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("concurrent Open: %v", err)
			}
		}
		s := mustOpen(t, pg.URL("schema"))
		var n int
		if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'runbook'`).Scan(&n); err != nil || n != 3 {
			t.Fatalf("tables in schema runbook: %d, %v", n, err)
		}
	})

	t.Run("Queryable", func(t *testing.T) {
		s := mustOpen(t, url)
		id := statetest.NewID("query")
		var c journal.Chain
		recs := []journal.Record{
			c.Seal(statetest.Fixture(id, "t", t0, 0, "")[0]),
			c.Seal(journal.Record{Time: t0, Type: journal.TFailed, Step: "s", Error: "out: \x00 and \\u0000"}),
		}
		for _, r := range recs {
			if err := s.Append(ctx, id, r); err != nil {
				t.Fatal(err)
			}
		}
		var typ, errText string
		err := s.Pool().QueryRow(ctx, `SELECT record->>'type', record->>'error' FROM runbook.journal WHERE run_id = $1 AND seq = 2`, id).Scan(&typ, &errText)
		if err != nil || typ != "failed" || errText != "out: \ufffd and \\u0000" {
			t.Fatalf("jsonb: %q %q %v", typ, errText, err)
		}
		got, err := s.Journal(ctx, id)
		if err != nil || got[1].Error != "out: \x00 and \\u0000" {
			t.Fatalf("journal keeps the exact record: %q %v", got[1].Error, err)
		}
	})

	// Even a writer that skips the run-row lock cannot fork a journal: the
	// unique key on (run_id, prev) stops it.
	t.Run("UniquePrev", func(t *testing.T) {
		s := mustOpen(t, url)
		id := statetest.NewID("uniq")
		recs := statetest.Fixture(id, "t", t0, 1, "")
		for _, r := range recs {
			if err := s.Append(ctx, id, r); err != nil {
				t.Fatal(err)
			}
		}
		_, err := s.Pool().Exec(ctx, `INSERT INTO runbook.journal (run_id, seq, hash, prev, line, record) VALUES ($1, 3, 'x', $2, '{}', '{}')`, id, recs[0].Hash)
		if err == nil {
			t.Fatal("a second record after the header was stored")
		}
	})

	// A holder whose session the server ends (an administrator's
	// pg_terminate_backend, or a client that vanished) loses the lock, and
	// the next runner takes it over.
	t.Run("TerminatedSession", func(t *testing.T) {
		s1, s2 := mustOpen(t, url), mustOpen(t, url)
		target := statetest.NewID("term")
		h1 := state.Holder{RunID: statetest.NewID("r"), Operator: "alice", PID: 1, Since: t0}
		l1, err := s1.Lock(ctx, target, h1)
		if err != nil {
			t.Fatal(err)
		}
		pid := l1.(*advisoryLock).conn.PgConn().PID()
		if _, err := s2.Pool().Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
			t.Fatal(err)
		}
		var l2 state.Lock
		var held *state.LockHeldError
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			l2, err = s2.Lock(ctx, target, state.Holder{RunID: statetest.NewID("r"), Operator: "bob"})
			if !errors.As(err, &held) || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		if prev := l2.TookOver(); prev == nil || prev.RunID != h1.RunID {
			t.Fatalf("TookOver = %v, want %v", prev, h1)
		}
		if err := l1.Release(ctx); err == nil {
			t.Log("release of a terminated session's lock reported no error")
		}
		if err := l2.Release(ctx); err != nil {
			t.Fatal(err)
		}
		var n int
		if err := s2.Pool().QueryRow(ctx, `SELECT count(*) FROM runbook.lock_holders WHERE target = $1`, target).Scan(&n); err != nil || n != 0 {
			t.Fatalf("holder rows after release: %d %v", n, err)
		}
	})

	t.Run("NoPasswordInErrors", func(t *testing.T) {
		_, err := Open(ctx, "postgres://runbook:hunter2-secret@127.0.0.1:1/x?sslmode=disable&connect_timeout=2")
		if err == nil {
			t.Fatal("connected to nothing")
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("error shows the password: %v", err)
		}
		_, err = Open(ctx, "postgres://runbook:hunter2-secret@127.0.0.1:bad/x")
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("parse error: %v", err)
		}
	})
}

func TestJSONBSafe(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":"x"}`:              `{"a":"x"}`,
		`{"a":"\u0000"}`:         `{"a":"\ufffd"}`,
		`{"a":"\\u0000"}`:        `{"a":"\\u0000"}`,
		`{"a":"\\\u0000\u0000"}`: `{"a":"\\\ufffd\ufffd"}`,
		`{"a":"\u00001"}`:        `{"a":"\ufffd1"}`,
	} {
		if got := string(jsonbSafe([]byte(in))); got != want {
			t.Errorf("jsonbSafe(%s) = %s, want %s", in, got, want)
		}
	}
}

// BenchmarkAppend runs against a throwaway lab cluster, which has fsync
// off; set RUNBOOK_PG_BENCH_URL to measure a durable server instead.
func BenchmarkAppend(b *testing.B) {
	url := os.Getenv("RUNBOOK_PG_BENCH_URL")
	if url == "" {
		url = labtest.Postgres(b).URL("postgres")
	}
	s, err := Open(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	statetest.BenchAppend(b, s)
}

// TestLockRace starts its own cluster: runners taking the same lock at
// once.
func TestLockRace(t *testing.T) {
	pg := labtest.Postgres(t)
	ctx := context.Background()
	url := pg.URL("postgres")

	// A holder that is slow between taking the lock and writing its row
	// (descheduled on a loaded machine) must still be named to a runner
	// that finds the lock taken meanwhile, not an empty holder.
	t.Run("SlowHolder", func(t *testing.T) {
		s1, s2 := mustOpen(t, url), mustOpen(t, url)
		target := statetest.NewID("slow")
		h1 := state.Holder{RunID: statetest.NewID("r"), Operator: "alice", PID: 11, Since: t0}
		locked := make(chan struct{})
		proceed := make(chan struct{})
		testHookLocked = func() {
			close(locked)
			<-proceed
		}
		t.Cleanup(func() { testHookLocked = nil })
		type result struct {
			l   state.Lock
			err error
		}
		first := make(chan result, 1)
		go func() {
			l, err := s1.Lock(ctx, target, h1)
			first <- result{l, err}
		}()
		<-locked
		testHookLocked = nil
		second := make(chan error, 1)
		go func() {
			_, err := s2.Lock(ctx, target, state.Holder{RunID: statetest.NewID("r"), Operator: "bob", PID: 12, Since: t0})
			second <- err
		}()
		time.Sleep(time.Second) // far beyond any wait for a missing holder row
		close(proceed)
		r := <-first
		if r.err != nil {
			t.Fatal(r.err)
		}
		defer r.l.Release(ctx)
		err := <-second
		var held *state.LockHeldError
		if !errors.As(err, &held) {
			t.Fatalf("second Lock: %v, want a LockHeldError", err)
		}
		if held.Holder.RunID != h1.RunID || held.Holder.PID != 11 || held.Holder.Operator != "alice" {
			t.Fatalf("second Lock names %v, want %v", held.Holder, h1)
		}
	})

	// A holder that releases the lock just after another runner found it
	// taken: that runner must still name the holder.
	t.Run("ReleaseWhileRefused", func(t *testing.T) {
		s1, s2 := mustOpen(t, url), mustOpen(t, url)
		target := statetest.NewID("rel")
		h1 := state.Holder{RunID: statetest.NewID("r"), Operator: "alice", PID: 21, Since: t0}
		l1, err := s1.Lock(ctx, target, h1)
		if err != nil {
			t.Fatal(err)
		}
		refused := make(chan struct{})
		proceed := make(chan struct{})
		testHookRefused = func() {
			close(refused)
			<-proceed
		}
		t.Cleanup(func() { testHookRefused = nil })
		second := make(chan error, 1)
		go func() {
			_, err := s2.Lock(ctx, target, state.Holder{RunID: statetest.NewID("r"), Operator: "bob", PID: 22, Since: t0})
			second <- err
		}()
		<-refused
		testHookRefused = nil
		released := make(chan error, 1)
		go func() { released <- l1.Release(ctx) }()
		time.Sleep(time.Second)
		close(proceed)
		err = <-second
		var held *state.LockHeldError
		if !errors.As(err, &held) || held.Holder.RunID != h1.RunID || held.Holder.PID != 21 {
			t.Fatalf("second Lock: %v, want the lock held by %s (pid 21)", err, h1.RunID)
		}
		if err := <-released; err != nil {
			t.Fatal(err)
		}
	})

	// Many runners at once: exactly one takes the lock; every other is
	// refused naming it.
	t.Run("Many", func(t *testing.T) {
		const n = 8
		stores := make([]*Store, n)
		for i := range stores {
			stores[i] = mustOpen(t, url)
		}
		for round := 0; round < 5; round++ {
			target := statetest.NewID("many")
			locks := make([]state.Lock, n)
			errs := make([]error, n)
			ids := make([]string, n)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range stores {
				ids[i] = statetest.NewID("r")
				wg.Go(func() {
					<-start
					locks[i], errs[i] = stores[i].Lock(ctx, target, state.Holder{RunID: ids[i], Operator: "op", PID: 100 + i, Since: t0})
				})
			}
			close(start)
			wg.Wait()
			winner := -1
			for i := range stores {
				if errs[i] == nil {
					if winner >= 0 {
						t.Fatalf("round %d: runners %d and %d both hold the lock", round, winner, i)
					}
					winner = i
				}
			}
			if winner < 0 {
				t.Fatalf("round %d: nobody took the lock: %v", round, errs)
			}
			for i := range stores {
				if i == winner {
					continue
				}
				var held *state.LockHeldError
				if !errors.As(errs[i], &held) || held.Holder.RunID != ids[winner] || held.Holder.PID != 100+winner {
					t.Errorf("round %d: runner %d: %v, want the lock held by %s (pid %d)", round, i, errs[i], ids[winner], 100+winner)
				}
			}
			if err := locks[winner].Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
}
