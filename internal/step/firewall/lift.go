package firewall

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/runbook-dev/runbook/internal/step"
)

// LiftSpec is the `firewall.lift` kind.
var LiftSpec = &step.Spec{
	Name:    "firewall.lift",
	Summary: "remove the firewall rules a run (or a tag) made; ok when there are none",
	Target:  step.PerHost,
	Params: []step.Param{
		{Name: "run_id", Type: step.String, Validate: validateRunID,
			Doc: "remove the rules of this run (for this run: ${{ run.id }})"},
		{Name: "tag", Type: step.String, Validate: validateTag,
			Doc: "remove the rules with this tag (the firewall.drop step id, or its tag parameter), from any run"},
		{Name: "chain", Type: step.String, Default: "INPUT", Validate: validateChain, Doc: "the filter table's chain the rules are in"},
		{Name: "families", Type: step.List, Default: []string{IPv4, IPv6}, Allowed: []string{IPv4, IPv6}, Doc: "ipv4 (iptables), ipv6 (ip6tables) or both"},
	},
	Outputs: []string{"removed"},
	New:     newLift,
}

func validateRunID(v any) error {
	s, _ := v.(string)
	return ValidateTag("run id", s)
}

// Lift removes the rules whose comment names RunID and Tag (an empty one
// matches any).
type Lift struct {
	RunID    string
	Tag      string
	Chain    string
	Families []string

	rules []Rule // found by Check
}

var _ step.Step = (*Lift)(nil)

func newLift(p step.Params) (step.Step, error) {
	l := &Lift{RunID: p.String("run_id"), Tag: p.String("tag")}
	if l.RunID == "" && l.Tag == "" {
		return nil, &step.ParamError{Param: "run_id", Err: errors.New("give run_id, tag or both: lift removes only rules it can name")}
	}
	if l.RunID != "" {
		if err := ValidateTag("run id", l.RunID); err != nil {
			return nil, &step.ParamError{Param: "run_id", Err: err}
		}
	}
	if l.Tag != "" {
		if err := ValidateTag("tag", l.Tag); err != nil {
			return nil, &step.ParamError{Param: "tag", Err: err}
		}
	}
	var err error
	if l.Chain, l.Families, err = chainAndFamilies(p); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Lift) find(ctx context.Context, env *step.Env) ([]Rule, error) {
	var list []op
	for _, f := range l.Families {
		list = append(list, op{Op: "-S", Rule: Rule{Family: f, Chain: l.Chain}})
	}
	res, _, err := backendFor(env.Transport, env.Secrets).exec(ctx, list, false)
	if err != nil {
		return nil, err
	}
	var rules []Rule
	for i, f := range l.Families {
		for _, r := range parseListing(f, l.Chain, res[i].Out) {
			if (l.RunID == "" || r.Run == l.RunID) && (l.Tag == "" || r.Tag == l.Tag) {
				rules = append(rules, r.Rule)
			}
		}
	}
	return rules, nil
}

func (l *Lift) what() string {
	switch {
	case l.RunID != "" && l.Tag != "":
		return "of run " + l.RunID + " tagged " + l.Tag
	case l.RunID != "":
		return "of run " + l.RunID
	}
	return "tagged " + l.Tag
}

// Check implements step.Step: one session lists the chains.
func (l *Lift) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	rules, err := l.find(ctx, env)
	if err != nil {
		return step.Observation{}, err
	}
	l.rules = rules
	obs := step.Observation{Outputs: step.Outputs{"removed": "0"}}
	if len(rules) > 0 {
		obs.Change = fmt.Sprintf("remove %d firewall rules %s from %s", len(rules), l.what(), l.Chain)
	}
	return obs, nil
}

// Apply implements step.Step: one session deletes each rule Check found
// that iptables -C still finds.
func (l *Lift) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	rules := l.rules
	if rules == nil {
		var err error
		if rules, err = l.find(ctx, env); err != nil {
			return nil, err
		}
	}
	var ops []op
	for _, r := range rules {
		ops = append(ops, op{Op: "-C", Rule: r}, op{Op: "-D", Rule: r, OnlyIf: len(ops) + 1})
	}
	res, _, err := backendFor(env.Transport, env.Secrets).exec(ctx, ops, false)
	if err != nil {
		return nil, fmt.Errorf("delete firewall rules: %w", err)
	}
	n := 0
	for i := 1; i < len(res); i += 2 {
		if res[i].Ran && res[i].OK {
			n++
		}
	}
	return step.Outputs{"removed": strconv.Itoa(n)}, nil
}
