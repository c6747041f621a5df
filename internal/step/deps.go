package step

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/vault"
)

// The run's shared resources. Env.Deps implements each of these; a kind
// asserts the one it needs, so a runbook that uses no Vault never opens a
// Vault client. Clients are built once per run, on first use.

// VaultDep gives the run's Vault client.
type VaultDep interface {
	Vault(ctx context.Context) (*vault.Client, error)
}

// DBDep gives a pool on LiteLLM's PostgreSQL database.
type DBDep interface {
	DB(ctx context.Context) (*pgxpool.Pool, error)
}

// HostsDep lets a once step look at the inventory's hosts, for example to
// refuse to change keys while any gateway instance is active.
type HostsDep interface {
	// Hosts expands inventory group or host names.
	Hosts(targets []string) ([]*inventory.Host, error)
	// HostVars returns a host's merged variables.
	HostVars(h *inventory.Host) map[string]string
	// Transport returns the run's transport to a host.
	Transport(ctx context.Context, h *inventory.Host) (transport.Transport, error)
}

// NoteDep lets a kind leave facts for the incident record: key
// fingerprints, reports, follow-ups. Notes are journaled; they must hold no
// secret (fingerprints only).
type NoteDep interface {
	Note(ctx context.Context, stepID, host string, n journal.Note) error
}

// JournalDep tells a kind what the run's journal holds from earlier
// attempts of the run (the attempt a resume continues) and notes written
// since. A kind whose side effect lands before its note is journaled uses
// it to record the note on resume when the attempt that acted could not (a
// crash, or a state directory that filled up in between).
type JournalDep interface {
	// Noted reports whether the journal holds a note of kind from stepID.
	Noted(stepID, kind string) bool
	// Acted reports whether an earlier attempt journaled an intent of
	// stepID on host ("" for a once step): it began the side effect.
	Acted(stepID, host string) bool
}
