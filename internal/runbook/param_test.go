package runbook

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/step"
)

func TestConvertParam(t *testing.T) {
	for _, c := range []struct {
		p    step.Param
		in   any
		want any
	}{
		{step.Param{Type: step.String}, "x", "x"},
		{step.Param{Type: step.String}, 4000, "4000"},
		{step.Param{Type: step.Int}, 4000, 4000},
		{step.Param{Type: step.Int}, " 4000 ", 4000},
		{step.Param{Type: step.Int}, int64(-3), -3},
		{step.Param{Type: step.Bool}, true, true},
		{step.Param{Type: step.Bool}, "false", false},
		{step.Param{Type: step.Duration}, "90d", 90 * 24 * time.Hour},
		{step.Param{Type: step.Duration}, 5 * time.Second, 5 * time.Second},
		{step.Param{Type: step.List}, []any{"a", 1}, []string{"a", "1"}},
		{step.Param{Type: step.List}, "a", []string{"a"}},
		{step.Param{Type: step.List}, []string{"b"}, []string{"b"}},
		{step.Param{Type: step.String, Allowed: []string{"a", "b"}}, "b", "b"},
		{step.Param{Type: step.List, Allowed: []string{"a", "b"}}, []any{"b", "a"}, []string{"b", "a"}},
	} {
		got, err := ConvertParam(c.p, c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s %#v: got %#v, %v", c.p.Type, c.in, got, err)
		}
	}
	bad := errors.New("refused")
	for _, c := range []struct {
		p    step.Param
		in   any
		want string
	}{
		{step.Param{Type: step.String}, true, "want a string, got a boolean (true)"},
		{step.Param{Type: step.String}, []any{"a"}, "want a string, got a list"},
		{step.Param{Type: step.Int}, "4k", `want an integer, got a string "4k"`},
		{step.Param{Type: step.Int}, 1.5, "want an integer, got a number (1.5)"},
		{step.Param{Type: step.Bool}, "yes", `want true or false, got a string "yes"`},
		{step.Param{Type: step.Duration}, 30, `duration "30" needs a unit`},
		{step.Param{Type: step.Duration}, "-5s", "must not be negative"},
		{step.Param{Type: step.Duration}, "soon", `invalid duration "soon"`},
		{step.Param{Type: step.List}, map[string]any{}, "want a list of strings, got a mapping"},
		{step.Param{Type: step.List}, []any{true}, "element 0: want a string"},
		{step.Param{Type: step.String, Allowed: []string{"a"}}, "c", `"c" is not one of a`},
		{step.Param{Type: step.List, Allowed: []string{"a"}}, []any{"a", "c"}, `"c" is not one of a`},
		{step.Param{Type: step.String, Validate: func(any) error { return bad }}, "x", "refused"},
		{step.Param{Type: "float"}, 1.5, `unknown parameter type "float"`},
		{step.Param{Type: step.String}, "sk-1234567890abcdefXYZ1", ""},
		{step.Param{Type: step.Int}, "sk-1234567890abcdefXYZ1", "want an integer, got a string [REDACTED]"},
	} {
		_, err := ConvertParam(c.p, c.in)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s %#v: %v", c.p.Type, c.in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %#v: got %v, want %q", c.p.Type, c.in, err, c.want)
		}
	}
}

// TestValidateBuiltRunbook checks a runbook built in code, without the
// decoder's positions, validates and reports at step positions.
func TestValidateBuiltRunbook(t *testing.T) {
	rb := &Runbook{
		File: "built.yaml",
		Name: "built",
		Steps: []Step{
			{ID: "a", Kind: "service.stop", On: []string{"gateways"}, With: map[string]Value{"unit": {V: "litellm"}}, Pos: Pos{Line: 3, Col: 5}},
			{ID: "b", Kind: "incident.note", With: map[string]Value{"message": {V: "${{ steps.a.outputs.x }}", Pos: Pos{Line: 9, Col: 7}}}, Pos: Pos{Line: 8, Col: 5}},
		},
	}
	err := Validate(rb, testRegistry(), testInventory(t))
	want := `built.yaml:9:7: steps[1].with.message: step "a" (kind service.stop) has no outputs`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	rb.Steps[1].With["message"] = Value{V: "hi"}
	if err := Validate(rb, testRegistry(), nil); err != nil {
		t.Error(err)
	}
	if err := Validate(rb, nil, nil); err != nil {
		t.Errorf("without a registry: %v", err)
	}
}
