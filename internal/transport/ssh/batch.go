package ssh

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/runbook-dev/runbook/internal/transport"
)

// Cmd is one command of a batch.
type Cmd struct {
	transport.Command
	// OnlyIf, when set, is the 1-based position of an earlier command of
	// the batch: this one runs only if that one ran and exited 0.
	OnlyIf int
	// Unless, when set, is the 1-based position of an earlier command: this
	// one is skipped if that one ran and exited 0 (check, then act).
	Unless int
}

// Outcome is what became of one command of a batch.
type Outcome struct {
	transport.Result
	// Skipped is true when OnlyIf or Unless kept the command from running.
	Skipped bool
}

// Batcher is implemented by transports that run several commands in one
// round trip. Each SSH session costs a channel open and a remote shell
// start; a step's commands on one host go through one session this way.
type Batcher interface {
	// Batch runs cmds in order, each whatever the exit of the others
	// (OnlyIf and Unless aside), and returns one outcome per command. It
	// has the error semantics of transport.Transport.Run. Commands in a
	// batch take no standard input: a command that needs a secret runs on
	// its own through Run, so the secret never enters the batch script.
	Batch(ctx context.Context, cmds []Cmd) ([]Outcome, error)
}

var _ Batcher = (*Transport)(nil)

// RunBatch runs cmds through tr's Batch when it has one, else one by one
// through Run, with the same results.
func RunBatch(ctx context.Context, tr transport.Transport, cmds []Cmd) ([]Outcome, error) {
	if err := validateBatch(cmds); err != nil {
		return nil, err
	}
	if b, ok := tr.(Batcher); ok {
		return b.Batch(ctx, cmds)
	}
	out := make([]Outcome, len(cmds))
	for i, c := range cmds {
		if skip(out, c) {
			out[i].Skipped = true
			continue
		}
		res, err := tr.Run(ctx, c.Command)
		if err != nil {
			return out[:i], err
		}
		out[i].Result = res
	}
	return out, nil
}

func skip(done []Outcome, c Cmd) bool {
	ranOK := func(pos int) bool {
		o := done[pos-1]
		return !o.Skipped && o.ExitCode == 0
	}
	if c.OnlyIf > 0 && !ranOK(c.OnlyIf) {
		return true
	}
	if c.Unless > 0 && ranOK(c.Unless) {
		return true
	}
	return false
}

func validateBatch(cmds []Cmd) error {
	for i, c := range cmds {
		if len(c.Args) == 0 {
			return fmt.Errorf("batch: command %d is empty", i+1)
		}
		if c.Stdin != nil {
			return fmt.Errorf("batch: command %d has standard input; run it on its own", i+1)
		}
		if c.OnlyIf < 0 || c.OnlyIf > i || c.Unless < 0 || c.Unless > i {
			return fmt.Errorf("batch: command %d refers to a command that does not come before it", i+1)
		}
	}
	return nil
}

// Batch implements Batcher: the commands go as one POSIX sh script to the
// host's resident shell (shell.go), or with Config.NoResidentShell to a
// session of their own. Each runs in a subshell with standard input from
// /dev/null, its arguments quoted as in Run; after each, the script prints
// a marker with the command's position and exit status on stdout and
// stderr, and the output is split at the markers. The marker holds 96
// random bits, so a command's output cannot forge one.
func (t *Transport) Batch(ctx context.Context, cmds []Cmd) ([]Outcome, error) {
	if err := validateBatch(cmds); err != nil {
		return nil, err
	}
	if len(cmds) == 0 {
		return nil, nil
	}
	return t.batch(ctx, cmds, "batch of "+strconv.Itoa(len(cmds))+" commands")
}

func (t *Transport) batch(ctx context.Context, cmds []Cmd, name string) ([]Outcome, error) {
	mark := newMarker()
	script := batchScript(cmds, mark, t.tg.sudo)
	var res transport.Result
	var err error
	if t.d.cfg.NoResidentShell {
		res, err = t.run(ctx, script, nil, name)
	} else {
		res, err = t.runScript(ctx, script, name)
	}
	if err != nil {
		return nil, err
	}
	out, perr := parseBatch(res, mark, len(cmds))
	if perr != nil {
		return out, fmt.Errorf("batch on %s: %w", t.tg.name, perr)
	}
	return out, nil
}

