package cli

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/step/all"
)

type validateOptions struct {
	withInventory bool
}

func (o *validateOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.withInventory, "with-inventory", false, "also check the runbooks' groups and hosts against the inventory (-i)")
}

func newValidateCommand(g *globals) *cobra.Command {
	o := &validateOptions{}
	cmd := &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check runbook and inventory files; changes nothing",
		Long: `validate decodes and checks runbook and inventory files (told apart by their
top-level keys: a runbook has steps, an inventory has hosts). Every problem is
reported with file:line:col and the offending line.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runValidate(args, o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func (g *globals) runValidate(files []string, o *validateOptions) error {
	reg := all.Registry()
	var inv *inventory.Inventory
	if o.withInventory {
		var err error
		if inv, err = inventory.LoadFile(g.inventoryPath()); err != nil {
			return withCode(ExitUsage, err)
		}
	}
	var errs []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if looksLikeInventory(data) {
			if _, err := inventory.LoadFile(f); err != nil {
				errs = append(errs, err)
				continue
			}
			fmt.Fprintf(g.stdout, "%s: ok (inventory)\n", f)
			continue
		}
		rb, err := runbook.LoadFile(f)
		if err == nil {
			err = runbook.Validate(rb, reg, inv)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(g.stdout, "%s: ok (runbook %s, %d steps)\n", f, rb.Name, len(rb.Steps))
	}
	if len(errs) > 0 {
		return withCode(ExitUsage, errors.Join(errs...))
	}
	return nil
}

// looksLikeInventory tells an inventory from a runbook by a top-level
// "hosts:" key and no top-level "steps:" key.
func looksLikeInventory(data []byte) bool {
	hasHosts, hasSteps := false, false
	for _, line := range bytes.Split(data, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("hosts:")) {
			hasHosts = true
		}
		if bytes.HasPrefix(line, []byte("steps:")) {
			hasSteps = true
		}
	}
	return hasHosts && !hasSteps
}
