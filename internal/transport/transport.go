// Package transport runs commands on a host: the machine the runner is on
// (transport/local) or a gateway over SSH (transport/ssh). Both pass the
// conformance suite in transport/transporttest.
package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/internal/secret"
)

// Command is one program to run, given as an argument list. Transports never
// paste arguments into a shell string unquoted: the local transport executes
// argv directly, the SSH transport quotes every argument.
type Command struct {
	Args []string
	// Stdin, when set, is written to the command's standard input. Secrets
	// travel here, never in Args.
	Stdin *secret.Value
	// Sudo runs the command through "sudo -n" when the host is configured
	// for it (a non-root login user).
	Sudo bool
}

// String shows the command for logs and plans: arguments shell-quoted.
func (c Command) String() string { return Join(c.Args) }

// Result of a command that ran. A non-zero exit is not an error.
type Result struct {
	ExitCode int
	Stdout   []byte
	Stderr   []byte
}

// Transport runs commands on one host. Implementations are safe for
// concurrent use.
type Transport interface {
	// Run runs cmd and waits for it. It returns an error only when the command
	// could not be run or its outcome is unknown (connection lost, timeout,
	// context cancelled); such errors that are safe to retry satisfy
	// IsRetryable. A command that ran and exited non-zero returns a Result.
	Run(ctx context.Context, cmd Command) (Result, error)
	// Host names the host for errors and logs.
	Host() string
	// Close releases the connection. Close is idempotent.
	Close() error
}

// ExitError describes a command that exited non-zero, for kinds that treat that
// as a failure.
type ExitError struct {
	Host   string
	Cmd    string
	Code   int
	Stderr string
}

func (e *ExitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	if msg != "" {
		return fmt.Sprintf("%s on %s: exit %d: %s", e.Cmd, e.Host, e.Code, msg)
	}
	return fmt.Sprintf("%s on %s: exit %d", e.Cmd, e.Host, e.Code)
}

// Check runs cmd and turns a non-zero exit into an *ExitError.
func Check(ctx context.Context, t Transport, cmd Command) (Result, error) {
	res, err := t.Run(ctx, cmd)
	if err != nil {
		return res, err
	}
	if res.ExitCode != 0 {
		return res, &ExitError{Host: t.Host(), Cmd: cmd.String(), Code: res.ExitCode, Stderr: string(res.Stderr)}
	}
	return res, nil
}

// ConnError marks an error in reaching the host (not in the command).
// It is retryable.
type ConnError struct {
	Host string
	Err  error
	// Lost says the connection was up and went away while a command ran
	// (not that it could not be made).
	Lost bool
}

func (e *ConnError) Error() string {
	if e.Lost {
		return fmt.Sprintf("%s: %v", e.Host, e.Err)
	}
	return fmt.Sprintf("connect to %s: %v", e.Host, e.Err)
}
func (e *ConnError) Unwrap() error { return e.Err }

// IsRetryable reports whether err may go away on a retry.
func IsRetryable(err error) bool {
	var ce *ConnError
	return errors.As(err, &ce)
}

// Quote quotes one argument for a POSIX shell. Arguments made only of safe
// characters are left as they are.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Join quotes every argument and joins them with spaces.
func Join(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}
