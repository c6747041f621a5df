package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/secret"
)

// TestLeakWatchFindsPlantedSecrets is the leak scan's control: secrets
// planted where a careless runner could leave them are each found (a scan
// that finds nothing because it looks nowhere would pass every run).
// Planted: one in a process's argv, one in a file under the watched
// TMPDIR that its writer deletes while holding it open, one in a lab log,
// one in a lab file that is not 0600, one in a captured output; one more
// in a 0600 lab file, which is allowed.
func TestLeakWatchFindsPlantedSecrets(t *testing.T) {
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		t.Skip("no /proc")
	}
	labDir := t.TempDir()
	lb := &lab.Lab{Dir: labDir}
	inArgv := secret.New("sk-planted-argv-0123456789")
	inTmp := secret.New("sk-planted-tmp-0123456789")
	inLog := secret.New("sk-planted-log-0123456789")
	inOpen := secret.New("sk-planted-0644-0123456789")
	inOutput := secret.New("sk-planted-stdout-0123456789")
	kept := secret.New("sk-planted-0600-0123456789")
	unused := secret.New("sk-planted-nowhere-0123456789")

	w := watchLeaks(t, lb, "/bin/sh")
	// The "runner": a shell whose argv holds a secret, which writes another
	// into a file of its TMPDIR, deletes the file and keeps it open.
	script := `exec 3>"$TMPDIR/scratch"; cat >&3; rm -f "$TMPDIR/scratch"; sleep 2`
	cmd := exec.Command("/bin/sh", "-c", script, "sh", inArgv.Reveal())
	cmd.Env = append(os.Environ(), w.env()...)
	cmd.Stdin = strings.NewReader(inTmp.Reveal())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	for name, data := range map[string]struct {
		v    secret.Value
		mode os.FileMode
	}{
		"gateway.log": {inLog, 0o600},
		"config.yaml": {inOpen, 0o644},
		"litellm.env": {kept, 0o600},
	} {
		if err := os.WriteFile(filepath.Join(labDir, name), []byte("X="+data.v.Reveal()+"\n"), data.mode); err != nil {
			t.Fatal(err)
		}
	}
	// Poll (generously: the machine may be loaded) until the watch has
	// copied the deleted file and sampled the argv.
	deadline := time.Now().Add(time.Minute)
	for {
		w.mu.Lock()
		seen := len(w.deleted) > 0
		argv := false
		for line := range w.cmdlines {
			argv = argv || strings.Contains(line, inArgv.Reveal())
		}
		w.mu.Unlock()
		if seen && argv || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Kill()

	c, hits := w.scan([]secret.Value{inArgv, inTmp, inLog, inOpen, inOutput, kept, unused},
		map[string][]byte{"stdout": []byte("..." + inOutput.Reveal() + "...")})
	t.Logf("%s", c)
	for _, h := range hits {
		t.Logf("hit: %s", h)
	}
	want := map[string]string{
		inArgv.Fingerprint():   "/proc/",
		inTmp.Fingerprint():    "scratch",
		inLog.Fingerprint():    "gateway.log",
		inOutput.Fingerprint(): "stdout",
	}
	for fp, where := range want {
		found := false
		for _, h := range hits {
			if strings.Contains(h, fp) && strings.Contains(h, where) {
				found = true
			}
		}
		if !found {
			t.Errorf("secret %s in %s not found", fp, where)
		}
	}
	mode := false
	for _, h := range hits {
		if strings.Contains(h, "config.yaml") && strings.Contains(h, "want 0600") {
			mode = true
		}
		if strings.Contains(h, kept.Fingerprint()) || strings.Contains(h, "litellm.env") || strings.Contains(h, unused.Fingerprint()) {
			t.Errorf("false hit: %s", h)
		}
	}
	if !mode {
		t.Errorf("the 0644 file holding a secret was not reported")
	}
	if c.DeletedCopies == 0 {
		t.Errorf("no copy of a deleted file")
	}
}
