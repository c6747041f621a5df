package cli

import (
	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/runbook/schema"
	"github.com/runbook-dev/runbook/internal/step/all"
)

func newSchemaCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "schema runbook|inventory",
		Short: "Print the JSON Schema editors use to complete and check files",
		Long: `schema prints a JSON Schema (draft 2020-12). The runbook schema includes every
registered step kind and its parameters. Save it and point yaml-language-server
at it with a first line such as
  # yaml-language-server: $schema=./runbook.schema.json`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"runbook", "inventory"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "runbook":
				b, err := runbook.GenerateSchema(all.Registry())
				if err != nil {
					return err
				}
				_, err = g.stdout.Write(append(b, '\n'))
				return err
			case "inventory":
				_, err := g.stdout.Write(schema.Inventory)
				return err
			}
			return usageError("schema: want runbook or inventory, got %q", args[0])
		},
	}
}
