package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/secret"
)

type planOptions struct {
	inputs []string
	reason string
}

func (o *planOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&o.inputs, "input", nil, "runbook input as name=value (repeatable)")
	cmd.Flags().StringVar(&o.reason, "reason", "", "why this runs (sets the runbook's reason input, and goes into the journal and record)")
}

func newPlanCommand(g *globals) *cobra.Command {
	o := &planOptions{}
	cmd := &cobra.Command{
		Use:   "plan NAME",
		Short: "Show, per step and host, what a run would change; changes nothing",
		Long: `plan runs every step's observation against the inventory and prints, per step
and host, "ok", "change: <what>", or "change after <step>" when the outcome
depends on an earlier step's change. It writes nothing anywhere: no journal,
no lock, no record. Same as 'runbook exec NAME --dry-run'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runPlan(cmd.Context(), args[0], o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

// planJSON is the plan as data.
type planJSON struct {
	Runbook     string        `json:"runbook"`
	Environment string        `json:"environment"`
	Inventory   string        `json:"inventory"`
	Items       []engine.Item `json:"items"`
	Changes     int           `json:"changes"`
}

func (g *globals) runPlan(ctx context.Context, name string, o *planOptions) error {
	l, err := g.load(name)
	if err != nil {
		return err
	}
	inputs, err := resolveInputs(l.rb, o.inputs, o.reason)
	if err != nil {
		return err
	}
	masker := &secret.Masker{}
	res, runErr := g.plan(ctx, l, inputs, masker, nil)
	if res == nil {
		return runErr
	}
	if g.output == "json" {
		b, err := json.MarshalIndent(planJSON{Runbook: l.rb.Name, Environment: l.inv.Environment, Inventory: l.inv.File, Items: res.Items, Changes: len(res.Changes())}, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(g.stdout, masker.MaskString(string(b)))
	} else {
		renderPlan(g.stdout, l, res, masker)
	}
	if runErr != nil {
		return withCode(ExitFailed, fmt.Errorf("plan incomplete: %w", runErr))
	}
	return nil
}
