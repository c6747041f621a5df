// Package all is the one registry of every step kind the runner can execute.
// A reviewer sees here everything that can change a host, Vault or a database.
package all

import (
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/ansiblevault"
	"github.com/runbook-dev/runbook/internal/step/command"
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/step/incident"
	"github.com/runbook-dev/runbook/internal/step/litellm"
	"github.com/runbook-dev/runbook/internal/step/rollout"
	"github.com/runbook-dev/runbook/internal/step/service"
	"github.com/runbook-dev/runbook/internal/step/vault"
)

// Registry returns a registry holding every kind.
func Registry() *step.Registry {
	r := step.NewRegistry()
	// The escape hatch.
	r.Register(command.Spec)
	// Containment and restarts on the gateways.
	r.Register(service.StopSpec)
	r.Register(service.StartSpec)
	r.Register(service.RestartSpec)
	r.Register(firewall.DropSpec)
	r.Register(firewall.LiftSpec)
	// Keys.
	r.Register(vault.MasterKeySpec)
	r.Register(ansiblevault.SetVarSpec)
	r.Register(litellm.ReissueSpec)
	r.Register(litellm.ReencryptSpec)
	r.Register(litellm.ExposureSpec)
	r.Register(rollout.Spec)
	// The incident record.
	r.Register(incident.FollowUpSpec)
	return r
}
