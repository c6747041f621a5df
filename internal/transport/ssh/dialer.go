// Package ssh is the transport to gateways over SSH, built on
// golang.org/x/crypto/ssh. A Dialer holds the client settings of a run
// (known_hosts, identities, agent, jump host, timeouts); Dial opens one
// connection per host, which every command of the run then shares.
//
// Host keys are verified against known_hosts. An unknown key and a changed
// key are distinct errors; a new key is accepted only when the Dialer says
// so, and every acceptance is kept for the caller to journal.
package ssh

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
)

// Defaults for settings left empty.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultCommandTimeout = 5 * time.Minute
	DefaultKeepalive      = 15 * time.Second
	// DefaultMaxSessions stays under OpenSSH's default MaxSessions (10), so
	// concurrent commands on one connection wait for a free channel instead
	// of being refused by the server.
	DefaultMaxSessions = 8
)

// Config are the client settings of a run.
type Config struct {
	// KnownHosts is the known_hosts file (default ~/.ssh/known_hosts).
	KnownHosts string
	// Identity is a private key file. When empty and no agent is reachable,
	// the usual ~/.ssh/id_ed25519, id_ecdsa and id_rsa are tried.
	Identity string
	// Passphrase decrypts an encrypted Identity. Passphrase, when set, is
	// asked only if the key turns out to be encrypted (a terminal prompt,
	// for one).
	Passphrase     secret.Value
	PassphraseFunc func() (secret.Value, error)
	// Agent uses the ssh-agent at SSH_AUTH_SOCK when it is set.
	Agent bool
	// AgentSocket overrides SSH_AUTH_SOCK.
	AgentSocket string
	// User and Port apply to hosts that set none (defaults root and 22).
	User string
	Port int
	// Jump is the ProxyJump host for hosts that set none: "user@host:port"
	// or the name of an inventory host (see Lookup).
	Jump string
	// Lookup resolves a jump host given by inventory name.
	Lookup func(name string) *inventory.Host
	// ConnectTimeout bounds TCP connect, handshake and authentication.
	ConnectTimeout time.Duration
	// CommandTimeout bounds each command (0: DefaultCommandTimeout;
	// negative: none). The caller's context bounds it too.
	CommandTimeout time.Duration
	// Keepalive is the interval of keepalive requests (0: default; negative:
	// none). A connection that misses three answers is closed, and the next
	// command reconnects.
	Keepalive time.Duration
	// MaxSessions bounds concurrent sessions on one connection.
	MaxSessions int
	// AcceptNewHostKeys accepts and records the key of a host that
	// known_hosts does not list. A changed key is never accepted.
	AcceptNewHostKeys bool
	// OnAccept, when set, is called for each accepted host key.
	OnAccept func(HostKeyAcceptance)
	// NoQuickAck turns off the client-side TCP_QUICKACK (see conn.go).
	NoQuickAck bool
	// SSHConfig is an ssh_config file read for the subset in sshconfig.go:
	// HostName, User, Port and ProxyJump by Host pattern, for what the
	// inventory leaves unset.
	SSHConfig string
	// NoResidentShell runs every batch and command in a session of its
	// own instead of the host's resident shell (see shell.go).
	NoResidentShell bool
}

// ConfigFrom builds a Config from the inventory's SSH settings. The
// passphrase is resolved by the caller (it may live in Vault or need a
// prompt) and set on the result.
func ConfigFrom(s inventory.SSH) (Config, error) {
	c := Config{
		KnownHosts: expandHome(s.KnownHosts),
		Identity:   expandHome(s.Identity),
		Agent:      true,
		User:       s.User,
		Port:       s.Port,
		Jump:       s.Jump,
		SSHConfig:  expandHome(s.Config),
	}
	var err error
	if c.ConnectTimeout, err = parseDuration("connect_timeout", s.ConnectTimeout); err != nil {
		return c, err
	}
	if c.CommandTimeout, err = parseDuration("command_timeout", s.CommandTimeout); err != nil {
		return c, err
	}
	if c.Keepalive, err = parseDuration("keepalive", s.Keepalive); err != nil {
		return c, err
	}
	return c, nil
}

