package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
)

// Ctrl-C while a side effect is in flight: it finishes and is journaled,
// no further work starts, the runner exits 130 and says how to resume; the
// record says interrupted; resume finishes the rest.
func TestInterruptFinishesTheSideEffectInFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	rb := `name: slow
steps:
  - id: first
    kind: command
    with:
      check: [test, -e, first.done]
      run: [sh, -c, 'touch first.started; sleep 1; touch first.done']
  - id: second
    kind: command
    with:
      check: [test, -e, second.done]
      run: [touch, second.done]
`
	w := newWorkdir(t, "", map[string]string{"inventory.yaml": crashInventory, "runbook.yaml": rb})
	c := w.cmd(nil, "exec", "./runbook.yaml", "--yes")
	var out, errOut bytes.Buffer
	c.Stdout, c.Stderr = &out, &errOut
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(w.dir, "first.started")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first step never started:\n%s%s", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := c.Wait()
	if c.ProcessState.ExitCode() != ExitInterrupted {
		t.Fatalf("exit %d (%v), want %d\n%s%s", c.ProcessState.ExitCode(), err, ExitInterrupted, out.String(), errOut.String())
	}
	if _, err := os.Stat(filepath.Join(w.dir, "first.done")); err != nil {
		t.Fatal("the side effect in flight did not finish")
	}
	if _, err := os.Stat(filepath.Join(w.dir, "second.done")); err == nil {
		t.Fatal("a step started after the interrupt")
	}
	if !strings.Contains(errOut.String(), "runbook resume") {
		t.Errorf("no resume hint:\n%s", errOut.String())
	}
	id := w.runs()[0].RunID
	st, err := journal.Replay(w.journal(id))
	if err != nil {
		t.Fatal(err)
	}
	if wk := st.Lookup("first", ""); wk == nil || wk.Status != journal.TDone {
		t.Fatalf("first is not journaled done: %+v", wk)
	}
	if st.End == nil || st.End.Status != journal.StatusInterrupted {
		t.Fatalf("end: %+v", st.End)
	}
	if o, e, code := w.run(nil, "resume", id); code != 0 || !strings.Contains(o, "1 changed, 0 ok, 1 done before") {
		t.Fatalf("resume: exit %d\n%s%s", code, o, e)
	}
}
