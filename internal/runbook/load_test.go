package runbook

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// repoRoot is the repository's top directory, where testdata/ lives.
const repoRoot = "../.."

// readRepo reads a file named relative to the repository's top.
func readRepo(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestValidRunbooks(t *testing.T) {
	reg := testRegistry()
	inv := testInventory(t)
	names, _ := filepath.Glob(filepath.Join(repoRoot, "testdata/valid/runbooks/*.yaml"))
	if len(names) < 3 {
		t.Fatalf("found %d valid runbooks", len(names))
	}
	for _, full := range names {
		name, _ := filepath.Rel(repoRoot, full)
		t.Run(filepath.Base(name), func(t *testing.T) {
			rb, err := Load(name, readRepo(t, name))
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if err := Validate(rb, reg, inv); err != nil {
				t.Fatalf("validate: %v", err)
			}
			if err := Validate(rb, reg, nil); err != nil {
				t.Fatalf("validate without inventory: %v", err)
			}
		})
	}
}

func TestDecodeCompromiseMaster(t *testing.T) {
	name := "testdata/valid/runbooks/compromise-master.yaml"
	data := readRepo(t, name)
	rb, err := Load(name, data)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Name != "compromise-master" || rb.File != name || rb.Digest != Digest(data) || !strings.HasPrefix(rb.Digest, "sha256:") {
		t.Errorf("header: %q %q %q", rb.Name, rb.File, rb.Digest)
	}
	wantInputs := []Input{
		{Name: "reason", Type: InputString, Required: true, Description: "Why we rotate, for the incident record"},
		{Name: "port", Type: InputInt, Default: "4000", HasDefault: true},
		{Name: "mode", Type: InputString, Default: "fast", HasDefault: true, Allowed: []string{"fast", "safe"}},
		{Name: "drain", Type: InputDuration, Default: "30s", HasDefault: true},
		{Name: "dry_run", Type: InputBool, Default: "false", HasDefault: true},
	}
	for i := range rb.Inputs {
		rb.Inputs[i].Pos = Pos{}
	}
	if !reflect.DeepEqual(rb.Inputs, wantInputs) {
		t.Errorf("inputs:\n got %+v\nwant %+v", rb.Inputs, wantInputs)
	}
	if len(rb.Phases) != 3 || rb.Phases[0].Name != "contain" || rb.Phases[0].Target != 5*time.Minute || rb.Phases[2].Name != "recover" {
		t.Errorf("phases: %+v", rb.Phases)
	}
	if len(rb.Steps) != 6 {
		t.Fatalf("steps: %d", len(rb.Steps))
	}
	s := rb.Steps[0]
	if s.ID != "stop-proxy" || s.Name != "Stop the proxy" || s.Kind != "service.stop" || s.Phase != "contain" ||
		!reflect.DeepEqual(s.On, []string{"gateways"}) || s.Timeout != 30*time.Second ||
		!reflect.DeepEqual(s.Retry, &Retry{Attempts: 3, Initial: 200 * time.Millisecond, Max: 2 * time.Second}) ||
		s.Batch != (Batch{Parallel: 5, OnFailure: OnFailureContinue}) {
		t.Errorf("step 0: %+v", s)
	}
	if s.Pos != (Pos{File: name, Line: 17, Col: 5}) {
		t.Errorf("step 0 pos: %+v", s.Pos)
	}
	if v := s.With["unit"]; v.V != "${{ vars.litellm_unit }}" || v.Pos.Line != 22 {
		t.Errorf("step 0 with: %+v", s.With)
	}
	s = rb.Steps[1]
	if !reflect.DeepEqual(s.After, []string{"stop-proxy"}) || s.When != "${{ inputs.mode == 'safe' }}" ||
		!reflect.DeepEqual(s.With["sources"].V, []any{"198.18.0.0/15"}) || s.Batch.OnFailure != OnFailureAbort {
		t.Errorf("step 1: %+v", s)
	}
	if v := rb.Steps[3].With["dry"].V; v != false {
		t.Errorf("bool param: %#v", v)
	}
	if len(rb.Steps[2].On) != 0 {
		t.Errorf("once step has on: %v", rb.Steps[2].On)
	}
}

func TestScheduleAndShortForms(t *testing.T) {
	name := "testdata/valid/runbooks/rotate-master.yaml"
	rb, err := Load(name, readRepo(t, name))
	if err != nil {
		t.Fatal(err)
	}
	if rb.Schedule != 90*24*time.Hour {
		t.Errorf("schedule %v", rb.Schedule)
	}
	if r := rb.Steps[1].Retry; r == nil || r.Attempts != 2 {
		t.Errorf("retry short form: %+v", r)
	}
	if v := rb.Steps[0].With["length"].V; v != 48 {
		t.Errorf("int param: %#v", v)
	}
}

func TestErrorsAreDecodeErrors(t *testing.T) {
	_, err := Load("x.yaml", []byte("name: x\nsteps: []\nbogus: 1\n"))
	var list DecodeErrors
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
	var de *DecodeError
	if !errors.As(err, &de) || de.File != "x.yaml" || de.Line != 2 || de.Col != 8 {
		t.Fatalf("first error: %+v", de)
	}
	want := `x.yaml:2:8: steps: a runbook needs at least one step
  2 | steps: []
    |        ^
x.yaml:3:1: unknown key "bogus"
  3 | bogus: 1
    | ^
  hint: allowed keys: name, description, schedule, inputs, phases, steps`
	if err.Error() != want {
		t.Errorf("got\n%s\nwant\n%s", err, want)
	}
}

func TestLoadFile(t *testing.T) {
	rb, err := LoadFile(filepath.Join(repoRoot, "testdata/valid/runbooks/local-command.yaml"))
	if err != nil || rb.Name != "local-command" {
		t.Fatalf("%v %v", rb, err)
	}
	if _, err := LoadFile(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.HasPrefix(err.Error(), "read runbook: ") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestParseDuration(t *testing.T) {
	for s, want := range map[string]time.Duration{
		"90d": 90 * 24 * time.Hour, "2w": 14 * 24 * time.Hour, "1w2d12h": 9*24*time.Hour + 12*time.Hour,
		"200ms": 200 * time.Millisecond, "1h30m": 90 * time.Minute, "1.5h": 90 * time.Minute, "0s": 0,
	} {
		got, err := ParseDuration(s)
		if err != nil || got != want {
			t.Errorf("%s: %v %v", s, got, err)
		}
	}
	for _, s := range []string{"", "d", "1", "1x", "1h2d", "1d-1h", "99999999999999999w", "--1s", "1d 2h", "-", "+", "1.5d"} {
		if _, err := ParseDuration(s); err == nil {
			t.Errorf("%q: no error", s)
		}
	}
}