// LookupIn resolves jump hosts given by name among inv's hosts.
func LookupIn(inv *inventory.Inventory) func(name string) *inventory.Host {
	return func(name string) *inventory.Host {
		for _, h := range inv.Hosts {
			if h.Name == name {
				return h
			}
		}
		return nil
	}
}

func parseDuration(name, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("ssh.%s: %w", name, err)
	}
	return d, nil
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[1:])
		}
	}
	return p
}

// Dialer opens SSH transports. It is safe for concurrent use; jump
// connections and the agent connection are shared by every host it dials.
type Dialer struct {
	cfg Config

	authOnce sync.Once
	signers  []ssh.Signer
	authErr  error
	agentCn  net.Conn

	hk *hostKeys
	// sshcfg is Config.SSHConfig parsed (nil without one).
	sshcfg *sshConfig

	mu    sync.Mutex
	jumps map[string]*jumpConn
}

type jumpConn struct {
	once   sync.Once
	client *ssh.Client
	err    error
}

// NewDialer checks the settings and returns a Dialer. Key files are read
// at the first Dial.
func NewDialer(cfg Config) (*Dialer, error) {
	if cfg.KnownHosts == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("ssh: find known_hosts: %w", err)
		}
		cfg.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = DefaultCommandTimeout
	}
	if cfg.Keepalive == 0 {
		cfg.Keepalive = DefaultKeepalive
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	hk, err := newHostKeys(cfg.KnownHosts, cfg.AcceptNewHostKeys, cfg.OnAccept)
	if err != nil {
		return nil, err
	}
	var sc *sshConfig
	if cfg.SSHConfig != "" {
		if sc, err = parseSSHConfig(cfg.SSHConfig); err != nil {
			return nil, err
		}
	}
	return &Dialer{cfg: cfg, hk: hk, sshcfg: sc, jumps: map[string]*jumpConn{}}, nil
}

// Accepted lists the host keys accepted so far, for the journal.
func (d *Dialer) Accepted() []HostKeyAcceptance { return d.hk.acceptedList() }

