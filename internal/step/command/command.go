// Package command is the escape hatch: a step that runs a program. It stays
// idempotent by requiring a check program whose exit 0 means "already done".
package command

import (
	"context"
	"errors"
	"fmt"

	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
)

// Spec is the `command` kind.
var Spec = &step.Spec{
	Name:    "command",
	Summary: "run a program; a check program's exit 0 means already done",
	Target:  step.Either,
	Params: []step.Param{
		{Name: "check", Type: step.List, Required: true, Doc: "argv of a program that exits 0 when the work is already done and 1 to 125 when it is not; 126, 127 (not runnable) and deaths by signal are errors"},
		{Name: "run", Type: step.List, Required: true, Doc: "argv of the program that does the work"},
		{Name: "describe", Type: step.String, Doc: "what the change is, for the plan (default: the run argv)"},
		{Name: "sudo", Type: step.Bool, Default: false, Doc: "run both programs through sudo -n on hosts configured for sudo"},
	},
	New: newCommand,
}

// Command runs Run unless Check says the work is done.
type Command struct {
	CheckArgs []string
	RunArgs   []string
	Describe  string
	Sudo      bool
}

var (
	_ step.Step     = (*Command)(nil)
	_ step.Verifier = (*Command)(nil)
)

func newCommand(p step.Params) (step.Step, error) {
	c := &Command{CheckArgs: p.Strings("check"), RunArgs: p.Strings("run"), Describe: p.String("describe"), Sudo: p.Bool("sudo")}
	if len(c.CheckArgs) == 0 {
		return nil, &step.ParamError{Param: "check", Err: errors.New("empty argument list")}
	}
	if len(c.RunArgs) == 0 {
		return nil, &step.ParamError{Param: "run", Err: errors.New("empty argument list")}
	}
	return c, nil
}

func (c *Command) done(ctx context.Context, env *step.Env) (bool, error) {
	cmd := transport.Command{Args: c.CheckArgs, Sudo: c.Sudo}
	res, err := env.Transport.Run(ctx, cmd)
	if err != nil {
		return false, err
	}
	switch {
	case res.ExitCode == 0:
		return true, nil
	case res.ExitCode >= 1 && res.ExitCode <= 125:
		return false, nil
	}
	return false, fmt.Errorf("check program: %w", &transport.ExitError{Host: env.Transport.Host(), Cmd: cmd.String(), Code: res.ExitCode, Stderr: env.Secrets.MaskString(string(res.Stderr))})
}

// Check implements step.Step.
func (c *Command) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	done, err := c.done(ctx, env)
	if err != nil || done {
		return step.Observation{}, err
	}
	d := c.Describe
	if d == "" {
		d = "run " + transport.Join(c.RunArgs)
	}
	return step.Observation{Change: d}, nil
}

// Apply implements step.Step.
func (c *Command) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	cmd := transport.Command{Args: c.RunArgs, Sudo: c.Sudo}
	res, err := env.Transport.Run(ctx, cmd)
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("run program: %w", &transport.ExitError{Host: env.Transport.Host(), Cmd: cmd.String(), Code: res.ExitCode, Stderr: env.Secrets.MaskString(string(res.Stderr))})
	}
	return nil, nil
}

// Verify implements step.Verifier: after the run, the check must say done.
func (c *Command) Verify(ctx context.Context, env *step.Env) error {
	done, err := c.done(ctx, env)
	if err != nil {
		return err
	}
	if !done {
		return fmt.Errorf("check %s still says not done after the run", transport.Join(c.CheckArgs))
	}
	return nil
}
