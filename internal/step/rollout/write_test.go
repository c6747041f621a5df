package rollout

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestWriteScriptRefusesACutText: standard input that ends early (the
// runner's connection lost mid-text) replaces nothing; the whole text
// replaces the file.
func TestWriteScriptRefusesACutText(t *testing.T) {
	f := filepath.Join(t.TempDir(), "litellm.env")
	old := []byte("LITELLM_MASTER_KEY=sk-old\nDATABASE_URL=postgres://db/litellm\n")
	if err := os.WriteFile(f, old, 0o600); err != nil {
		t.Fatal(err)
	}
	text := []byte("LITELLM_MASTER_KEY=sk-new\nDATABASE_URL=postgres://db/litellm\n")
	run := func(in []byte) (int, string) {
		cmd := exec.Command("sh", "-c", writeScript, "rollout-write", f, "keep", strconv.Itoa(len(text)))
		cmd.Stdin = bytes.NewReader(in)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), stderr.String()
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, stderr.String()
	}
	if code, stderr := run(text[:20]); code != 4 {
		t.Fatalf("a cut text: exit %d (%s), want 4", code, stderr)
	}
	if b, _ := os.ReadFile(f); !bytes.Equal(b, old) {
		t.Fatalf("a cut text replaced the file: %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(f), ".litellm.env.*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	if code, stderr := run(text); code != 0 {
		t.Fatalf("the whole text: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(f); !bytes.Equal(b, text) {
		t.Fatalf("the file holds %q", b)
	}
	if b, _ := os.ReadFile(f + ".prev"); !bytes.Equal(b, old) {
		t.Fatalf("the previous text was not kept: %q", b)
	}
}
