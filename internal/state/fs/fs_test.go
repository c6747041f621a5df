package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/state"
	"github.com/runbook-dev/runbook/internal/state/statetest"
)

const envDir = "RUNBOOK_FS_TEST_DIR"

func TestMain(m *testing.M) {
	statetest.Main(m, func() (state.Store, error) { return Open(os.Getenv(envDir)) })
}

func openAt(dir string) func(t *testing.T) state.Store {
	return func(t *testing.T) state.Store {
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

func TestConformance(t *testing.T) {
	dir := t.TempDir()
	statetest.Run(t, openAt(dir), []string{envDir + "=" + dir})
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func mustOpen(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A crash in the middle of a write leaves a torn last line: Journal leaves
// it out, and the next Append, even from another process, cuts it first.
func TestTornLastLine(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	id := "torn"
	recs := statetest.Fixture(id, "t", t0, 4, journal.StatusSucceeded)
	s := mustOpen(t, dir)
	for _, r := range recs[:3] {
		if err := s.Append(ctx, id, r); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "runs", id+".jsonl")
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	line, err := journal.EncodeLine(recs[3])
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(line[:len(line)/2]); err != nil {
		t.Fatal(err)
	}
	f.Close()

	for name, st := range map[string]*Store{"writer": s, "new process": mustOpen(t, dir)} {
		got, err := st.Journal(ctx, id)
		if err != nil || len(got) != 3 {
			t.Fatalf("%s: journal with torn line: %d records, %v", name, len(got), err)
		}
	}
	runs, err := s.Runs(ctx)
	if err != nil || len(runs) != 1 || runs[0].Records != 3 {
		t.Fatalf("runs with torn line: %+v %v", runs, err)
	}

	// A resumed run is a new process: a fresh Store appends.
	s2 := mustOpen(t, dir)
	for _, r := range recs[3:] {
		if err := s2.Append(ctx, id, r); err != nil {
			t.Fatalf("append after torn line: %v", err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := journal.EncodeLines(recs)
	if !bytes.Equal(got, want) {
		t.Fatalf("file after repair:\n%s\nwant:\n%s", got, want)
	}
	if !bytes.HasPrefix(got, whole) {
		t.Fatal("repair touched complete lines")
	}
	// The first writer notices the other process's records and the cut.
	c := journal.Chain{Last: recs[len(recs)-1].Hash, Seq: recs[len(recs)-1].Seq}
	next := c.Seal(journal.Record{Time: t0, Type: journal.TResumed})
	if err := s.Append(ctx, id, next); err != nil {
		t.Fatalf("first writer after another appended: %v", err)
	}
	all, err := s2.Journal(ctx, id)
	if err != nil || journal.Verify(all) != nil || len(all) != len(recs)+1 {
		t.Fatalf("final journal: %d records, %v", len(all), err)
	}
}

// A crash between creating the file and writing the header leaves an empty
// (or torn) file: the run does not exist, and its header can still be
// written.
func TestHeaderNeverWritten(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	id := "empty"
	hdr := statetest.Fixture(id, "t", t0, 0, "")[0]
	line, _ := journal.EncodeLine(hdr)
	if err := os.WriteFile(filepath.Join(dir, "runs", id+".jsonl"), line[:10], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Journal(ctx, id); !errors.Is(err, state.ErrNoRun) {
		t.Fatalf("journal: %v", err)
	}
	if runs, err := s.Runs(ctx); err != nil || len(runs) != 0 {
		t.Fatalf("runs: %v %v", runs, err)
	}
	if err := s.Append(ctx, id, hdr); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Journal(ctx, id); err != nil || len(got) != 1 {
		t.Fatalf("journal: %v %v", got, err)
	}
}

// Journals edited behind the store's back are refused, not extended.
func TestCorruptJournal(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	id := "corrupt"
	recs := statetest.Fixture(id, "t", t0, 3, "")
	s := mustOpen(t, dir)
	for _, r := range recs[:3] {
		if err := s.Append(ctx, id, r); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "runs", id+".jsonl")
	data, _ := os.ReadFile(path)
	if err := os.WriteFile(path, bytes.Replace(data, []byte(`"restart"`), []byte(`"reboot!"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	err := mustOpen(t, dir).Append(ctx, id, recs[3])
	if !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("append to an edited journal: %v", err)
	}
	got, err := s.Journal(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := journal.Replay(got); !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("replay of an edited journal: %v", err)
	}
}

func TestNames(t *testing.T) {
	for _, id := range []string{"", ".hidden", "../x", "a/b", "a b", strings.Repeat("x", 201)} {
		if validRunID(id) == nil {
			t.Errorf("run id %q accepted", id)
		}
	}
	if err := validRunID("20260501T120000Z-rotate-ab12_x.1"); err != nil {
		t.Error(err)
	}
	seen := map[string]string{}
	for _, target := range []string{"prod/gateways", "prod_gateways", "prod gateways", "..", "../../etc/passwd", "ünï", strings.Repeat("y", 300)} {
		n := lockName(target)
		if strings.ContainsAny(n, "/ ") || strings.HasPrefix(n, ".") || len(n) > 100 {
			t.Errorf("lock name %q for %q", n, target)
		}
		if other, ok := seen[n]; ok {
			t.Errorf("targets %q and %q share lock file %q", target, other, n)
		}
		seen[n] = target
	}
}

func TestFiles(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "state")
	s := mustOpen(t, dir)
	id := "perm"
	for _, r := range statetest.Fixture(id, "t", t0, 0, "") {
		if err := s.Append(ctx, id, r); err != nil {
			t.Fatal(err)
		}
	}
	l, err := s.Lock(ctx, "prod", state.Holder{RunID: id})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "runs", id+".jsonl"), filepath.Join(dir, "locks", lockName("prod"))} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is mode %v: readable by others", p, fi.Mode().Perm())
		}
	}
	held, _ := os.ReadFile(filepath.Join(dir, "locks", lockName("prod")))
	if !strings.Contains(string(held), id) {
		t.Errorf("lock file does not name its holder: %q", held)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if held, _ := os.ReadFile(filepath.Join(dir, "locks", lockName("prod"))); len(held) != 0 {
		t.Errorf("released lock file still holds %q", held)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, id, statetest.Fixture(id, "t", t0, 1, "")[1]); err == nil {
		t.Error("append after Close")
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/var/tmp/xdg")
	if d, err := DefaultDir(); err != nil || d != "/var/tmp/xdg/runbook" {
		t.Fatalf("with XDG_STATE_HOME: %q %v", d, err)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/op")
	if d, err := DefaultDir(); err != nil || d != "/home/op/.local/state/runbook" {
		t.Fatalf("without: %q %v", d, err)
	}
}

func BenchmarkAppend(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	statetest.BenchAppend(b, s)
}
