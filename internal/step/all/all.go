// Package all is the one registry of every step kind the runner can execute.
// A reviewer sees here everything that can change a host, Vault or a database.
package all

import (
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/command"
)

// Registry returns a registry holding every kind.
func Registry() *step.Registry {
	r := step.NewRegistry()
	r.Register(command.Spec)
	return r
}
