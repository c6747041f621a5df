package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/state"
)

// Exit codes, by meaning. The README documents them.
const (
	ExitOK            = 0
	ExitFailed        = 1 // a step failed; the run is recorded and can be resumed
	ExitUsage         = 2 // bad flags, or a runbook or inventory that does not validate; nothing changed
	ExitLockHeld      = 3 // another run holds the lock on the target; nothing changed
	ExitResumeRefused = 4 // the runbook or inventory changed since the run began; nothing changed
	ExitInternal      = 5 // the state store, journal or record could not be written or read
	ExitAuditFailed   = 6 // a check reported a problem (audit, due)
	ExitInterrupted   = 130
)

// exitError carries an exit code and optional hints.
type exitError struct {
	code  int
	err   error
	hints []string
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error, hints ...string) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err, hints: hints}
}

func usageError(format string, a ...any) error {
	return withCode(ExitUsage, fmt.Errorf(format, a...))
}

// exitCode maps an error to the process's exit code.
func exitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var lh *state.LockHeldError
	if errors.As(err, &lh) {
		return ExitLockHeld
	}
	if errors.Is(err, engine.ErrInterrupted) || errors.Is(err, context.Canceled) {
		return ExitInterrupted
	}
	if errors.Is(err, engine.ErrFailed) {
		return ExitFailed
	}
	return ExitFailed
}

// printError prints err as "runbook: error: ..." and its hints.
func printError(w io.Writer, err error) {
	msg := err.Error()
	lines := strings.Split(strings.TrimRight(msg, "\n"), "\n")
	fmt.Fprintf(w, "runbook: error: %s\n", lines[0])
	for _, l := range lines[1:] {
		fmt.Fprintf(w, "%s\n", l)
	}
	var ee *exitError
	if errors.As(err, &ee) {
		for _, h := range ee.hints {
			fmt.Fprintf(w, "runbook: hint: %s\n", h)
		}
	}
	var lh *state.LockHeldError
	if errors.As(err, &lh) {
		fmt.Fprintf(w, "runbook: hint: wait for run %s to finish, or if its runner is gone, run again: a dead holder's lock is taken over\n", lh.Holder.RunID)
	}
}
