package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/step/all"
)

func newKindsCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "kinds [KIND]",
		Short: "List every step kind, or show one kind's parameters",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg := all.Registry()
			if len(args) == 0 {
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				for _, s := range reg.All() {
					fmt.Fprintf(tw, "%s\t%s\n", s.Name, s.Summary)
				}
				return tw.Flush()
			}
			s, ok := reg.Lookup(args[0])
			if !ok {
				return usageError("no step kind %q; 'runbook kinds' lists them", args[0])
			}
			fmt.Fprintf(g.stdout, "%s: %s\nruns: %s\n\nparameters (with:):\n", s.Name, s.Summary, s.Target)
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			for _, p := range s.Params {
				req := "optional"
				if p.Required {
					req = "required"
				}
				extra := ""
				if p.Default != nil {
					extra = fmt.Sprintf(" (default %v)", p.Default)
				}
				if len(p.Allowed) > 0 {
					extra += " (one of " + strings.Join(p.Allowed, ", ") + ")"
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s%s\n", p.Name, p.Type, req, p.Doc, extra)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(s.Outputs) > 0 {
				fmt.Fprintf(g.stdout, "\noutputs: %s\n", strings.Join(s.Outputs, ", "))
			}
			return nil
		},
	}
}
