package transport

import (
	"os/exec"
	"testing"
)

// Quoted arguments reach a real shell unchanged, whatever they contain.
func TestQuoteRoundTripsThroughSh(t *testing.T) {
	cases := []string{"", "plain", "a b", "it's", `"dq"`, "$(touch /tmp/x)", "`id`", "a;b|c&d", "new\nline", "tab\t", "*?[]", "~root", "-n", "\\", "'", "''", "a'b'c", "é ü"}
	for _, c := range cases {
		out, err := exec.Command("sh", "-c", "printf %s "+Quote(c)).Output()
		if err != nil {
			t.Fatalf("%q: %v", c, err)
		}
		if string(out) != c {
			t.Errorf("Quote(%q) came back as %q", c, out)
		}
	}
}
