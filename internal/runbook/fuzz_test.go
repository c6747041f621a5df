package runbook

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// seedFiles adds every runbook under testdata as a seed.
func seedFiles(f *testing.F, patterns ...string) {
	for _, p := range patterns {
		names, _ := filepath.Glob(filepath.Join(repoRoot, p))
		for _, full := range names {
			name, _ := filepath.Rel(repoRoot, full)
			f.Add(readRepo(f, name))
		}
	}
}

// checkErr checks the shape of any error Load or Validate returns.
func checkErr(t *testing.T, err error) {
	var list DecodeErrors
	if !errors.As(err, &list) || len(list) == 0 {
		t.Fatalf("not DecodeErrors: %T %v", err, err)
	}
	for _, e := range list {
		if e.Line < 1 || e.Col < 1 {
			t.Fatalf("bad position %d:%d in %v", e.Line, e.Col, e)
		}
	}
	_ = err.Error()
}

// FuzzLoad decodes and validates arbitrary bytes as a runbook: it must
// never panic or hang, and every error it returns has a position.
func FuzzLoad(f *testing.F) {
	seedFiles(f, "testdata/valid/runbooks/*.yaml", "testdata/invalid/runbook/*.yaml")
	f.Add([]byte("name: x\nsteps:\n  - {id: a, kind: command, with: {check: '${{ inputs.a }}', run: x}, when: '!inputs.a'}\n"))
	reg := testRegistry()
	inv := testInventory(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		rb, err := Load("fuzz.yaml", data)
		if err != nil {
			checkErr(t, err)
			return
		}
		for _, i := range []any{inv, nil} {
			var err error
			if i == nil {
				err = Validate(rb, reg, nil)
			} else {
				err = Validate(rb, reg, inv)
			}
			if err != nil {
				checkErr(t, err)
			}
		}
	})
}

var whenSeeds = []string{
	"true", "${{ inputs.mode == 'safe' }}", "!inputs.dry && (vars.a != 1 || host.name == \"gw1\")",
	"steps.k.outputs.v == 'it''s'", "((((true))))", "-1.5 == -1.50", "run.id", "env.HOME", "${{", "'", "a ==",
}

// FuzzEvalWhen: conditions never panic, and a condition that parses
// evaluates without error when every reference is known.
func FuzzEvalWhen(f *testing.F) {
	for _, s := range whenSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		all := func(Ref) (string, bool) { return "x", true }
		refs, perr := WhenRefs(expr)
		_, err := EvalWhen(expr, all)
		if (perr == nil) != (err == nil) {
			t.Fatalf("WhenRefs %v but EvalWhen %v", perr, err)
		}
		none := func(Ref) (string, bool) { return "", false }
		if _, err := EvalWhen(expr, none); perr == nil && (err == nil) != (len(refs) == 0) {
			t.Fatalf("%d refs, unknown-reference error %v", len(refs), err)
		}
	})
}

// FuzzExpand: templates never panic; text without ${{ is returned as is;
// when Refs and the value check accept a string, Expand does too.
func FuzzExpand(f *testing.F) {
	for _, s := range []string{
		"plain", "${{ inputs.a }}", "a${{vars.b}}c${{ steps.x-1.outputs.y_2 }}", "${{ host.name == 'x' }}", "${{ }", "$${{ run.id }}}}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		look := func(r Ref) (string, bool) { return "<" + r.String() + ">", true }
		got, err := Expand(s, look)
		if !strings.Contains(s, "${{") && (err != nil || got != s) {
			t.Fatalf("plain text changed: %q -> %q, %v", s, got, err)
		}
		if checkValueTemplates(s) == nil && err != nil {
			t.Fatalf("value check passes but Expand fails: %v", err)
		}
		if _, rerr := Refs(s); rerr != nil && err == nil {
			t.Fatalf("Refs fails (%v) but Expand passes", rerr)
		}
	})
}
