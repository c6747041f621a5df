// Package state keeps runs: their journals, and the locks that allow one run
// per target at a time. Two stores implement it: state/fs (a local directory,
// the default, no server) and state/pg (PostgreSQL, for teams with several
// runners). Both pass the conformance suite in state/statetest.
package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
)

// Store keeps journals and locks.
type Store interface {
	// Append adds rec to the run's journal and returns only once it is
	// durable (fsynced or committed). The first record of a run is its header;
	// appending a header for a run that exists is an error (ErrRunExists).
	// Records must arrive in order and chain (rec.Prev is the last hash); a
	// record that does not chain is refused with ErrBrokenChain.
	Append(ctx context.Context, runID string, rec journal.Record) error
	// Journal returns every record of the run in order; ErrNoRun if unknown.
	Journal(ctx context.Context, runID string) ([]journal.Record, error)
	// Runs lists every run, newest first.
	Runs(ctx context.Context) ([]RunSummary, error)
	// Lock takes the lock on target for holder. If a live holder has it, it
	// returns a *LockHeldError. A lock whose holder died is taken over, and
	// Lock.TookOver says from whom.
	Lock(ctx context.Context, target string, holder Holder) (Lock, error)
	// Close releases the store's resources (not the locks' holders' locks,
	// which are released by their Lock).
	Close() error
}

// Lock is a held lock.
type Lock interface {
	// Release frees the lock. It is idempotent.
	Release(ctx context.Context) error
	// TookOver returns the dead holder this lock was taken from, if any.
	TookOver() *Holder
}

// Holder says who holds a lock.
type Holder struct {
	RunID    string    `json:"run_id"`
	Operator string    `json:"operator"`
	Hostname string    `json:"hostname"`
	PID      int       `json:"pid"`
	Since    time.Time `json:"since"`
}

func (h Holder) String() string {
	return fmt.Sprintf("run %s by %s on %s (pid %d) since %s", h.RunID, h.Operator, h.Hostname, h.PID, h.Since.UTC().Format(time.RFC3339))
}

// LockHeldError is returned by Lock when a live holder has the lock.
type LockHeldError struct {
	Target string
	Holder Holder
}

func (e *LockHeldError) Error() string {
	return fmt.Sprintf("target %s is locked by %s", e.Target, e.Holder)
}

// RunSummary describes a run for `runbook runs`.
type RunSummary struct {
	RunID       string
	Runbook     string
	Environment string
	Operator    string
	Started     time.Time
	Updated     time.Time // time of the last record
	// Status is journal.Status*: the end record's status or, for a journal
	// without an end, "running" while a live process holds the target's
	// lock for this run and "interrupted" otherwise.
	Status  string
	Records int
}

var (
	ErrNoRun       = errors.New("no such run")
	ErrRunExists   = errors.New("run already exists")
	ErrBrokenChain = errors.New("journal record does not chain to the last one")
)
