package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/state"
	statefs "github.com/runbook-dev/runbook/internal/state/fs"
	statepg "github.com/runbook-dev/runbook/internal/state/pg"
)

// These tests run the real runbook binary as separate processes: they kill
// it with SIGKILL and race two of them for a lock.

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// crashBinary builds runbook with the test-only crash hook.
func crashBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "runbook-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "runbook")
		out, err := exec.Command("go", "build", "-tags", "crashpoints", "-o", builtBin, "../../cmd/runbook").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

type workdir struct {
	t     *testing.T
	dir   string
	bin   string
	state string
}

func newWorkdir(t *testing.T, stateURL string, files map[string]string) *workdir {
	t.Helper()
	dir, err := os.MkdirTemp("", "rb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if stateURL == "" {
		stateURL = filepath.Join(dir, "state")
	}
	return &workdir{t: t, dir: dir, bin: crashBinary(t), state: stateURL}
}

func (w *workdir) cmd(env []string, args ...string) *exec.Cmd {
	c := exec.Command(w.bin, args...)
	c.Dir = w.dir
	c.Env = append(os.Environ(), "RUNBOOK_STATE="+w.state, "RUNBOOK_RECORDS="+filepath.Join(w.dir, "records"),
		"RUNBOOK_INVENTORY="+filepath.Join(w.dir, "inventory.yaml"), "RUNBOOK_OPERATOR=tester")
	c.Env = append(c.Env, env...)
	return c
}