// Close closes the jump connections and the agent connection. Transports
// already dialed keep working until their own Close, except through a jump.
func (d *Dialer) Close() error {
	d.mu.Lock()
	jumps := d.jumps
	d.jumps = map[string]*jumpConn{}
	d.mu.Unlock()
	var errs []error
	for _, j := range jumps {
		if j.client != nil {
			if err := j.client.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	if d.agentCn != nil {
		_ = d.agentCn.Close()
	}
	return errors.Join(errs...)
}

// target is where one connection goes.
type target struct {
	name string // inventory name, for errors
	addr string // host:port as dialed and as known_hosts knows it
	user string
	jump string
	sudo bool
}

func (d *Dialer) targetOf(h *inventory.Host) target {
	// The inventory's host settings, then its ssh defaults, then
	// ssh_config for the host's name, then OpenSSH's defaults.
	o := d.sshcfg.lookup(h.Name)
	t := target{name: h.Name, user: first(h.User, d.cfg.User, o.User, "root"), jump: first(h.Jump, d.cfg.Jump, o.ProxyJump)}
	if t.jump == "none" {
		t.jump = ""
	}
	port := h.Port
	for _, p := range []int{d.cfg.Port, o.Port, 22} {
		if port == 0 {
			port = p
		}
	}
	t.addr = net.JoinHostPort(first(h.Address, o.HostName, h.Name), strconv.Itoa(port))
	t.sudo = h.Sudo && t.user != "root"
	return t
}

// first returns the first non-empty string.
func first(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// Dial connects to h and returns its transport. The connection is made
// now, so an unreachable host, an unknown or changed host key or a refused
// login is reported here. Unreachable hosts give a *transport.ConnError
// (retryable); host key and authentication errors are not retryable.
func (d *Dialer) Dial(ctx context.Context, h *inventory.Host) (transport.Transport, error) {
	return d.DialSSH(ctx, h)
}

// DialSSH is Dial returning the concrete transport.
func (d *Dialer) DialSSH(ctx context.Context, h *inventory.Host) (*Transport, error) {
	if h == nil {
		return nil, errors.New("ssh: dial: no host")
	}
	t := newTransport(d, d.targetOf(h))
	if _, _, err := t.connect(ctx); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// connect opens one authenticated client connection to tg.
func (d *Dialer) connect(ctx context.Context, tg target, depth int) (*ssh.Client, *trackedConn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()

	signers, err := d.auth()
	if err != nil {
		return nil, nil, err
	}

	var raw net.Conn
	if tg.jump != "" {
		if depth >= 3 {
			return nil, nil, fmt.Errorf("connect to %s: jump hosts nested too deep", tg.name)
		}
		jc, err := d.jumpClient(ctx, tg.jump, depth)
		if err != nil {
			return nil, nil, err
		}
		raw, err = jc.DialContext(ctx, "tcp", tg.addr)
		if err != nil {
			d.dropJump(tg.jump, jc)
			return nil, nil, &transport.ConnError{Host: tg.name, Err: fmt.Errorf("through jump host %s: %w", tg.jump, err)}
		}
	} else {
		var nd net.Dialer
		raw, err = nd.DialContext(ctx, "tcp", tg.addr)
		if err != nil {
			return nil, nil, &transport.ConnError{Host: tg.name, Err: err}
		}
		if tc, ok := raw.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
	}
	conn := newTrackedConn(raw, !d.cfg.NoQuickAck)

	// The handshake has no context of its own: bound it by the deadline
	// and close the connection if the context ends first.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var hostKeyErr error
	cc := &ssh.ClientConfig{
		User: tg.user,
		Auth: []ssh.AuthMethod{ssh.PublicKeysCallback(func() ([]ssh.Signer, error) { return signers, nil })},
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := d.hk.check(tg.name, tg.addr, remote, key)
			hostKeyErr = err
			return err
		},
		HostKeyAlgorithms: d.hk.algorithms(tg.addr),
		ClientVersion:     "SSH-2.0-runbook",
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, tg.addr, cc)
	if err != nil {
		conn.Close()
		if hostKeyErr != nil {
			return nil, nil, hostKeyErr
		}
		if ctx.Err() != nil {
			return nil, nil, &transport.ConnError{Host: tg.name, Err: fmt.Errorf("handshake: %w", ctx.Err())}
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, nil, &AuthError{Host: tg.name, User: tg.user, Err: err}
		}
		return nil, nil, &transport.ConnError{Host: tg.name, Err: err}
	}
	if !stop() {
		c.Close()
		return nil, nil, &transport.ConnError{Host: tg.name, Err: fmt.Errorf("handshake: %w", ctx.Err())}
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), conn, nil
}

// AuthError is a login the host refused: not retryable.
type AuthError struct {
	Host string
	User string
	Err  error
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("log in to %s as %s: no offered key was accepted (check the identity file, the agent and the host's authorized_keys): %v", e.Host, e.User, e.Err)
}
func (e *AuthError) Unwrap() error { return e.Err }

// jumpClient returns the shared connection to a jump host.
func (d *Dialer) jumpClient(ctx context.Context, spec string, depth int) (*ssh.Client, error) {
	d.mu.Lock()
	j := d.jumps[spec]
	if j == nil {
		j = &jumpConn{}
		d.jumps[spec] = j
	}
	d.mu.Unlock()
	j.once.Do(func() {
		tg, err := d.jumpTarget(spec)
		if err != nil {
			j.err = err
			return
		}
		j.client, _, j.err = d.connect(ctx, tg, depth+1)
		if j.client != nil {
			go func() { _ = j.client.Wait(); d.dropJump(spec, j.client) }()
		}
	})
	if j.err != nil {
		d.mu.Lock()
		if d.jumps[spec] == j {
			delete(d.jumps, spec)
		}
		d.mu.Unlock()
		return nil, j.err
	}
	return j.client, nil
}

// dropJump forgets a jump connection that failed, so the next dial opens a
// new one.
func (d *Dialer) dropJump(spec string, c *ssh.Client) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if j := d.jumps[spec]; j != nil && j.client == c {
		delete(d.jumps, spec)
		c.Close()
	}
}

// jumpTarget resolves "user@host:port" or an inventory host name.
func (d *Dialer) jumpTarget(spec string) (target, error) {
	if d.cfg.Lookup != nil {
		if h := d.cfg.Lookup(spec); h != nil {
			tg := d.targetOf(h)
			tg.jump = h.Jump
			return tg, nil
		}
	}
	h := &inventory.Host{Name: spec}
	rest := spec
	bare := !strings.ContainsAny(spec, "@:")
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		h.User, rest = rest[:i], rest[i+1:]
	}
	host, port := rest, ""
	if hp, p, err := net.SplitHostPort(rest); err == nil {
		host, port = hp, p
	}
	if host == "" {
		return target{}, fmt.Errorf("jump host %q: no host", spec)
	}
	if bare {
		// A name ssh_config may know (Host bastion / HostName ...).
		h.Name = host
	} else {
		h.Address = host
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return target{}, fmt.Errorf("jump host %q: bad port", spec)
		}
		h.Port = n
	}
	tg := d.targetOf(h)
	tg.jump = "" // the run's default jump does not apply to the jump itself
	return tg, nil
}

