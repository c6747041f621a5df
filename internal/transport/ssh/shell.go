package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/runbook-dev/runbook/internal/transport"
)

// A resident shell is a POSIX sh started once in a session of its own,
// that runs each batch script written to its standard input and then
// prints an end marker. Every session the server opens costs it a fork,
// a login shell and a round trip (about 16 ms of the lab's CPU against
// about 5 ms for a command); with the resident shell a host's batches and
// stdin-less commands go through one session for the whole run.
//
// The script reaches the shell on standard input, never in argv, and every
// command in it reads /dev/null: nothing can consume the rest of the
// script. A command that needs a secret on its standard input runs in a
// session of its own through Run.
//
// A shell is used by one batch at a time. The transport keeps one idle
// shell; a batch that finds it taken opens another, closed after use.
type shell struct {
	s      *ssh.Session
	gen    uint64
	pid    int // the shell's pid: its process group, for killGroup
	in     io.WriteCloser
	stdout io.Reader
	stderr io.Reader
	dead   atomic.Bool
}

// startShell opens a session and starts sh in it.
func (t *Transport) startShell(ctx context.Context) (*shell, error) {
	s, gen, err := t.session(ctx)
	if err != nil {
		return nil, err
	}
	sh := &shell{s: s, gen: gen}
	fail := func(err error) (*shell, error) {
		s.Close()
		return nil, &transport.ConnError{Host: t.tg.name, Err: fmt.Errorf("start shell: %w", err)}
	}
	if sh.in, err = s.StdinPipe(); err != nil {
		return fail(err)
	}
	if sh.stdout, err = s.StdoutPipe(); err != nil {
		return fail(err)
	}
	if sh.stderr, err = s.StderrPipe(); err != nil {
		return fail(err)
	}
	// exec: the login shell makes way for sh, which reads the scripts; it
	// says its pid first.
	if err := s.Start(`printf 'RBPID %s\n' "$$"; exec sh`); err != nil {
		if strings.Contains(err.Error(), "ssh: command ") && strings.HasSuffix(err.Error(), " failed") {
			s.Close()
			return nil, fmt.Errorf("start shell on %s: the server refused to start it", t.tg.name)
		}
		t.drop(gen)
		return fail(err)
	}
	line := make(chan []byte, 1)
	go func() { b, _ := readPIDLine(sh.stdout); line <- b }()
	select {
	case b := <-line:
		if sh.pid = parsePID(b); sh.pid == 0 {
			return fail(fmt.Errorf("the shell did not say its pid (%q)", b))
		}
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("start shell on %s: %w", t.tg.name, ctx.Err())
	}
	return sh, nil
}

