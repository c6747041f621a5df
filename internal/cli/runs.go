package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/state"
)

func newRunsCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "runs",
		Short: "List runs and their state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runRuns(cmd.Context())
		},
	}
}

func (g *globals) runRuns(ctx context.Context) error {
	store, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	defer store.Close()
	runs, err := store.Runs(ctx)
	if err != nil {
		return withCode(ExitInternal, fmt.Errorf("list runs: %w", err))
	}
	for i := range runs {
		if runs[i].Status == journal.StatusRunning {
			runs[i].Status = liveStatus(ctx, store, runs[i].RunID)
		}
	}
	if g.output == "json" {
		b, err := json.MarshalIndent(runs, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(g.stdout, string(b))
		return nil
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tRUNBOOK\tENVIRONMENT\tSTATUS\tSTARTED (UTC)\tUPDATED (UTC)\tOPERATOR")
	for _, r := range runs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.RunID, r.Runbook, r.Environment, r.Status,
			r.Started.UTC().Format(time.DateTime), r.Updated.UTC().Format(time.DateTime), r.Operator)
	}
	return tw.Flush()
}

// liveStatus tells a run whose journal has no end apart: "running" while
// its runner holds the lock, "interrupted" once that runner is gone.
func liveStatus(ctx context.Context, store state.Store, runID string) string {
	recs, err := store.Journal(ctx, runID)
	if err != nil || len(recs) == 0 || recs[0].Header == nil {
		return journal.StatusInterrupted
	}
	probe := state.Holder{RunID: "probe-" + runID, Operator: "runbook runs", Since: time.Now()}
	lock, err := store.Lock(ctx, recs[0].Header.Target, probe)
	var held *state.LockHeldError
	if errors.As(err, &held) && held.Holder.RunID == runID {
		return journal.StatusRunning
	}
	if err == nil {
		_ = lock.Release(ctx)
	}
	return journal.StatusInterrupted
}
