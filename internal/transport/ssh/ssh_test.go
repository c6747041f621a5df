package ssh_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	rbssh "github.com/runbook-dev/runbook/internal/transport/ssh"
	"github.com/runbook-dev/runbook/internal/transport/transporttest"
)

func host(s *sshd) *inventory.Host {
	return &inventory.Host{Name: "gw-test", Address: "127.0.0.1", Port: s.Port}
}

func dialer(t *testing.T, cfg rbssh.Config) *rbssh.Dialer {
	t.Helper()
	d, err := rbssh.NewDialer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func baseConfig(s *sshd) rbssh.Config {
	return rbssh.Config{KnownHosts: s.KnownHosts, Identity: s.ClientKey, ConnectTimeout: 15 * time.Second}
}

func dial(t *testing.T, s *sshd, cfg rbssh.Config) *rbssh.Transport {
	t.Helper()
	d := dialer(t, cfg)
	tr, err := d.DialSSH(context.Background(), host(s))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func TestConformance(t *testing.T) {
	s := startSSHD(t)
	d := dialer(t, baseConfig(s))
	tr, err := d.Dial(context.Background(), host(s))
	if err != nil {
		t.Fatal(err)
	}
	transporttest.Run(t, tr)
	tr.Close()
	if _, err := tr.Run(context.Background(), transport.Command{Args: []string{"true"}}); !errors.Is(err, rbssh.ErrClosed) {
		t.Errorf("run after close: %v, want ErrClosed", err)
	}
}

func TestUnknownHostKey(t *testing.T) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.KnownHosts = filepath.Join(s.Dir, "empty_known_hosts")
	if err := os.WriteFile(cfg.KnownHosts, []byte("# none\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := dialer(t, cfg)
	_, err := d.Dial(context.Background(), host(s))
	if !errors.Is(err, rbssh.ErrHostKeyUnknown) || errors.Is(err, rbssh.ErrHostKeyChanged) {
		t.Fatalf("got %v, want an unknown host key error", err)
	}
	if transport.IsRetryable(err) {
		t.Error("an unknown host key is retryable")
	}
	msg := err.Error()
	for _, want := range []string{"gw-test", s.Addr, "SHA256:", cfg.KnownHosts, "unknown", "verify"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %q", msg, want)
		}
	}
	if len(d.Accepted()) != 0 {
		t.Error("a key was accepted without the flag")
	}
}

func TestChangedHostKey(t *testing.T) {
	s := startSSHD(t)
	_, other := newKey(t)
	cfg := baseConfig(s)
	cfg.KnownHosts = filepath.Join(s.Dir, "other_known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, other) + "\n"
	if err := os.WriteFile(cfg.KnownHosts, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.AcceptNewHostKeys = true // never applies to a changed key
	d := dialer(t, cfg)
	_, err := d.Dial(context.Background(), host(s))
	if !errors.Is(err, rbssh.ErrHostKeyChanged) {
		t.Fatalf("got %v, want a changed host key error", err)
	}
	if transport.IsRetryable(err) {
		t.Error("a changed host key is retryable")
	}
	msg := err.Error()
	for _, want := range []string{"gw-test", "CHANGED", cfg.KnownHosts + ":1", "SHA256:"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %q", msg, want)
		}
	}
	if len(d.Accepted()) != 0 {
		t.Error("a changed key was accepted")
	}
}

func TestAcceptNewHostKey(t *testing.T) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.KnownHosts = filepath.Join(s.Dir, "sub", "new_known_hosts") // does not exist yet
	cfg.AcceptNewHostKeys = true
	var seen []rbssh.HostKeyAcceptance
	cfg.OnAccept = func(a rbssh.HostKeyAcceptance) { seen = append(seen, a) }
	tr := dial(t, s, cfg)
	if res, err := tr.Run(context.Background(), transport.Command{Args: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %v %d", err, res.ExitCode)
	}
	if len(seen) != 1 || seen[0].Host != "gw-test" || !strings.HasPrefix(seen[0].Fingerprint, "SHA256:") || seen[0].KnownHosts != cfg.KnownHosts {
		t.Fatalf("acceptances: %+v", seen)
	}
	// A reconnect in the same run trusts the key it accepted.
	rbssh.KillConnForTest(tr)
	if _, err := tr.Run(context.Background(), transport.Command{Args: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	// The key is in the file: a dialer without the flag trusts it.
	cfg.AcceptNewHostKeys = false
	cfg.OnAccept = nil
	dial(t, s, cfg)
	st, err := os.Stat(cfg.KnownHosts)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("known_hosts: %v %v", err, st.Mode())
	}
}

func TestKnownHostsMissing(t *testing.T) {
	_, err := rbssh.NewDialer(rbssh.Config{KnownHosts: filepath.Join(t.TempDir(), "nope")})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("got %v", err)
	}
}

func TestConnectionRefused(t *testing.T) {
	dir := t.TempDir()
	kh := filepath.Join(dir, "known_hosts")
	os.WriteFile(kh, nil, 0o600)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	priv, _ := newKey(t)
	key := filepath.Join(dir, "id")
	writeKey(t, key, priv, "")
	d := dialer(t, rbssh.Config{KnownHosts: kh, Identity: key, ConnectTimeout: time.Second})
	start := time.Now()
	_, err = d.Dial(context.Background(), &inventory.Host{Name: "gw-down", Address: "127.0.0.1", Port: port})
	var ce *transport.ConnError
	if !errors.As(err, &ce) || !transport.IsRetryable(err) {
		t.Fatalf("got %v, want a retryable *transport.ConnError", err)
	}
	if !strings.Contains(err.Error(), "gw-down") || !strings.Contains(err.Error(), "refused") {
		t.Errorf("error %q does not say which host and why", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("refused connection took %v", time.Since(start))
	}
}

func TestAuthRefused(t *testing.T) {
	s := startSSHD(t)
	priv, _ := newKey(t)
	cfg := baseConfig(s)
	cfg.Identity = filepath.Join(s.Dir, "stranger")
	writeKey(t, cfg.Identity, priv, "")
	_, err := dialer(t, cfg).Dial(context.Background(), host(s))
	var ae *rbssh.AuthError
	if !errors.As(err, &ae) || transport.IsRetryable(err) {
		t.Fatalf("got %v, want a non-retryable *AuthError", err)
	}
}

func TestEncryptedIdentity(t *testing.T) {
	s := startSSHD(t)
	key := filepath.Join(s.Dir, "id_encrypted")
	writeKey(t, key, s.ClientPriv, "correct horse")
	cfg := baseConfig(s)
	cfg.Identity = key

	_, err := dialer(t, cfg).Dial(context.Background(), host(s))
	if err == nil || !strings.Contains(err.Error(), "encrypted") {
		t.Fatalf("no passphrase: got %v", err)
	}
	cfg.Passphrase = secret.New("wrong horse")
	_, err = dialer(t, cfg).Dial(context.Background(), host(s))
	if err == nil || !strings.Contains(err.Error(), "wrong passphrase") || strings.Contains(err.Error(), "wrong horse") {
		t.Fatalf("wrong passphrase: got %v", err)
	}
	cfg.Passphrase = secret.Value{}
	asked := 0
	cfg.PassphraseFunc = func() (secret.Value, error) { asked++; return secret.New("correct horse"), nil }
	dial(t, s, cfg)
	if asked != 1 {
		t.Errorf("passphrase asked %d times", asked)
	}
}

func TestAgent(t *testing.T) {
	s := startSSHD(t)
	if _, err := exec.LookPath("ssh-agent"); err != nil {
		need(t, "no ssh-agent")
	}
	sock := filepath.Join(s.Dir, "agent.sock")
	cmd := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.NewClient(c).Add(agent.AddedKey{PrivateKey: s.ClientPriv}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	cfg := baseConfig(s)
	cfg.Identity = ""
	cfg.Agent = true
	cfg.AgentSocket = sock
	tr := dial(t, s, cfg)
	if res, err := tr.Run(context.Background(), transport.Command{Args: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %v", err)
	}
}

func TestJumpHost(t *testing.T) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.Jump = "root@127.0.0.1:" + strconv.Itoa(s.Port)
	tr := dial(t, s, cfg)
	res, err := tr.Run(context.Background(), transport.Command{Args: []string{"sh", "-c", `printf %s "${SSH_CONNECTION%% *}"`}})
	if err != nil {
		t.Fatal(err)
	}
	// Through the jump the connection to the target comes from loopback, by
	// way of the jump host's sshd.
	if string(res.Stdout) != "127.0.0.1" {
		t.Errorf("SSH_CONNECTION client %q", res.Stdout)
	}
	// By inventory name.
	cfg.Jump = "bastion"
	cfg.Lookup = func(name string) *inventory.Host {
		if name == "bastion" {
			return &inventory.Host{Name: "bastion", Address: "127.0.0.1", Port: s.Port}
		}
		return nil
	}
	dial(t, s, cfg)
}

func TestReconnectBeforeCommand(t *testing.T) {
	s := startSSHD(t)
	tr := dial(t, s, baseConfig(s))
	ctx := context.Background()
	if _, err := tr.Run(ctx, transport.Command{Args: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	rbssh.KillConnForTest(tr)
	res, err := tr.Run(ctx, transport.Command{Args: []string{"echo", "again"}})
	if err != nil || string(res.Stdout) != "again\n" {
		t.Fatalf("after a dropped connection: %v %q", err, res.Stdout)
	}
}

func TestOutcomeUnknown(t *testing.T) {
	s := startSSHD(t)
	tr := dial(t, s, baseConfig(s))
	go func() {
		time.Sleep(300 * time.Millisecond)
		rbssh.KillConnForTest(tr)
	}()
	_, err := tr.Run(context.Background(), transport.Command{Args: []string{"sleep", "3"}})
	if !errors.Is(err, rbssh.ErrOutcomeUnknown) || !transport.IsRetryable(err) {
		t.Fatalf("got %v, want a retryable unknown outcome", err)
	}
	if !strings.Contains(err.Error(), "gw-test") {
		t.Errorf("error %q does not name the host", err)
	}
	if _, err := tr.Run(context.Background(), transport.Command{Args: []string{"true"}}); err != nil {
		t.Fatalf("next command: %v", err)
	}
}

func TestKeepaliveDetectsDeadPeer(t *testing.T) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.Keepalive = 100 * time.Millisecond
	tr := dial(t, s, cfg)
	ctx := context.Background()
	if _, err := tr.Run(ctx, transport.Command{Args: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	// Idle over several intervals: the connection stays.
	time.Sleep(350 * time.Millisecond)
	// A peer that stops answering: keepalives time out, the connection is
	// dropped, and the next command reconnects instead of hanging.
	s.signalConnections(t, syscall.SIGSTOP)
	time.Sleep(600 * time.Millisecond)
	s.signalConnections(t, syscall.SIGCONT)
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := tr.Run(c, transport.Command{Args: []string{"echo", "ok"}})
	if err != nil || string(res.Stdout) != "ok\n" {
		t.Fatalf("after a silent peer: %v %q", err, res.Stdout)
	}
}

func TestCommandTimeout(t *testing.T) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.CommandTimeout = 300 * time.Millisecond
	tr := dial(t, s, cfg)
	start := time.Now()
	_, err := tr.Run(context.Background(), transport.Command{Args: []string{"sleep", "5"}})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("got %v after %v", err, time.Since(start))
	}
}

func TestDialContextCancelled(t *testing.T) {
	s := startSSHD(t)
	d := dialer(t, baseConfig(s))
	c, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := d.Dial(c, host(s))
	if err == nil {
		t.Fatal("dial with a cancelled context succeeded")
	}
}

// BenchmarkDial measures connect, handshake and authentication.
func BenchmarkDial(b *testing.B) {
	s := startSSHD(b)
	d, err := rbssh.NewDialer(baseConfig(s))
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for i := 0; i < b.N; i++ {
		tr, err := d.DialSSH(context.Background(), host(s))
		if err != nil {
			b.Fatal(err)
		}
		tr.Close()
	}
}

// BenchmarkRun measures one command on an open connection: a session open,
// an exec and the command.
func BenchmarkRun(b *testing.B) {
	for _, qa := range []bool{true, false} {
		name := "quickack"
		if !qa {
			name = "no-quickack"
		}
		b.Run(name, func(b *testing.B) {
			s := startSSHD(b)
			cfg := baseConfig(s)
			cfg.NoQuickAck = !qa
			d, err := rbssh.NewDialer(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			tr, err := d.DialSSH(context.Background(), host(s))
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := tr.Run(context.Background(), transport.Command{Args: []string{"true"}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBatch4 measures four commands in one session.
func BenchmarkBatch4(b *testing.B) {
	s := startSSHD(b)
	d, err := rbssh.NewDialer(baseConfig(s))
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	tr, err := d.DialSSH(context.Background(), host(s))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	cmd := rbssh.Cmd{Command: transport.Command{Args: []string{"true"}}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := tr.Batch(context.Background(), []rbssh.Cmd{cmd, cmd, cmd, cmd}); err != nil {
			b.Fatal(err)
		}
	}
}