func newMarker() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "RBMARK" + hex.EncodeToString(b[:])
}

func batchScript(cmds []Cmd, mark string, sudo bool) string {
	var b strings.Builder
	for i, c := range cmds {
		n := strconv.Itoa(i + 1)
		fmt.Fprintf(&b, "r%s=-\n", n)
		run := "( " + commandLine(c.Command, sudo) + " ) </dev/null; r" + n + "=$?"
		if v, ok := printenvOf(c.Command); ok {
			// The shell's own variable: no process, same output and status.
			run = "if [ -n \"${" + v + "+x}\" ]; then printf '%s\\n' \"$" + v + "\"; r" + n + "=0; else r" + n + "=1; fi"
		}
		if badProgram(c.Args) {
			run = "printf '%s: not found\\n' " + transport.Quote(c.Args[0]) + " >&2; r" + n + "=127"
		}
		switch {
		case c.OnlyIf > 0 && c.Unless > 0:
			fmt.Fprintf(&b, "if [ \"$r%d\" = 0 ] && [ \"$r%d\" != 0 ]; then %s; fi\n", c.OnlyIf, c.Unless, run)
		case c.OnlyIf > 0:
			fmt.Fprintf(&b, "if [ \"$r%d\" = 0 ]; then %s; fi\n", c.OnlyIf, run)
		case c.Unless > 0:
			fmt.Fprintf(&b, "if [ \"$r%d\" != 0 ]; then %s; fi\n", c.Unless, run)
		default:
			b.WriteString(run + "\n")
		}
		fmt.Fprintf(&b, "printf '\\n%%s %%s %%s\\n' %s %s \"$r%s\"; printf '\\n%%s %%s\\n' %s %s >&2\n", mark, n, n, mark, n)
	}
	return b.String()
}

// printenvOf recognises "printenv SSH_NAME" (no sudo), which a batch
// answers from the shell's environment: sshd exports the SSH_ variables,
// and no shell sets one of its own.
func printenvOf(c transport.Command) (string, bool) {
	if len(c.Args) != 2 || c.Args[0] != "printenv" || c.Sudo || !strings.HasPrefix(c.Args[1], "SSH_") {
		return "", false
	}
	v := c.Args[1]
	for i := 0; i < len(v); i++ {
		ch := v[i]
		if ch == '_' || ch >= 'A' && ch <= 'Z' || ch >= 'a' && ch <= 'z' || i > 0 && ch >= '0' && ch <= '9' {
			continue
		}
		return "", false
	}
	return v, v != ""
}

var errBatchCut = errors.New("the batch script stopped early")

func parseBatch(res transport.Result, mark string, n int) ([]Outcome, error) {
	out := make([]Outcome, 0, n)
	so, se := res.Stdout, res.Stderr
	for i := 1; i <= n; i++ {
		num := strconv.Itoa(i)
		k := bytes.Index(so, []byte("\n"+mark+" "+num+" "))
		if k < 0 {
			return out, fmt.Errorf("%w after %d of %d commands (exit %d): %s", errBatchCut, i-1, n, res.ExitCode, strings.TrimSpace(string(se)))
		}
		o := Outcome{}
		o.Stdout = so[:k:k]
		rest := so[k+len(mark)+len(num)+3:]
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			return out, fmt.Errorf("%w: marker %d cut", errBatchCut, i)
		}
		status := string(rest[:nl])
		so = rest[nl+1:]
		if status == "-" {
			o.Skipped = true
		} else {
			code, err := strconv.Atoi(status)
			if err != nil {
				return out, fmt.Errorf("batch: bad status %q of command %d", status, i)
			}
			o.ExitCode = code
		}
		ek := bytes.Index(se, []byte("\n"+mark+" "+num+"\n"))
		if ek < 0 {
			return out, fmt.Errorf("%w: no stderr marker for command %d", errBatchCut, i)
		}
		o.Stderr = se[:ek:ek]
		se = se[ek+len(mark)+len(num)+3:]
		if len(o.Stdout) == 0 {
			o.Stdout = nil
		}
		if len(o.Stderr) == 0 {
			o.Stderr = nil
		}
		out = append(out, o)
	}
	return out, nil
}