// readPIDLine reads r up to the end of the line that starts with "RBPID "
// and returns that line; what a login shell's startup files printed before
// it is dropped.
func readPIDLine(r io.Reader) ([]byte, error) {
	var buf []byte
	chunk := make([]byte, 4096)
	for len(buf) < 64<<10 {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if i := pidLine(buf); i >= 0 {
			if j := bytes.IndexByte(buf[i:], '\n'); j >= 0 {
				return buf[i : i+j+1], nil
			}
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, errors.New("no pid line in the first 64 KiB")
}

// pidLine is the offset of the line starting "RBPID " in b, or -1.
func pidLine(b []byte) int {
	if bytes.HasPrefix(b, []byte("RBPID ")) {
		return 0
	}
	if i := bytes.Index(b, []byte("\nRBPID ")); i >= 0 {
		return i + 1
	}
	return -1
}

// parsePID reads "RBPID N".
func parsePID(b []byte) int {
	s, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "RBPID ")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 1 {
		return 0
	}
	return n
}

// killGroup kills process group pid on the host, from a session of its
// own: sshd (9.2 at least) ignores the protocol's signal request, so a
// command past its deadline would run on. The login shell of a session
// leads its process group, and commands run without job control stay in
// it. Best effort: a host that cannot be reached keeps its process.
func (t *Transport) killGroup(pid int) {
	if pid <= 1 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, _, err := t.session(ctx)
	if err != nil {
		return
	}
	defer s.Close()
	line := "exec kill -KILL -- -" + strconv.Itoa(pid)
	if t.tg.sudo {
		line = "exec sudo -n kill -KILL -- -" + strconv.Itoa(pid)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(line) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func (sh *shell) close() {
	sh.dead.Store(true)
	sh.s.Close()
}

// takeShell returns the idle shell when it is still usable, else starts a
// new one. fresh says which.
func (t *Transport) takeShell(ctx context.Context) (sh *shell, fresh bool, err error) {
	t.mu.Lock()
	sh, t.idle = t.idle, nil
	stale := sh != nil && (sh.gen != t.gen || t.client == nil || sh.dead.Load() || t.tcp != nil && t.tcp.closed.Load())
	t.mu.Unlock()
	if sh != nil && !stale {
		return sh, false, nil
	}
	if sh != nil {
		sh.close()
	}
	sh, err = t.startShell(ctx)
	return sh, true, err
}

// putShell makes sh the idle shell, or closes it when there is one or the
// transport is closed.
func (t *Transport) putShell(sh *shell) {
	t.mu.Lock()
	keep := !t.closed && t.idle == nil && sh.gen == t.gen && !sh.dead.Load()
	if keep {
		t.idle = sh
	}
	t.mu.Unlock()
	if !keep {
		sh.close()
	}
}

// dropIdleShell closes the idle shell, freeing its session for a server
// that refuses more.
func (t *Transport) dropIdleShell() bool {
	t.mu.Lock()
	sh := t.idle
	t.idle = nil
	t.mu.Unlock()
	if sh != nil {
		sh.close()
	}
	return sh != nil
}

// errNotSent says that no byte of a script reached the shell: nothing ran,
// and another shell may run it.
var errNotSent = errors.New("script not sent")

// runScript runs script in a resident shell and returns what it printed on
// stdout and stderr before the end marker. Exit codes are the script's to
// report (batchScript prints them); ExitCode is 0. name names the work in
// errors.
func (t *Transport) runScript(ctx context.Context, script, name string) (transport.Result, error) {
	ctx, done, err := t.begin(ctx, name)
	if err != nil {
		return transport.Result{}, err
	}
	defer done()

	end := newMarker()
	script += fmt.Sprintf("printf '\\n%%s\\n' %s; printf '\\n%%s\\n' %s >&2\n", end, end)
	for attempt := 0; ; attempt++ {
		sh, fresh, err := t.takeShell(ctx)
		if err != nil {
			return transport.Result{}, err
		}
		res, err := t.runIn(ctx, sh, script, "\n"+end+"\n")
		if err == nil {
			t.putShell(sh)
			return res, nil
		}
		sh.close()
		switch {
		case errors.Is(err, errNotSent) && !fresh && attempt == 0:
			// The idle shell was gone (its connection, say): nothing ran.
			continue
		case errors.Is(err, errNotSent):
			return transport.Result{}, &transport.ConnError{Host: t.tg.name, Err: fmt.Errorf("run %s: %w", name, err)}
		case ctx.Err() != nil:
			return transport.Result{}, fmt.Errorf("run %s on %s: %w (the shell was sent a kill signal)", name, t.tg.name, ctx.Err())
		default:
			t.dropIfDead(sh.gen)
			return res, &transport.ConnError{Host: t.tg.name, Err: fmt.Errorf("run %s: %w (%v)", name, ErrOutcomeUnknown, err), Lost: true}
		}
	}
}

// dropIfDead forgets the connection of generation gen when its TCP
// connection is closed, so that the next command reconnects.
func (t *Transport) dropIfDead(gen uint64) {
	t.mu.Lock()
	dead := t.gen == gen && t.tcp != nil && t.tcp.closed.Load()
	t.mu.Unlock()
	if dead {
		t.drop(gen)
	}
}

// runIn writes script to sh and reads both streams up to end. On a
// cancelled context it kills the shell's process group (the commands with
// it) and closes the session.
func (t *Transport) runIn(ctx context.Context, sh *shell, script, end string) (transport.Result, error) {
	type read struct {
		b   []byte
		err error
	}
	outc, errc := make(chan read, 1), make(chan read, 1)
	go func() { b, err := readUntil(sh.stdout, end); outc <- read{b, err} }()
	go func() { b, err := readUntil(sh.stderr, end); errc <- read{b, err} }()
	wrote := make(chan error, 1)
	go func() {
		n, err := io.WriteString(sh.in, script)
		if err != nil && n == 0 {
			err = fmt.Errorf("%w: %v", errNotSent, err)
		}
		wrote <- err
	}()

	var res transport.Result
	var out, serr *read
	for out == nil || serr == nil {
		select {
		case err := <-wrote:
			if err != nil {
				sh.close()
				return res, err
			}
			wrote = nil
		case r := <-outc:
			out = &r
			if r.err != nil {
				return res, readFailed(sh, wrote, "stdout", r.err)
			}
		case r := <-errc:
			serr = &r
			if r.err != nil {
				return res, readFailed(sh, wrote, "stderr", r.err)
			}
		case <-ctx.Done():
			t.killGroup(sh.pid)
			sh.close()
			return res, ctx.Err()
		}
	}
	if wrote != nil {
		// Both markers came back, so the whole script was read.
		<-wrote
	}
	res.Stdout, res.Stderr = out.b, serr.b
	return res, nil
}

// readFailed closes sh after a stream ended early. When the write of the
// script failed before its first byte, that is the error: nothing ran.
func readFailed(sh *shell, wrote chan error, stream string, err error) error {
	sh.close()
	if wrote != nil {
		select {
		case werr := <-wrote:
			if errors.Is(werr, errNotSent) {
				return werr
			}
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("%s: %w", stream, err)
}

// readUntil reads r until what it read ends with end, and returns what came
// before end. The shell prints end last and then waits for the next
// script, so nothing follows it.
func readUntil(r io.Reader, end string) ([]byte, error) {
	var buf []byte
	chunk := make([]byte, 32<<10)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if bytes.HasSuffix(buf, []byte(end)) {
			return buf[: len(buf)-len(end) : len(buf)-len(end)], nil
		}
		if err != nil {
			if err == io.EOF {
				err = errors.New("the shell exited")
			}
			return buf, err
		}
	}
}
