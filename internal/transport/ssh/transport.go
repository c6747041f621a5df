package ssh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
)

// ErrOutcomeUnknown is wrapped by the error of a command whose connection
// was lost after the command was sent: it may or may not have run. Such
// errors are *transport.ConnError and so retryable; the engine observes
// again (Check) before it acts again.
var ErrOutcomeUnknown = errors.New("connection lost while the command ran; its outcome is unknown")

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("transport closed")

// Transport runs commands on one host over one SSH connection, shared by
// every command and reopened when it drops.
type Transport struct {
	d  *Dialer
	tg target

	sem chan struct{}

	mu     sync.Mutex
	client *ssh.Client
	tcp    *trackedConn
	gen    uint64
	closed bool
	done   chan struct{} // closed by Close: stops keepalives
	idle   *shell        // the resident shell between batches (shell.go)

	sessions atomic.Int64 // sessions opened, for tests
}

var _ transport.Transport = (*Transport)(nil)

func newTransport(d *Dialer, tg target) *Transport {
	return &Transport{d: d, tg: tg, sem: make(chan struct{}, d.cfg.MaxSessions), done: make(chan struct{})}
}

// Host implements transport.Transport.
func (t *Transport) Host() string { return t.tg.name }

// Address is host:port as dialed.
func (t *Transport) Address() string { return t.tg.addr }

// User is the login user.
func (t *Transport) User() string { return t.tg.user }

// SSHPort is the port the runner's connection reaches the host on, for
// kinds that must not cut it (a firewall rule, say).
func (t *Transport) SSHPort() int {
	_, p, err := net.SplitHostPort(t.tg.addr)
	if err != nil {
		return 0
	}
	n := 0
	fmt.Sscan(p, &n)
	return n
}

// Close implements transport.Transport. It is idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	close(t.done)
	if t.idle != nil {
		t.idle.close()
		t.idle = nil
	}
	if t.client != nil {
		err := t.client.Close()
		t.client, t.tcp = nil, nil
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("close connection to %s: %w", t.tg.name, err)
		}
	}
	return nil
}

// conn returns the live client, dialing when there is none.
func (t *Transport) connect(ctx context.Context) (*ssh.Client, uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, 0, fmt.Errorf("run on %s: %w", t.tg.name, ErrClosed)
	}
	if t.client != nil {
		return t.client, t.gen, nil
	}
	c, tc, err := t.d.connect(ctx, t.tg, 0)
	if err != nil {
		return nil, 0, err
	}
	t.client, t.tcp = c, tc
	t.gen++
	gen := t.gen
	go t.watch(c, gen)
	if t.d.cfg.Keepalive > 0 {
		go t.keepalive(c, gen)
	}
	return c, gen, nil
}

// drop forgets the client of generation gen (if still current) and closes it.
func (t *Transport) drop(gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen == gen && t.client != nil {
		t.client.Close()
		t.client, t.tcp = nil, nil
	}
}

// watch forgets the client when its connection ends.
func (t *Transport) watch(c *ssh.Client, gen uint64) {
	_ = c.Wait()
	t.drop(gen)
}

