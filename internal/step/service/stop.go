package service

import "github.com/runbook-dev/runbook/internal/step"

// StopSpec is the `service.stop` kind.
var StopSpec = &step.Spec{
	Name:    "service.stop",
	Summary: "stop a service; ok when it is already stopped",
	Target:  step.PerHost,
	Params:  params(),
	Outputs: outputs,
	New:     newStop,
}

// StopStep stops a unit that is not stopped (inactive or failed).
type StopStep struct{ unitStep }

var _ step.Step = (*StopStep)(nil)

func newStop(p step.Params) (step.Step, error) {
	u, err := newUnitStep(p, Stop, func(s State) bool { return !s.Stopped() })
	if err != nil {
		return nil, err
	}
	return &StopStep{u}, nil
}
