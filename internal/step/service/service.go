package service

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/internal/step"
)

// Outputs every service kind sets.
var outputs = []string{"previous_state", "state"}

func params(extra ...step.Param) []step.Param {
	return append([]step.Param{
		{Name: "unit", Type: step.String, Required: true, Validate: validateUnit,
			Doc: "the unit, as systemctl names it (litellm or litellm.service)"},
		{Name: "manager", Type: step.String, Default: "systemd", Allowed: []string{"systemd"},
			Doc: "the service manager"},
	}, extra...)
}

// maxUnit is systemd's limit on a unit name's length (UNIT_NAME_MAX less
// the terminating NUL).
const maxUnit = 255

// ValidateUnit accepts a systemd unit name: ASCII letters, digits and
// ":-_.\@", at most 255 bytes, not starting with '-' or '.'. Anything else
// is refused before a command is built, so nothing in a unit name can be
// read by a shell or by systemctl as an option.
func ValidateUnit(u string) error {
	if u == "" {
		return errors.New("empty unit name")
	}
	if len(u) > maxUnit {
		return fmt.Errorf("unit name longer than %d bytes", maxUnit)
	}
	if u[0] == '-' || u[0] == '.' {
		return fmt.Errorf("unit name %q starts with %q", u, u[0])
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(":-_.\\@", c) >= 0 {
			continue
		}
		return fmt.Errorf("unit name %q holds %q, which systemd unit names do not", u, c)
	}
	return nil
}

func validateUnit(v any) error {
	s, ok := v.(string)
	if !ok {
		return errors.New("want a string")
	}
	return ValidateUnit(s)
}

// unitStep is what the three kinds share: a unit, a manager, and the verb
// that brings the unit to the wanted state.
type unitStep struct {
	Unit    string
	Manager Manager
	verb    Verb
	// needed says whether the verb must run given the current state;
	// describe is the plan's text for it.
	needed func(State) bool
}

func newUnitStep(p step.Params, verb Verb, needed func(State) bool) (unitStep, error) {
	u := unitStep{Unit: p.String("unit"), verb: verb, needed: needed}
	if err := ValidateUnit(u.Unit); err != nil {
		return u, &step.ParamError{Param: "unit", Err: err}
	}
	switch m := p.String("manager"); m {
	case "", "systemd":
	default:
		return u, &step.ParamError{Param: "manager", Err: fmt.Errorf("unknown manager %q", m)}
	}
	return u, nil
}

func (u *unitStep) manager(env *step.Env) Manager {
	if u.Manager != nil {
		return u.Manager
	}
	return Systemd{Mask: env.Secrets}
}

// Check implements step.Step.
func (u *unitStep) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	st, err := u.manager(env).State(ctx, env.Transport, u.Unit)
	if err != nil {
		return step.Observation{}, err
	}
	obs := step.Observation{Outputs: step.Outputs{"previous_state": st.Active, "state": st.Active}}
	if u.needed(st) {
		obs.Change = fmt.Sprintf("%s %s (%s)", u.verb, u.Unit, st.Active)
	}
	return obs, nil
}

// Apply implements step.Step.
func (u *unitStep) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	st, err := u.manager(env).Act(ctx, env.Transport, u.verb, u.Unit)
	if err != nil {
		return nil, err
	}
	out := step.Outputs{"state": st.Active}
	switch u.verb {
	case Stop:
		if !st.Stopped() {
			return out, fmt.Errorf("stop %s on %s: the unit is %s after the stop", u.Unit, env.Transport.Host(), st.Active)
		}
	case Start, Restart:
		if st.Active != "active" {
			return out, fmt.Errorf("%s %s on %s: the unit is %s after the %s", u.verb, u.Unit, env.Transport.Host(), st.Active, u.verb)
		}
	}
	return out, nil
}
