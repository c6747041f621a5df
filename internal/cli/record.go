package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/record"
)

type recordOptions struct {
	last bool
}

func (o *recordOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.last, "last", false, "the most recent run")
}

func newRecordCommand(g *globals) *cobra.Command {
	o := &recordOptions{}
	cmd := &cobra.Command{
		Use:   "record RUN_ID | --last",
		Short: "Print a run's incident record (Markdown, or JSON with -o json)",
		Args: func(cmd *cobra.Command, args []string) error {
			if o.last && len(args) == 0 || !o.last && len(args) == 1 {
				return nil
			}
			return usageError("record takes one RUN_ID, or --last")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			return g.runRecord(cmd.Context(), id)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func (g *globals) runRecord(ctx context.Context, runID string) error {
	store, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	defer store.Close()
	if runID == "" {
		runs, err := store.Runs(ctx)
		if err != nil {
			return withCode(ExitInternal, fmt.Errorf("list runs: %w", err))
		}
		if len(runs) == 0 {
			return usageError("no runs in the state store %s", g.stateURL)
		}
		runID = runs[0].RunID
	}
	recs, _, err := g.loadRun(ctx, store, runID)
	if err != nil {
		return err
	}
	r, err := record.Build(recs)
	if err != nil {
		return withCode(ExitInternal, err)
	}
	if g.output == "json" {
		b, err := r.JSON()
		if err != nil {
			return err
		}
		_, err = g.stdout.Write(b)
		return err
	}
	_, err = fmt.Fprint(g.stdout, string(r.Markdown()))
	return err
}
