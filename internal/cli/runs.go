package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
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