// auth loads the signers once: the identity file first, then the agent's
// keys. Each key offered costs a round trip, so the named key goes first.
func (d *Dialer) auth() ([]ssh.Signer, error) {
	d.authOnce.Do(func() {
		var signers []ssh.Signer
		if d.cfg.Identity != "" {
			s, err := d.loadKey(d.cfg.Identity)
			if err != nil {
				d.authErr = err
				return
			}
			signers = append(signers, s)
		}
		if d.cfg.Agent {
			sock := d.cfg.AgentSocket
			if sock == "" {
				sock = os.Getenv("SSH_AUTH_SOCK")
			}
			if sock != "" {
				c, err := net.DialTimeout("unix", sock, d.cfg.ConnectTimeout)
				if err == nil {
					d.agentCn = c
					as, err := agent.NewClient(c).Signers()
					if err == nil {
						signers = append(signers, as...)
					}
				}
			}
		}
		if len(signers) == 0 && d.cfg.Identity == "" {
			home, _ := os.UserHomeDir()
			for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
				p := filepath.Join(home, ".ssh", n)
				if _, err := os.Stat(p); err != nil {
					continue
				}
				s, err := d.loadKey(p)
				if err != nil {
					d.authErr = err
					return
				}
				signers = append(signers, s)
			}
		}
		if len(signers) == 0 {
			d.authErr = errors.New("ssh: no key to log in with: set an identity file or start an ssh-agent (SSH_AUTH_SOCK)")
			return
		}
		d.signers = signers
	})
	return d.signers, d.authErr
}

func (d *Dialer) loadKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh: read identity: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		pass := d.cfg.Passphrase
		if pass.IsZero() && d.cfg.PassphraseFunc != nil {
			if pass, err = d.cfg.PassphraseFunc(); err != nil {
				return nil, fmt.Errorf("ssh: passphrase for %s: %w", path, err)
			}
		}
		if pass.IsZero() {
			return nil, fmt.Errorf("ssh: identity %s is encrypted and no passphrase was given", path)
		}
		s, err = ssh.ParsePrivateKeyWithPassphrase(b, pass.Bytes())
		if errors.Is(err, x509.IncorrectPasswordError) {
			return nil, fmt.Errorf("ssh: identity %s: wrong passphrase", path)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ssh: identity %s: %w", path, err)
	}
	return s, nil
}
