package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/state"
	"github.com/runbook-dev/runbook/internal/step/all"
)

func newResumeCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume RUN_ID",
		Short: "Finish an interrupted or failed run",
		Long: `resume finishes a run from its journal: work recorded as done is skipped, work
with an intent but no outcome is checked again before acting, failed work is
tried again. It refuses, naming what differs, when the runbook or inventory
file changed since the run began.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runResume(cmd.Context(), args[0])
		},
	}
}

// loadRun reads and verifies a run's journal.
func (g *globals) loadRun(ctx context.Context, store state.Store, runID string) ([]journal.Record, *journal.State, error) {
	recs, err := store.Journal(ctx, runID)
	if errors.Is(err, state.ErrNoRun) {
		return nil, nil, withCode(ExitUsage, fmt.Errorf("no run %s in the state store %s", runID, g.stateURL), "list runs with: runbook runs")
	}
	if err != nil {
		return nil, nil, withCode(ExitInternal, fmt.Errorf("read journal of %s: %w", runID, err))
	}
	st, err := journal.Replay(recs)
	if err != nil {
		return nil, nil, withCode(ExitInternal, fmt.Errorf("run %s: %w", runID, err))
	}
	return recs, st, nil
}

func (g *globals) runResume(ctx context.Context, runID string) error {
	store, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	_, st, err := g.loadRun(ctx, store, runID)
	if err != nil {
		store.Close()
		return err
	}
	if st.End != nil && st.End.Status == journal.StatusSucceeded {
		// The runner may have died between its end record and the incident
		// record: write the record again (it is rebuilt from the journal).
		paths, err := g.writeRecord(ctx, store, runID)
		store.Close()
		if err != nil {
			return withCode(ExitInternal, err)
		}
		fmt.Fprintf(g.stdout, "run %s succeeded; there is nothing to resume\nrecord: %s\n", runID, paths[1])
		return nil
	}
	store.Close()
	h := st.Header
	l, err := reloadRun(st, "resume", "restore the files as they were, or start a new run with 'runbook exec'")
	if err != nil {
		return err
	}
	if err := runbook.Validate(l.rb, l.reg, l.inv); err != nil {
		return withCode(ExitUsage, err)
	}
	return g.execute(ctx, runRequest{l: l, inputs: h.Inputs, reason: h.Reason, drill: h.Drill, runID: runID, replay: st})
}

// reloadRun loads the runbook and inventory a run began with, from the
// paths its journal header names, and refuses (naming what differs) when
// either changed since: verb is the operation refused ("resume",
// "rollback"), hint says what to do about it.
func reloadRun(st *journal.State, verb, hint string) (*loaded, error) {
	h := st.Header
	rb, err := runbook.LoadFile(h.RunbookFile)
	if err != nil {
		return nil, withCode(ExitResumeRefused, fmt.Errorf("%s %s: %w", verb, h.RunID, err))
	}
	inv, err := inventory.LoadFile(h.InventoryFile)
	if err != nil {
		return nil, withCode(ExitResumeRefused, fmt.Errorf("%s %s: %w", verb, h.RunID, err))
	}
	var differs []string
	if rb.Digest != h.RunbookDigest {
		differs = append(differs, fmt.Sprintf("runbook %s (was %s, now %s)", h.RunbookFile, h.RunbookDigest, rb.Digest))
	}
	if inv.Digest != h.InventoryDigest {
		differs = append(differs, fmt.Sprintf("inventory %s (was %s, now %s)", h.InventoryFile, h.InventoryDigest, inv.Digest))
	}
	if len(differs) > 0 {
		return nil, withCode(ExitResumeRefused,
			fmt.Errorf("%s %s refused: changed since the run began: %s", verb, h.RunID, strings.Join(differs, "; ")), hint)
	}
	return &loaded{rb: rb, inv: inv, reg: all.Registry()}, nil
}
