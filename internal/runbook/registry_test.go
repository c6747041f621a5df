package runbook

import (
	"context"
	"errors"
	"regexp"
	"testing"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/step"
)

// nopStep is the step every test kind builds: validation never runs one.
type nopStep struct{}

func (nopStep) Check(context.Context, *step.Env) (step.Observation, error) {
	return step.Observation{}, nil
}
func (nopStep) Apply(context.Context, *step.Env) (step.Outputs, error) { return nil, nil }

func newNop(step.Params) (step.Step, error) { return nopStep{}, nil }

var unitRE = regexp.MustCompile(`^[A-Za-z0-9@._-]+$`)

func validUnit(v any) error {
	if s, _ := v.(string); !unitRE.MatchString(s) {
		return errors.New("a unit name holds letters, digits, @, ., _ and - only")
	}
	return nil
}

// testRegistry has a few kinds with realistic parameters: the real
// registry lives in step/all and is tested there.
func testRegistry() *step.Registry {
	r := step.NewRegistry()
	r.Register(&step.Spec{
		Name: "command", Summary: "run a command unless a check command says it is done",
		Target: step.Either, Outputs: []string{"stdout"}, New: newNop,
		Params: []step.Param{
			{Name: "check", Type: step.String, Required: true, Doc: "exit 0 means already done"},
			{Name: "run", Type: step.String, Required: true, Doc: "the command that does it"},
			{Name: "shell", Type: step.String, Default: "/bin/sh", Allowed: []string{"/bin/sh", "/bin/bash"}},
		},
	})
	r.Register(&step.Spec{
		Name: "service.stop", Summary: "stop a systemd unit", Target: step.PerHost, New: newNop,
		Params: []step.Param{{Name: "unit", Type: step.String, Required: true, Validate: validUnit}},
	})
	r.Register(&step.Spec{
		Name: "service.start", Summary: "start a systemd unit", Target: step.PerHost, New: newNop,
		Params: []step.Param{{Name: "unit", Type: step.String, Required: true, Validate: validUnit}},
	})
	r.Register(&step.Spec{
		Name: "firewall.drop", Summary: "drop traffic to a port", Target: step.PerHost, New: newNop,
		Params: []step.Param{
			{Name: "port", Type: step.Int, Required: true, Validate: func(v any) error {
				if p := v.(int); p < 1 || p > 65535 {
					return errors.New("port must be 1-65535")
				}
				return nil
			}},
			{Name: "sources", Type: step.List},
			{Name: "chain", Type: step.String, Default: "INPUT", Allowed: []string{"INPUT", "FORWARD"}},
		},
	})
	r.Register(&step.Spec{
		Name: "vault.master_key", Summary: "write a new master key to Vault", Target: step.Once, New: newNop,
		Outputs: []string{"version", "fingerprint"},
		Params: []step.Param{
			{Name: "path", Type: step.String, Required: true},
			{Name: "length", Type: step.Int, Default: 32},
			{Name: "ttl", Type: step.Duration},
		},
	})
	r.Register(&step.Spec{
		Name: "litellm.reissue_keys", Summary: "re-issue virtual keys", Target: step.Once, New: newNop,
		Outputs: []string{"count"},
		Params: []step.Param{
			{Name: "master_key_version", Type: step.String, Required: true},
			{Name: "dry", Type: step.Bool},
		},
	})
	r.Register(&step.Spec{
		Name: "incident.note", Summary: "add a note to the incident record", Target: step.Once, New: newNop,
		Params: []step.Param{{Name: "message", Type: step.String, Required: true}},
	})
	return r
}

// testInventory is the staging inventory runbooks are validated against.
func testInventory(t testing.TB) *inventory.Inventory {
	t.Helper()
	inv, err := inventory.Load(stagingName, readRepo(t, stagingName))
	if err != nil {
		t.Fatalf("load inventory: %v", err)
	}
	return inv
}

const stagingName = "testdata/valid/inventory/staging.yaml"
