// Package incident holds kinds that write to the incident record itself.
package incident

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/step"
)

// FollowUpSpec is the `incident.follow_up` kind: the follow-ups a procedure
// requires (review audit logs, notify key owners), as a checklist in the
// record.
var FollowUpSpec = &step.Spec{
	Name:    "incident.follow_up",
	Summary: "add follow-up items to the incident record's checklist",
	Target:  step.Once,
	Params: []step.Param{
		{Name: "items", Type: step.List, Required: true, Doc: "one line per follow-up; templates may name inputs and earlier steps' outputs"},
	},
	New: func(p step.Params) (step.Step, error) {
		items := p.Strings("items")
		for _, it := range items {
			if strings.TrimSpace(it) == "" {
				return nil, &step.ParamError{Param: "items", Err: errors.New("an empty follow-up")}
			}
		}
		return &FollowUp{Items: items}, nil
	},
}

// FollowUp adds its items to the record.
type FollowUp struct {
	Items []string
}

var _ step.Step = (*FollowUp)(nil)

// Check implements step.Step. Each run has its own record, so there is
// always something to add; a resumed run skips the step once it is done.
func (f *FollowUp) Check(context.Context, *step.Env) (step.Observation, error) {
	return step.Observation{Change: fmt.Sprintf("add %d follow-up(s) to the incident record", len(f.Items))}, nil
}

// Apply implements step.Step.
func (f *FollowUp) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	nd, ok := env.Deps.(step.NoteDep)
	if !ok {
		return nil, errors.New("this run keeps no incident record")
	}
	for _, it := range f.Items {
		if err := nd.Note(ctx, env.StepID, env.Host, journal.Note{Kind: "follow_up", Text: it}); err != nil {
			return nil, err
		}
	}
	return nil, nil
}