// keepalive asks the server for a reply at each interval; after three
// intervals without one it closes the connection, which fails the commands
// in flight with ErrOutcomeUnknown and makes the next command reconnect.
func (t *Transport) keepalive(c *ssh.Client, gen uint64) {
	iv := t.d.cfg.Keepalive
	tick := time.NewTicker(iv)
	defer tick.Stop()
	for {
		select {
		case <-t.done:
			return
		case <-tick.C:
		}
		t.mu.Lock()
		current := t.gen == gen && t.client == c
		t.mu.Unlock()
		if !current {
			return
		}
		reply := make(chan error, 1)
		go func() {
			_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		select {
		case err := <-reply:
			if err != nil {
				t.drop(gen)
				return
			}
		case <-time.After(3 * iv):
			t.drop(gen)
			return
		case <-t.done:
			return
		}
	}
}

// killConnForTest closes the TCP connection under the client as a network
// failure would.
func (t *Transport) killConnForTest() {
	t.mu.Lock()
	c := t.tcp
	t.mu.Unlock()
	if c != nil {
		c.Conn.Close()
	}
}

// commandLine builds the remote command: "exec", then "sudo -n --" when
// the command asks for it and the host logs in as a non-root user
// configured for sudo, then every argument quoted. exec makes the first
// argument name a program as it does in argv: never a shell builtin
// (exit, eval, cd), a function or an alias.
func (t *Transport) commandLine(cmd transport.Command) string {
	return commandLine(cmd, t.tg.sudo)
}

func commandLine(cmd transport.Command, sudo bool) string {
	var b strings.Builder
	b.WriteString("exec ")
	if cmd.Sudo && sudo {
		b.WriteString("sudo -n -- ")
	}
	for i, a := range cmd.Args {
		if i > 0 {
			b.WriteByte(' ')
		}
		q := transport.Quote(a)
		if i == 0 && q == a && strings.ContainsRune(a, '=') {
			// Quoted, for symmetry with argv; exec already keeps a
			// NAME=value word from being an assignment.
			q = "'" + a + "'"
		}
		b.WriteString(q)
	}
	return b.String()
}

// badProgram reports a program name no shell's exec takes as one: exec
// would read a leading '-' as its own option. No such program is found in
// argv either, so the result is the shell's "not found".
func badProgram(args []string) bool { return strings.HasPrefix(args[0], "-") }

var notFound = transport.Result{ExitCode: 127}

// session opens a session, reconnecting once when the connection turns out
// to be gone: no command has been sent yet, so that is safe. A server that
// refuses the channel (sshd's MaxSessions counts sessions it has not yet
// finished closing) is asked again after a short pause.
func (t *Transport) session(ctx context.Context) (*ssh.Session, uint64, error) {
	var lastErr error
	redials, refusals := 0, 0
retry:
	for {
		c, gen, err := t.connect(ctx)
		if err != nil {
			return nil, 0, err
		}
		s, err := c.NewSession()
		if err == nil {
			t.sessions.Add(1)
			return s, gen, nil
		}
		lastErr = err
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			if t.dropIdleShell() {
				continue retry
			}
			refusals++
			if refusals > 20 {
				break retry
			}
			select {
			case <-time.After(time.Duration(refusals) * 5 * time.Millisecond):
				continue retry
			case <-ctx.Done():
				break retry
			}
		}
		t.drop(gen)
		redials++
		if redials > 1 || ctx.Err() != nil {
			break retry
		}
	}
	return nil, 0, &transport.ConnError{Host: t.tg.name, Err: fmt.Errorf("open session: %w", lastErr)}
}

// Run implements transport.Transport.
func (t *Transport) Run(ctx context.Context, cmd transport.Command) (transport.Result, error) {
	if len(cmd.Args) == 0 {
		return transport.Result{}, errors.New("run: empty command")
	}
	if badProgram(cmd.Args) {
		res := notFound
		res.Stderr = []byte(cmd.Args[0] + ": not found\n")
		return res, nil
	}
	if cmd.Stdin == nil && !t.d.cfg.NoResidentShell {
		// Through the resident shell: no session to open.
		out, err := t.batch(ctx, []Cmd{{Command: cmd}}, cmd.Args[0])
		if err != nil {
			return transport.Result{}, err
		}
		return out[0].Result, nil
	}
	return t.run(ctx, t.commandLine(cmd), cmd.Stdin, cmd.Args[0])
}

// begin bounds a command by the command timeout and takes a session slot;
// done gives both back.
func (t *Transport) begin(ctx context.Context, name string) (_ context.Context, done func(), _ error) {
	cancel := context.CancelFunc(func() {})
	if to := t.d.cfg.CommandTimeout; to > 0 {
		ctx, cancel = context.WithTimeout(ctx, to)
	}
	select {
	case t.sem <- struct{}{}:
	case <-ctx.Done():
		cancel()
		return ctx, nil, fmt.Errorf("run %s on %s: %w", name, t.tg.name, ctx.Err())
	}
	return ctx, func() { <-t.sem; cancel() }, nil
}

