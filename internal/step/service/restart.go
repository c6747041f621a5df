package service

import "github.com/runbook-dev/runbook/internal/step"

// RestartSpec is the `service.restart` kind.
var RestartSpec = &step.Spec{
	Name:    "service.restart",
	Summary: "restart a service (always a change; with if_active, only a running one)",
	Target:  step.PerHost,
	Params: params(step.Param{Name: "if_active", Type: step.Bool, Default: false,
		Doc: "restart only when the unit is running; a stopped unit is then ok and stays stopped"}),
	Outputs: outputs,
	New:     newRestart,
}

// RestartStep restarts a unit. A restart has no observable end state that
// says it happened, so it is a change on every run; with IfActive a unit
// that is not running is left alone.
type RestartStep struct {
	unitStep
	IfActive bool
}

var _ step.Step = (*RestartStep)(nil)

func newRestart(p step.Params) (step.Step, error) {
	r := &RestartStep{IfActive: p.Bool("if_active")}
	u, err := newUnitStep(p, Restart, func(s State) bool { return !r.IfActive || s.Running() })
	if err != nil {
		return nil, err
	}
	r.unitStep = u
	return r, nil
}
