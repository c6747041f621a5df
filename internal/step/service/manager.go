// Package service holds the service.* kinds: stop, start and restart a
// service on a host through its service manager. Only systemd is built in;
// Manager is the seam for others (a container engine, say) once they can be
// tested against the real thing.
package service

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/transport/ssh"
)

// ErrNoUnit is wrapped by errors about a unit the host does not have.
var ErrNoUnit = errors.New("no such unit")

// State is what a manager saw of a unit.
type State struct {
	// Active is the unit's active state as the manager names it: for
	// systemd active, reloading, inactive, failed, activating,
	// deactivating.
	Active string
}

// Running reports whether the unit is up (or on its way up).
func (s State) Running() bool {
	switch s.Active {
	case "active", "reloading", "activating", "refreshing":
		return true
	}
	return false
}

// Stopped reports whether the unit is down and stays down.
func (s State) Stopped() bool { return s.Active == "inactive" || s.Active == "failed" }

// Verb is an action on a unit.
type Verb string

const (
	Stop    Verb = "stop"
	Start   Verb = "start"
	Restart Verb = "restart"
)

// Manager controls the units of one host through a transport.
type Manager interface {
	// Name is the manager's name in the `manager` parameter.
	Name() string
	// State observes unit; it changes nothing. A unit the host does not
	// have is an error wrapping ErrNoUnit.
	State(ctx context.Context, tr transport.Transport, unit string) (State, error)
	// Act performs verb on unit and returns the state after it. Stop of a
	// stopped unit and start of a running one succeed without effect.
	Act(ctx context.Context, tr transport.Transport, verb Verb, unit string) (State, error)
}

// Systemd is the Manager for systemd, through systemctl's documented
// contract: `systemctl is-active UNIT` prints the active state and exits 0
// when active, 3 otherwise (a unit that does not exist included);
// `systemctl status UNIT` exits 4 for a unit that does not exist;
// `systemctl stop|start|restart UNIT` exits 0 when done and 5 when the
// unit is not loaded. Each observation or action is one batch.
type Systemd struct {
	// Mask masks what systemctl printed before it goes into an error.
	Mask *secret.Masker
}

var _ Manager = Systemd{}

// Name implements Manager.
func (Systemd) Name() string { return "systemd" }

func systemctl(sudo bool, args ...string) ssh.Cmd {
	return ssh.Cmd{Command: transport.Command{Args: append([]string{"systemctl"}, args...), Sudo: sudo}}
}

// State implements Manager.
func (m Systemd) State(ctx context.Context, tr transport.Transport, unit string) (State, error) {
	out, err := ssh.RunBatch(ctx, tr, []ssh.Cmd{
		systemctl(false, "is-active", unit),
		// Only when not active: tells "inactive" from "not found".
		{Command: transport.Command{Args: []string{"systemctl", "status", "--no-pager", unit}}, Unless: 1},
	})
	if err != nil {
		return State{}, fmt.Errorf("systemctl is-active %s: %w", unit, err)
	}
	return m.stateFrom(tr, unit, out[0], out[1])
}

func (m Systemd) stateFrom(tr transport.Transport, unit string, isActive, status ssh.Outcome) (State, error) {
	st := State{Active: firstLine(isActive.Stdout)}
	switch isActive.ExitCode {
	case 0:
		if st.Active == "" {
			st.Active = "active"
		}
		return st, nil
	case 3:
	default:
		return State{}, m.exitErr(tr, "systemctl is-active "+unit, isActive.Result)
	}
	if status.Skipped {
		return st, nil
	}
	switch status.ExitCode {
	case 0, 1, 2, 3:
		return st, nil
	case 4:
		return State{}, fmt.Errorf("unit %s on %s: %w (systemctl status exits 4: %s)", unit, tr.Host(), ErrNoUnit, m.Mask.MaskString(strings.TrimSpace(string(status.Stderr))))
	}
	return State{}, m.exitErr(tr, "systemctl status "+unit, status.Result)
}

// Act implements Manager.
func (m Systemd) Act(ctx context.Context, tr transport.Transport, verb Verb, unit string) (State, error) {
	// After a verb that exited 0 the unit exists, so is-active alone tells
	// its state; exit 5 says it does not. A stop that exits 0 has waited
	// for the unit to leave its active states (systemctl waits for the
	// job): is-active would only say inactive again, and costs a process
	// per host in containment, so a stop goes alone.
	cmds := []ssh.Cmd{systemctl(true, string(verb), unit)}
	if verb != Stop {
		cmds = append(cmds, systemctl(false, "is-active", unit))
	}
	out, err := ssh.RunBatch(ctx, tr, cmds)
	if err != nil {
		return State{}, fmt.Errorf("systemctl %s %s: %w", verb, unit, err)
	}
	switch out[0].ExitCode {
	case 0:
	case 5:
		return State{}, fmt.Errorf("unit %s on %s: %w (systemctl %s exits 5: %s)", unit, tr.Host(), ErrNoUnit, verb, m.Mask.MaskString(strings.TrimSpace(string(out[0].Stderr))))
	default:
		return State{}, m.exitErr(tr, "systemctl "+string(verb)+" "+unit, out[0].Result)
	}
	if verb == Stop {
		return State{Active: "inactive"}, nil
	}
	return m.stateFrom(tr, unit, out[1], ssh.Outcome{Skipped: true})
}

func (m Systemd) exitErr(tr transport.Transport, cmd string, r transport.Result) error {
	return &transport.ExitError{Host: tr.Host(), Cmd: cmd, Code: r.ExitCode, Stderr: m.Mask.MaskString(string(r.Stderr))}
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
