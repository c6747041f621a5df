package cli

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step/rollout"
)

type rollbackOptions struct {
	yes               bool
	acceptNewHostKeys bool
}

func (o *rollbackOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&o.yes, "yes", "y", false, "run without showing the plan and asking first")
	cmd.Flags().BoolVar(&o.acceptNewHostKeys, "accept-new-host-keys", false, "accept and journal the keys of hosts that known_hosts does not list (a changed key is never accepted)")
}

func newRollbackCommand(g *globals) *cobra.Command {
	o := &rollbackOptions{}
	cmd := &cobra.Command{
		Use:   "rollback RUN_ID",
		Short: "Put back, on every gateway, the master key a run's rollout replaced",
		Long: `rollback undoes the litellm.rollout steps of a run, latest first: each becomes
a rollout, in rollback mode, of the version that was current when the
version it rolled out was written, with the step's own settings (hosts,
Vault path, batches, health gate) as the run resolved them. Gateways that
already run that version are left alone; the others go back in batches
behind the same health gate, halting at the first that fails it. Salt-key
pinning is kept and containment is not lifted.

The rollback is a run of its own, journaled and recorded; its runbook is
written to the records directory under rollbacks/. It refuses when the
run's runbook or inventory changed since the run began.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runRollback(cmd.Context(), args[0], o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func (g *globals) runRollback(ctx context.Context, runID string, o *rollbackOptions) error {
	store, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	_, st, err := g.loadRun(ctx, store, runID)
	store.Close()
	if err != nil {
		return err
	}
	h := st.Header
	orig, err := reloadRun(st, "rollback", "restore the files as they were; the rollback re-reads the rollout's settings from them")
	if err != nil {
		return err
	}
	reg, inv := orig.reg, orig.inv
	steps, skipped, err := rollbackSteps(orig.rb, inv, st)
	if err != nil {
		return withCode(ExitUsage, fmt.Errorf("rollback %s: %w", runID, err))
	}
	for _, s := range skipped {
		fmt.Fprintf(g.stdout, "rollback %s: %s\n", runID, s)
	}
	if len(steps) == 0 {
		return withCode(ExitUsage, fmt.Errorf("rollback %s: the run rolled out no master key; there is nothing to roll back", runID))
	}
	text, err := yaml.Marshal(rollbackRunbook{
		Name:        "rollback-" + runID,
		Description: fmt.Sprintf("Put back the master key that run %s (%s) rolled out over.\nWritten by 'runbook rollback %s'.\n", runID, h.Runbook, runID),
		Steps:       steps,
	})
	if err != nil {
		return withCode(ExitInternal, fmt.Errorf("rollback %s: %w", runID, err))
	}
	dir := filepath.Join(g.recordsDir, "rollbacks")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return withCode(ExitInternal, fmt.Errorf("rollback %s: %w", runID, err))
	}
	path := filepath.Join(dir, runID+".yaml")
	header := "# Written by 'runbook rollback " + runID + "'. Keep it: a resume of the rollback run reads it.\n"
	if err := os.WriteFile(path, append([]byte(header), text...), 0o644); err != nil {
		return withCode(ExitInternal, fmt.Errorf("rollback %s: %w", runID, err))
	}
	rrb, err := runbook.LoadFile(path)
	if err != nil {
		return withCode(ExitInternal, fmt.Errorf("rollback %s: the runbook written to %s: %w", runID, path, err))
	}
	if err := runbook.Validate(rrb, reg, inv); err != nil {
		return withCode(ExitInternal, fmt.Errorf("rollback %s: the runbook written to %s: %w", runID, path, err))
	}
	l := &loaded{rb: rrb, inv: inv, reg: reg}
	reason := "rollback of run " + runID
	if !o.yes {
		if !isTerminal(g.stdin) {
			return withCode(ExitUsage, fmt.Errorf("refusing to roll back %s without confirmation: no terminal to ask on", runID), "pass --yes to run without asking")
		}
		masker := &secret.Masker{}
		res, err := g.plan(ctx, l, nil, masker, nil)
		if res == nil {
			return err
		}
		renderPlan(g.stdout, l, res, masker)
		if err != nil {
			fmt.Fprintf(g.stdout, "the plan is incomplete: %v\n", masker.MaskString(err.Error()))
		}
		fmt.Fprintf(g.stdout, "Roll back run %s on %s? Type 'yes' to continue: ", runID, envName(l))
		answer, _ := bufio.NewReader(g.stdin).ReadString('\n')
		if strings.TrimSpace(answer) != "yes" {
			return withCode(ExitUsage, fmt.Errorf("not confirmed; nothing was changed"))
		}
	}
	return g.execute(ctx, runRequest{l: l, inputs: map[string]string{}, reason: reason, acceptNewHostKeys: o.acceptNewHostKeys})
}

// rollbackRunbook is the runbook rollback writes.
type rollbackRunbook struct {
	Name        string         `yaml:"name"`
	Description string         `yaml:"description"`
	Steps       []rollbackStep `yaml:"steps"`
}

type rollbackStep struct {
	ID      string         `yaml:"id"`
	Name    string         `yaml:"name"`
	Kind    string         `yaml:"kind"`
	With    map[string]any `yaml:"with"`
	Timeout string         `yaml:"timeout,omitempty"`
}

// Parameters a rollback does not carry over from the rollout: it keeps
// the salt key as it is and lifts no containment.
var rollbackDrops = map[string]bool{"salt": true, "lift_run_id": true, "lift_tag": true, "mode": true, "version": true}

// rollbackSteps turns the run's rollouts, latest first, into rollback
// steps: each step's parameters as the run expanded them (its inputs,
// run id, inventory variables and the outputs the journal holds), in
// rollback mode, from the version its rollout_target note names.
func rollbackSteps(rb *runbook.Runbook, inv *inventory.Inventory, st *journal.State) ([]rollbackStep, []string, error) {
	h := st.Header
	targets := map[string]map[string]string{}
	for _, rec := range st.Notes {
		if rec.Note != nil && rec.Note.Kind == "rollout_target" {
			targets[rec.Step] = rec.Note.Fields
		}
	}
	look := func(r runbook.Ref) (string, bool) {
		switch r.Scope {
		case runbook.ScopeInputs:
			v, ok := h.Inputs[r.Name]
			return v, ok
		case runbook.ScopeVars:
			v, ok := inv.Vars[r.Name]
			return v, ok
		case runbook.ScopeRun:
			if r.Name == "id" {
				return h.RunID, true
			}
		case runbook.ScopeSteps:
			out := st.Outputs(r.Step, "")
			v, ok := out[r.Name]
			return v, ok
		}
		return "", false
	}
	var steps []rollbackStep
	var skipped []string
	for i := len(rb.Steps) - 1; i >= 0; i-- {
		s := rb.Steps[i]
		if s.Kind != rollout.Spec.Name {
			continue
		}
		f, ok := targets[s.ID]
		if !ok {
			skipped = append(skipped, fmt.Sprintf("step %s rolled nothing out", s.ID))
			continue
		}
		if f["mode"] == rollout.ModeRollback {
			skipped = append(skipped, fmt.Sprintf("step %s was itself a rollback; roll it forward with a new run", s.ID))
			continue
		}
		if salt, _ := s.With["salt"].V.(string); salt == rollout.SaltPin {
			skipped = append(skipped, fmt.Sprintf("step %s pinned the salt key; it stays pinned", s.ID))
			continue
		}
		version, err := strconv.Atoi(f["version"])
		if err != nil || version <= 0 {
			return nil, nil, fmt.Errorf("step %s: its rollout_target note names no version", s.ID)
		}
		with := map[string]any{}
		for name, v := range s.With {
			if rollbackDrops[name] {
				continue
			}
			x, err := expandLiteral(v.V, look)
			if err != nil {
				return nil, nil, fmt.Errorf("step %s: with.%s: %w", s.ID, name, err)
			}
			with[name] = x
		}
		if salt, _ := s.With["salt"].V.(string); salt == rollout.SaltIgnore {
			with["salt"] = rollout.SaltIgnore
		}
		with["mode"] = rollout.ModeRollback
		with["version"] = version
		rs := rollbackStep{
			ID:   "rollback-" + s.ID,
			Name: fmt.Sprintf("Put back the master key that step %s replaced with version %d", s.ID, version),
			Kind: rollout.Spec.Name,
			With: with,
		}
		if s.Timeout > 0 {
			rs.Timeout = s.Timeout.String()
		}
		steps = append(steps, rs)
	}
	return steps, skipped, nil
}

// expandLiteral expands the templates in a parameter value as the run
// did. The result goes into a runbook as a literal, so a referenced value
// that would read as a template there is refused.
func expandLiteral(v any, look runbook.Lookup) (any, error) {
	return runbook.ExpandValue(v, func(r runbook.Ref) (string, bool) {
		s, ok := look(r)
		if ok && runbook.HasTemplate(s) {
			return "", false
		}
		return s, ok
	})
}