// run runs one remote command line in its own session.
func (t *Transport) run(ctx context.Context, line string, stdin *secret.Value, name string) (transport.Result, error) {
	ctx, done, err := t.begin(ctx, name)
	if err != nil {
		return transport.Result{}, err
	}
	defer done()

	s, gen, err := t.session(ctx)
	if err != nil {
		return transport.Result{}, err
	}
	defer s.Close()
	var stdout bytes.Buffer
	stderr := &pidWriter{}
	s.Stdout, s.Stderr = &stdout, stderr
	// Standard input goes through a pipe of our own, so that a command
	// that exits without reading it is not an I/O error of the session.
	in, err := s.StdinPipe()
	if err != nil {
		return transport.Result{}, fmt.Errorf("run %s on %s: %w", name, t.tg.name, err)
	}
	// The login shell says its pid (its process group) on stderr before
	// it makes way for the command: killGroup needs it on a timeout.
	if err := s.Start(`printf 'RBPID %s\n' "$$" >&2; ` + line); err != nil {
		if strings.Contains(err.Error(), "ssh: command ") && strings.HasSuffix(err.Error(), " failed") {
			// The server refused the exec request: nothing ran.
			return transport.Result{}, fmt.Errorf("run %s on %s: the server refused to start the command", name, t.tg.name)
		}
		t.drop(gen)
		return transport.Result{}, &transport.ConnError{Host: t.tg.name, Err: fmt.Errorf("run %s: %w: %v", name, ErrOutcomeUnknown, err), Lost: true}
	}
	go func() {
		if stdin != nil {
			_, _ = io.WriteString(in, stdin.Reveal())
		}
		in.Close()
	}()
	waited := make(chan error, 1)
	go func() { waited <- s.Wait() }()
	select {
	case err = <-waited:
	case <-ctx.Done():
		t.killGroup(stderr.PID())
		s.Close()
		return transport.Result{Stdout: nil, Stderr: nil}, fmt.Errorf("run %s on %s: %w (the command was killed)", name, t.tg.name, ctx.Err())
	}
	res := transport.Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	if err == nil {
		return res, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		res.ExitCode = ee.ExitStatus()
		if sig := ee.Signal(); sig != "" {
			res.ExitCode = 128 + signalNumber(sig)
		}
		return res, nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) || errors.Is(err, io.EOF) || isConnErr(err) {
		t.drop(gen)
		return res, &transport.ConnError{Host: t.tg.name, Err: fmt.Errorf("run %s: %w", name, ErrOutcomeUnknown), Lost: true}
	}
	return res, fmt.Errorf("run %s on %s: %w", name, t.tg.name, err)
}

func isConnErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed)
}

func signalNumber(sig string) int {
	switch ssh.Signal(sig) {
	case ssh.SIGHUP:
		return 1
	case ssh.SIGINT:
		return 2
	case ssh.SIGQUIT:
		return 3
	case ssh.SIGILL:
		return 4
	case ssh.SIGABRT:
		return 6
	case ssh.SIGFPE:
		return 8
	case ssh.SIGKILL:
		return 9
	case ssh.SIGUSR1:
		return 10
	case ssh.SIGSEGV:
		return 11
	case ssh.SIGUSR2:
		return 12
	case ssh.SIGPIPE:
		return 13
	case ssh.SIGALRM:
		return 14
	case ssh.SIGTERM:
		return 15
	}
	return 0
}

// pidWriter takes the stderr of a session whose shell prints
// "RBPID N\n" before the command starts: it keeps N apart, and the rest
// (whatever came before that line included) as the command's stderr.
type pidWriter struct {
	mu   sync.Mutex
	head []byte // before the pid line is complete
	done bool
	pid  int
	buf  bytes.Buffer
}

func (w *pidWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return w.buf.Write(p)
	}
	w.head = append(w.head, p...)
	i := pidLine(w.head)
	if i < 0 {
		if len(w.head) > 64<<10 {
			// No pid line: give up looking for it.
			w.done = true
			w.buf.Write(w.head)
			w.head = nil
		}
		return len(p), nil
	}
	j := bytes.IndexByte(w.head[i:], '\n')
	if j < 0 {
		return len(p), nil
	}
	w.done, w.pid = true, parsePID(w.head[i:i+j+1])
	w.buf.Write(w.head[:i])
	w.buf.Write(w.head[i+j+1:])
	w.head = nil
	return len(p), nil
}

// PID is the shell's pid, 0 before it came.
func (w *pidWriter) PID() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pid
}

// Bytes is the command's stderr.
func (w *pidWriter) Bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		return append(w.buf.Bytes(), w.head...)
	}
	return w.buf.Bytes()
}
