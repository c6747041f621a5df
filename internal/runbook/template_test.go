package runbook

import (
	"reflect"
	"strings"
	"testing"
)

func testLookup(r Ref) (string, bool) {
	m := map[string]string{
		"inputs.mode":                  "safe",
		"inputs.port":                  "4000",
		"inputs.empty":                 "",
		"inputs.off":                   "false",
		"inputs.zero":                  "0",
		"inputs.on":                    "TRUE",
		"inputs.quote":                 "it's",
		"vars.litellm_unit":            "litellm",
		"host.name":                    "gw1",
		"host.address":                 "198.18.0.2",
		"steps.newkey.outputs.version": "7",
		"run.id":                       "r-1",
	}
	v, ok := m[r.String()]
	return v, ok
}

func TestRefs(t *testing.T) {
	got, err := Refs("a ${{ inputs.mode }} b ${{steps.new-key_2.outputs.version}} ${{ host.address }}${{ run.id }} ${{ vars.x-y }}")
	if err != nil {
		t.Fatal(err)
	}
	want := []Ref{
		{Scope: "inputs", Name: "mode"},
		{Scope: "steps", Step: "new-key_2", Name: "version"},
		{Scope: "host", Name: "address"},
		{Scope: "run", Name: "id"},
		{Scope: "vars", Name: "x-y"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v", got)
	}
	if refs, err := Refs("no templates, $ { { }}"); err != nil || len(refs) != 0 {
		t.Errorf("plain text: %v %v", refs, err)
	}
	for _, s := range []string{
		"${{ inputs.mode }", "${{ env.HOME }}", "${{ secrets.x }}", "${{ steps.a.version }}", "${{ host.port }}",
		"${{ run.user }}", "${{ inputs }}", "${{ }}", "${{ inputs.a.b }}", "${{ inputs..a }}", "${{ mode }}",
	} {
		if _, err := Refs(s); err == nil {
			t.Errorf("%q: no error", s)
		}
	}
	_, err = Refs("x ${{ env.HOME }}")
	if err == nil || !strings.Contains(err.Error(), "do not read the environment") {
		t.Errorf("env: %v", err)
	}
	if te, ok := err.(*TemplateError); !ok || te.Offset != 6 {
		t.Errorf("offset: %#v", err)
	}
}

func TestExpand(t *testing.T) {
	for in, want := range map[string]string{
		"":                                      "",
		"plain":                                 "plain",
		"unit=${{ vars.litellm_unit }}":         "unit=litellm",
		"${{host.name}}:${{ inputs.port }}":     "gw1:4000",
		"v${{ steps.newkey.outputs.version }}!": "v7!",
		"${{ inputs.quote }}":                   "it's",
	} {
		got, err := Expand(in, testLookup)
		if err != nil || got != want {
			t.Errorf("%q: got %q, %v", in, got, err)
		}
	}
	// Expanded values are not expanded again.
	got, err := Expand("${{ inputs.x }}", func(Ref) (string, bool) { return "${{ run.id }}", true })
	if err != nil || got != "${{ run.id }}" {
		t.Errorf("double expansion: %q %v", got, err)
	}
	for _, in := range []string{"${{ inputs.nope }}", "${{ inputs.mode == 'x' }}", "${{ inputs.mode", "${{ !inputs.mode }}"} {
		if _, err := Expand(in, testLookup); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestEvalWhen(t *testing.T) {
	for expr, want := range map[string]bool{
		"true":                         true,
		"false":                        false,
		"${{ true }}":                  true,
		"  ${{ false }}  ":             false,
		"inputs.mode":                  true,
		"inputs.empty":                 false,
		"inputs.off":                   false,
		"inputs.zero":                  false,
		"inputs.on":                    true,
		"!inputs.off":                  true,
		"!!inputs.mode":                true,
		"inputs.mode == 'safe'":        true,
		"inputs.mode == \"safe\"":      true,
		"${{ inputs.mode == 'safe' }}": true,
		"inputs.mode != 'safe'":        false,
		"inputs.port == 4000":          true,
		"inputs.port == 4000.0":        true,
		"inputs.port == '04000'":       true,
		"inputs.on == true":            true,
		"inputs.quote == 'it''s'":      true,
		"inputs.mode == 'safe' && host.name == 'gw1'":                  true,
		"inputs.mode == 'fast' || host.name == 'gw1'":                  true,
		"inputs.mode == 'fast' || host.name == 'gw2' && true":          false,
		"(inputs.mode == 'fast' || host.name == 'gw1') && !inputs.off": true,
		"!(inputs.mode == 'safe')":                                     false,
		"1 == 1":                                                       true,
		"-1 != 1":                                                      true,
		"'' == ''":                                                     true,
	} {
		got, err := EvalWhen(expr, testLookup)
		if err != nil || got != want {
			t.Errorf("%q: got %v, %v; want %v", expr, got, err, want)
		}
	}
	for _, expr := range []string{
		"", "${{ }}", "inputs.nope", "inputs.mode == 'a' == 'b'", "inputs.mode = 'safe'", "inputs.mode & true",
		"(true", "true)", "'open", "\"open", "${{ true }} && ${{ false }}", "true && ${{ false }}", "1.2.3 == 1",
		"env.HOME", "inputs.mode ==", "&& true", "true true", "inputs.mode == 'x' ;", "false || inputs.nope",
		strings.Repeat("(", 100) + "true" + strings.Repeat(")", 100), strings.Repeat("!", 100) + "true",
		strings.Repeat("a", maxExprLen+1),
	} {
		if _, err := EvalWhen(expr, testLookup); err == nil {
			t.Errorf("%q: no error", expr)
		}
	}
}

func TestWhenRefs(t *testing.T) {
	refs, err := WhenRefs("${{ inputs.a == 'x' && !steps.s.outputs.o || vars.v != 1 }}")
	want := []Ref{{Scope: "inputs", Name: "a"}, {Scope: "steps", Step: "s", Name: "o"}, {Scope: "vars", Name: "v"}}
	if err != nil || !reflect.DeepEqual(refs, want) {
		t.Errorf("%+v %v", refs, err)
	}
}
