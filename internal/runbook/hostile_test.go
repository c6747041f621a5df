package runbook

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestHostileInputsAreBounded loads files near the size limit built to
// make a careless decoder quadratic: thousands of errors on one long line,
// references that all fail, unknown after: entries, secret-looking values.
// Each must finish in seconds (a quadratic path took many minutes).
func TestHostileInputsAreBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: builds 1 MiB inputs")
	}
	var refs strings.Builder
	refs.WriteString("name: big\nsteps:\n")
	for i := 0; refs.Len() < 900_000; i++ {
		fmt.Fprintf(&refs, "  - {id: s%d, kind: incident.note, with: {message: \"${{ steps.s%d.outputs.x }}\"}, after: [x%d]}\n", i, i+1, i)
	}
	cases := map[string]string{
		"failing references": refs.String(),
		"unknown after":      "name: a\nsteps:\n  - id: a\n    kind: incident.note\n    with: {message: x}\n    after: [" + strings.Repeat("zzzzzzzzzzzzzzzzzzzzzz, ", 35000) + "]\n",
		"one wide line":      "{" + strings.Repeat("k: 1, ", 150000) + "}",
		"duplicate ids":      "name: m\nsteps:\n" + strings.Repeat("  - {id: s, kind: incident.note, with: {message: x}}\n", 18000),
		"secrets":            "name: s\nsteps: [" + strings.Repeat("sk-aaaaaaaaaaaaaaaaaaaaaaaaaaa, ", 30000) + "]\n",
	}
	reg, inv := testRegistry(), testInventory(t)
	for name, data := range cases {
		start := time.Now()
		rb, err := Load("hostile.yaml", []byte(data))
		if err == nil {
			err = Validate(rb, reg, inv)
		}
		if err == nil {
			t.Errorf("%s: no error", name)
		}
		if d := time.Since(start); d > time.Minute {
			t.Errorf("%s: took %v", name, d)
		}
	}
}
