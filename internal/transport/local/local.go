// Package local is the transport for the machine the runner is on: a runner
// that lives on the gateway itself. Commands are executed directly from their
// argument list; no shell is involved.
package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/runbook-dev/runbook/internal/transport"
)

// Transport runs commands on this machine.
type Transport struct {
	// Name is the host name reported in errors; default "localhost".
	Name string
	// Sudo makes commands marked Sudo run through "sudo -n" when the runner
	// is not root.
	Sudo bool
}

var _ transport.Transport = (*Transport)(nil)

// New returns a local transport named name.
func New(name string) *Transport {
	if name == "" {
		name = "localhost"
	}
	return &Transport{Name: name}
}

// Host implements transport.Transport.
func (t *Transport) Host() string { return t.Name }

// Close implements transport.Transport.
func (t *Transport) Close() error { return nil }

// Run implements transport.Transport.
func (t *Transport) Run(ctx context.Context, cmd transport.Command) (transport.Result, error) {
	if len(cmd.Args) == 0 {
		return transport.Result{}, errors.New("run: empty command")
	}
	args := cmd.Args
	if cmd.Sudo && t.Sudo && os.Geteuid() != 0 {
		args = append([]string{"sudo", "-n", "--"}, args...)
	}
	c := exec.CommandContext(ctx, args[0], args[1:]...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if cmd.Stdin != nil {
		c.Stdin = strings.NewReader(cmd.Stdin.Reveal())
	}
	err := c.Run()
	res := transport.Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	if ctx.Err() != nil {
		return res, fmt.Errorf("run %s on %s: %w", args[0], t.Name, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.ExitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			// Killed by a signal: report it as a shell does, 128+N.
			res.ExitCode = 128 + int(ws.Signal())
		} else if res.ExitCode < 0 {
			res.ExitCode = 128 + 9
		}
		return res, nil
	}
	if err != nil {
		// Not found, not executable: the command never ran. Exit 127 is what
		// a shell reports, which keeps both transports alike.
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
			res.ExitCode = 127
			res.Stderr = append(res.Stderr, []byte(err.Error())...)
			return res, nil
		}
		return res, fmt.Errorf("run %s on %s: %w", args[0], t.Name, err)
	}
	return res, nil
}
