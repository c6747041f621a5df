package runbook

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/runbook/strictyaml"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/invalid")

// corpusCase is one invalid file: a runbook or an inventory.
type corpusCase struct {
	name      string // relative to the repository's top, as errors show it
	inventory bool
	data      []byte
}

// generated are hostile inputs too large to keep in the repository.
func generated() []corpusCase {
	huge := append([]byte("name: huge\nsteps:\n"), bytes.Repeat([]byte("# padding padding padding padding\n"), strictyaml.MaxSize/34+1)...)
	deep := "name: deep\nsteps:\n  - id: a\n    kind: command\n    with: {check: x, run: " +
		strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + "}\n"
	wide := "name: wide\nsteps:\n" + strings.Repeat("  - {id: x, kind: nope, bogus: 1}\n", 200)
	return []corpusCase{
		{name: "testdata/invalid/runbook/generated-huge-file.yaml", data: huge},
		{name: "testdata/invalid/runbook/generated-deep-flow.yaml", data: []byte(deep)},
		{name: "testdata/invalid/runbook/generated-many-errors.yaml", data: []byte(wide)},
		{name: "testdata/invalid/inventory/generated-huge-file.yaml", inventory: true, data: huge},
	}
}

func corpus(t *testing.T) []corpusCase {
	t.Helper()
	var out []corpusCase
	for _, dir := range []string{"runbook", "inventory"} {
		names, err := filepath.Glob(filepath.Join(repoRoot, "testdata/invalid", dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, full := range names {
			name, _ := filepath.Rel(repoRoot, full)
			name = filepath.ToSlash(name)
			out = append(out, corpusCase{name: name, inventory: dir == "inventory", data: readRepo(t, name)})
		}
	}
	return append(out, generated()...)
}

// check loads and validates a case the way `runbook validate` does.
func (c corpusCase) check(t *testing.T) error {
	if c.inventory {
		_, err := inventory.Load(c.name, c.data)
		return err
	}
	rb, err := Load(c.name, c.data)
	if err != nil {
		return err
	}
	return Validate(rb, testRegistry(), testInventory(t))
}

func golden(name string) string { return strings.TrimSuffix(name, ".yaml") + ".golden" }

// TestInvalidCorpus checks that every file in testdata/invalid fails with
// exactly the error in its golden file (go test ./internal/runbook/...
// -update rewrites them), that every error carries a position, and that no
// error repeats a secret from the file.
func TestInvalidCorpus(t *testing.T) {
	cases := corpus(t)
	if len(cases) < 30 {
		t.Fatalf("only %d invalid cases", len(cases))
	}
	t.Logf("%d invalid cases", len(cases))
	seen := map[string]bool{}
	for _, c := range cases {
		seen[golden(c.name)] = true
		t.Run(strings.TrimPrefix(c.name, "testdata/invalid/"), func(t *testing.T) {
			err := c.check(t)
			if err == nil {
				t.Fatal("no error")
			}
			var list DecodeErrors
			if !errors.As(err, &list) {
				t.Fatalf("not DecodeErrors: %T %v", err, err)
			}
			for _, e := range list {
				if e.File != c.name || e.Line < 1 || e.Col < 1 {
					t.Errorf("bad position: %s:%d:%d", e.File, e.Line, e.Col)
				}
			}
			got := err.Error() + "\n"
			if strings.Contains(got, "LEAKCANARY") || strings.Contains(got, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08") {
				t.Errorf("error shows a secret:\n%s", got)
			}
			g := filepath.Join(repoRoot, golden(c.name))
			if *update {
				if err := os.WriteFile(g, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(g)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/runbook/... -update)", err)
			}
			if got != string(want) {
				t.Errorf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
	// No golden file without its case.
	goldens, _ := filepath.Glob(filepath.Join(repoRoot, "testdata/invalid/*/*.golden"))
	for _, g := range goldens {
		name, _ := filepath.Rel(repoRoot, g)
		if !seen[filepath.ToSlash(name)] {
			t.Errorf("%s has no case", name)
		}
	}
}
