package cli

import (
	"bufio"
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/secret"
)

type execOptions struct {
	planOptions
	dryRun            bool
	yes               bool
	drill             bool
	acceptNewHostKeys bool
	ifDue             ifDueOptions
}

func (o *execOptions) AddFlags(cmd *cobra.Command) {
	o.planOptions.AddFlags(cmd)
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "only plan: observe and report what would change (same as 'runbook plan')")
	cmd.Flags().BoolVarP(&o.yes, "yes", "y", false, "run without showing the plan and asking first")
	cmd.Flags().BoolVar(&o.acceptNewHostKeys, "accept-new-host-keys", false, "accept and journal the keys of hosts that known_hosts does not list (a changed key is never accepted)")
	o.ifDue.AddFlags(cmd)
}

func newExecCommand(g *globals) *cobra.Command {
	o := &execOptions{}
	cmd := &cobra.Command{
		Use:   "exec NAME",
		Short: "Run a runbook",
		Long: `exec runs a runbook against the inventory. On a terminal without --yes it shows
the plan first and asks; with no terminal it refuses unless --yes is given.
Every run is journaled: if it fails or is interrupted, 'runbook resume RUN_ID'
finishes it. Every run ends with an incident record in the records directory.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.dryRun {
				return g.runPlan(cmd.Context(), args[0], &o.planOptions)
			}
			return g.runExec(cmd.Context(), args[0], o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func (g *globals) runExec(ctx context.Context, name string, o *execOptions) error {
	if o.ifDue.ifDue {
		return g.runExecIfDue(ctx, name, o)
	}
	l, err := g.load(name)
	if err != nil {
		return err
	}
	inputs, err := resolveInputs(l.rb, o.inputs, o.reason)
	if err != nil {
		return err
	}
	if !o.yes {
		if !isTerminal(g.stdin) {
			return withCode(ExitUsage, fmt.Errorf("refusing to run %s without confirmation: no terminal to ask on", l.rb.Name), "pass --yes to run without asking, or run 'runbook plan "+name+"' first")
		}
		masker := &secret.Masker{}
		res, err := g.plan(ctx, l, inputs, masker, nil)
		if res == nil {
			return err
		}
		renderPlan(g.stdout, l, res, masker)
		if err != nil {
			fmt.Fprintf(g.stdout, "the plan is incomplete: %v\n", masker.MaskString(err.Error()))
		}
		if len(res.Changes()) == 0 && err == nil {
			fmt.Fprintln(g.stdout, "Nothing to change; running anyway records that the targets were checked.")
		}
		fmt.Fprintf(g.stdout, "Run %s on %s? Type 'yes' to continue: ", l.rb.Name, envName(l))
		answer, _ := bufio.NewReader(g.stdin).ReadString('\n')
		if strings.TrimSpace(answer) != "yes" {
			return withCode(ExitUsage, fmt.Errorf("not confirmed; nothing was changed"))
		}
	}
	return g.execute(ctx, runRequest{l: l, inputs: inputs, reason: o.reason, drill: o.drill, acceptNewHostKeys: o.acceptNewHostKeys})
}
