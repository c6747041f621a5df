package ssh_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshd is an OpenSSH server on loopback for one test, started in a private
// mount namespace where root's .bashrc is empty (the machine's own loads
// pyenv, about 80 ms per command, which real gateways do not pay).
type sshd struct {
	Dir        string
	Port       int
	Addr       string // 127.0.0.1:port
	HostKey    ssh.PublicKey
	ClientKey  string // path of the client's private key
	ClientPub  ssh.PublicKey
	ClientPriv ed25519.PrivateKey
	KnownHosts string // holds the host key
	pid        int
}

func need(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (CI is set, so this is a failure)", what)
	}
	t.Skip(what)
}

func writeKey(t testing.TB, path string, priv ed25519.PrivateKey, pass string) {
	t.Helper()
	var blk *pem.Block
	var err error
	if pass == "" {
		blk, err = ssh.MarshalPrivateKey(priv, "")
	} else {
		blk, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", []byte(pass))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB) (ed25519.PrivateKey, ssh.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return priv, sp
}

func startSSHD(t testing.TB) *sshd {
	t.Helper()
	if os.Geteuid() != 0 {
		need(t, "sshd tests need root")
	}
	bin := "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		need(t, "no /usr/sbin/sshd (apt-get install openssh-server)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		need(t, "no unshare")
	}
	dir := t.TempDir()
	s := &sshd{Dir: dir}
	hostPriv, hostPub := newKey(t)
	s.HostKey = hostPub
	writeKey(t, filepath.Join(dir, "host_key"), hostPriv, "")
	s.ClientPriv, s.ClientPub = newKey(t)
	s.ClientKey = filepath.Join(dir, "id_ed25519")
	writeKey(t, s.ClientKey, s.ClientPriv, "")
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(s.ClientPub), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755)

	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 100:30:200
LogLevel ERROR
AllowTcpForwarding yes
`, s.Port, filepath.Join(dir, "host_key"), filepath.Join(dir, "authorized_keys"))
		cfgPath := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		script := "mount --bind " + filepath.Join(dir, "empty") + " /root/.bashrc && exec " + bin + " -D -e -f " + cfgPath
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
		logf, err := os.Create(filepath.Join(dir, "sshd.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		s.pid = cmd.Process.Pid
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = syscall.Kill(-s.pid, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(3 * time.Second):
				_ = syscall.Kill(-s.pid, syscall.SIGKILL)
				<-exited
			}
		})
		if waitListen(s.Addr, exited) {
			break
		}
		log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
		if attempt == 2 {
			t.Fatalf("sshd did not start: %s", log)
		}
	}
	s.KnownHosts = filepath.Join(dir, "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, s.HostKey) + "\n"
	if err := os.WriteFile(s.KnownHosts, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func waitListen(addr string, exited chan struct{}) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// signalConnections stops (SIGSTOP) or resumes (SIGCONT) every sshd process
// serving a connection, leaving the listener alone.
func (s *sshd) signalConnections(t *testing.T, sig syscall.Signal) {
	t.Helper()
	for _, pid := range descendants(s.pid) {
		_ = syscall.Kill(pid, sig)
	}
}

func descendants(root int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		st := string(b)
		i := strings.LastIndexByte(st, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(st[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(root)
	return out
}
