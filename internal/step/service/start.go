package service

import "github.com/runbook-dev/runbook/internal/step"

// StartSpec is the `service.start` kind.
var StartSpec = &step.Spec{
	Name:    "service.start",
	Summary: "start a service; ok when it is already active",
	Target:  step.PerHost,
	Params:  params(),
	Outputs: outputs,
	New:     newStart,
}

// StartStep starts a unit that is not active.
type StartStep struct{ unitStep }

var _ step.Step = (*StartStep)(nil)

func newStart(p step.Params) (step.Step, error) {
	u, err := newUnitStep(p, Start, func(s State) bool { return s.Active != "active" })
	if err != nil {
		return nil, err
	}
	return &StartStep{u}, nil
}