func (w *workdir) run(env []string, args ...string) (stdout, stderr string, code int) {
	c := w.cmd(env, args...)
	var o, e bytes.Buffer
	c.Stdout, c.Stderr = &o, &e
	err := c.Run()
	if code = processExit(err); code < 0 {
		w.t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// processExit is the exit code of a command that ran (err from its Wait or
// Run): 128+N for one killed by signal N, as a shell says, and -1 when it
// did not run.
func processExit(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func (w *workdir) store() state.Store {
	w.t.Helper()
	var s state.Store
	var err error
	if strings.HasPrefix(w.state, "postgres://") {
		s, err = statepg.Open(context.Background(), w.state)
	} else {
		s, err = statefs.Open(w.state)
	}
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

func (w *workdir) runs() []state.RunSummary {
	s := w.store()
	defer s.Close()
	runs, err := s.Runs(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	return runs
}

func (w *workdir) journal(runID string) []journal.Record {
	s := w.store()
	defer s.Close()
	recs, err := s.Journal(context.Background(), runID)
	if err != nil {
		w.t.Fatal(err)
	}
	return recs
}

const crashInventory = `environment: crash
groups:
  fleet: {}
hosts:
  h1: {address: 127.0.0.1, transport: local, groups: [fleet]}
  h2: {address: 127.0.0.1, transport: local, groups: [fleet]}
`

// Every step appends a line to a file; a line appearing twice, or missing,
// is a side effect repeated or lost.
const crashRunbook = `name: crash
phases:
  contain: 5m
  recover: 30m
steps:
  - id: a
    kind: command
    phase: contain
    on: fleet
    with:
      check: [sh, -c, 'grep -qx a "$1.log"', sh, "${{ host.name }}"]
      run: [sh, -c, 'echo a >> "$1.log"', sh, "${{ host.name }}"]
  - id: b
    kind: command
    phase: recover
    with:
      check: [sh, -c, 'grep -qx b once.log']
      run: [sh, -c, 'echo b >> once.log']
  - id: c
    kind: command
    phase: recover
    on: fleet
    with:
      check: [sh, -c, 'grep -qx c "$1.log"', sh, "${{ host.name }}"]
      run: [sh, -c, 'echo c >> "$1.log"', sh, "${{ host.name }}"]
`

func (w *workdir) checkEffectsOnce() {
	w.t.Helper()
	want := map[string]string{"h1.log": "a\nc\n", "h2.log": "a\nc\n", "once.log": "b\n"}
	for f, content := range want {
		b, err := os.ReadFile(filepath.Join(w.dir, f))
		if err != nil {
			w.t.Fatal(err)
		}
		if string(b) != content {
			w.t.Fatalf("%s holds %q, want %q: a side effect was lost or repeated", f, b, content)
		}
	}
}

// TestCrashAtEveryJournalPointThenResume kills the runner with SIGKILL after
// each journal record in turn, and separately after each side effect before
// its outcome is journaled, then resumes: every side effect must end up
// applied exactly once, the journal must verify and the record must exist.
func TestCrashAtEveryJournalPointThenResume(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary many times")
	}
	files := map[string]string{"inventory.yaml": crashInventory, "runbook.yaml": crashRunbook}
	base := newWorkdir(t, "", files)
	if out, errOut, code := base.run(nil, "exec", "./runbook.yaml", "--yes"); code != 0 {
		t.Fatalf("clean run: exit %d\n%s%s", code, out, errOut)
	}
	base.checkEffectsOnce()
	total := len(base.journal(base.runs()[0].RunID))
	const applies = 5
	if total != 1+2*applies+1 {
		t.Fatalf("a clean run journals %d records, want %d", total, 2+2*applies)
	}

	type point struct{ env, name string }
	var points []point
	for n := 1; n <= total; n++ {
		points = append(points, point{fmt.Sprintf("RUNBOOK_TEST_CRASH_AFTER=%d", n), fmt.Sprintf("record-%d", n)})
	}
	for n := 1; n <= applies; n++ {
		points = append(points, point{fmt.Sprintf("RUNBOOK_TEST_CRASH_AFTER_APPLY=%d", n), fmt.Sprintf("apply-%d", n)})
	}
	passed := 0
	for _, p := range points {
		t.Run(p.name, func(t *testing.T) {
			w := newWorkdir(t, "", files)
			_, _, code := w.run([]string{p.env}, "exec", "./runbook.yaml", "--yes")
			if code != 128+int(syscall.SIGKILL) {
				t.Fatalf("runner was not killed at %s (exit %d)", p.env, code)
			}
			runs := w.runs()
			if len(runs) != 1 {
				t.Fatalf("%d runs after the crash", len(runs))
			}
			id := runs[0].RunID
			out, errOut, code := w.run(nil, "resume", id)
			if code != 0 {
				t.Fatalf("resume: exit %d\n%s%s", code, out, errOut)
			}
			w.checkEffectsOnce()
			recs := w.journal(id)
			if err := journal.Verify(recs); err != nil {
				t.Fatalf("journal after resume: %v", err)
			}
			st, err := journal.Replay(recs)
			if err != nil || st.End == nil || st.End.Status != journal.StatusSucceeded {
				t.Fatalf("run does not end succeeded: %v %+v", err, st)
			}
			mds, _ := filepath.Glob(filepath.Join(w.dir, "records", "*-crash-"+id+".md"))
			if len(mds) != 1 {
				t.Fatalf("no incident record after resume")
			}
			passed++
		})
	}
	t.Logf("crash points tried: %d, passed: %d", len(points), passed)
}

func lockRunbook(sleep string) string {
	return `name: slow
steps:
  - id: slow
    kind: command
    with:
      check: [test, -e, done]
      run: [sh, -c, 'touch started; sleep ` + sleep + `; touch done']
`
}

// testLockExclusion runs two exec of the same runbook and environment at
// once: one runs, the other is refused with the lock-held exit code and
// the holder's details; once the holder is killed the lock can be taken.
func testLockExclusion(t *testing.T, stateURL string) {
	w := newWorkdir(t, stateURL, map[string]string{"inventory.yaml": crashInventory, "runbook.yaml": lockRunbook("60")})
	first := w.cmd(nil, "exec", "./runbook.yaml", "--yes")
	var firstOut bytes.Buffer
	first.Stdout, first.Stderr = &firstOut, &firstOut
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer first.Process.Kill()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(w.dir, "started")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("first run never started its step:\n%s", firstOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	runID := w.runs()[0].RunID

	_, errOut, code := w.run(nil, "exec", "./runbook.yaml", "--yes")
	if code != ExitLockHeld {
		t.Fatalf("second exec: exit %d, want %d\n%s", code, ExitLockHeld, errOut)
	}
	for _, want := range []string{"env:crash", runID, "tester", fmt.Sprintf("pid %d", first.Process.Pid)} {
		if !strings.Contains(errOut, want) {
			t.Errorf("lock-held error does not name %q:\n%s", want, errOut)
		}
	}
	out, _, _ := w.run(nil, "runs", "-o", "json")
	var runs []state.RunSummary
	if err := json.Unmarshal([]byte(out), &runs); err != nil || len(runs) != 1 || runs[0].Status != journal.StatusRunning {
		t.Fatalf("runs while the holder lives: %v %s", err, out)
	}

	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	out, _, _ = w.run(nil, "runs", "-o", "json")
	if err := json.Unmarshal([]byte(out), &runs); err != nil || runs[0].Status != journal.StatusInterrupted {
		t.Fatalf("runs after the holder died: %v %s", err, out)
	}
	// The dead holder's lock is taken over by a new run.
	if err := os.WriteFile(filepath.Join(w.dir, "runbook.yaml"), []byte(lockRunbook("0")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = w.run(nil, "exec", "./runbook.yaml", "--yes")
	if code != 0 {
		t.Fatalf("exec after the holder died: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "took over the lock on env:crash from run "+runID) {
		t.Fatalf("the take-over is not reported:\n%s", out)
	}
}

func TestLockExclusionFS(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	testLockExclusion(t, "")
}

func TestLockExclusionPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	pg := labtest.Postgres(t)
	testLockExclusion(t, pg.URL("postgres"))
}
