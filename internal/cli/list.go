package cli

import (
	"fmt"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/runbook"
)

func newListCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the runbooks in the runbooks directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := filepath.Glob(filepath.Join(g.runbooksDir, "*.yaml"))
			if err != nil {
				return err
			}
			sort.Strings(files)
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTEPS\tSCHEDULE\tDESCRIPTION")
			for _, f := range files {
				rb, err := runbook.LoadFile(f)
				if err != nil {
					fmt.Fprintf(tw, "%s\t-\t-\tinvalid: run 'runbook validate %s'\n", filepath.Base(f), f)
					continue
				}
				sched := "-"
				if rb.Schedule > 0 {
					sched = formatDays(rb.Schedule)
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", rb.Name, len(rb.Steps), sched, firstLine(rb.Description))
			}
			return tw.Flush()
		},
	}
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}

// formatDays prints whole days as "90d", anything else as Go does.
func formatDays(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}
