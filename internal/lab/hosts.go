package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	_ "embed"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/unix"
)

// SSHDBin is OpenSSH's server.
var SSHDBin = "/usr/sbin/sshd"

// ErrNoSSHD means OpenSSH's server or a tool the gateway hosts need (ip,
// nsenter, setsid, mount) is missing, or the caller is not root.
var ErrNoSSHD = errors.New("gateway hosts cannot run here")

// SudoUser is the non-root login user of the sudo gateway (gw2): it may run
// any command as root through "sudo -n".
const SudoUser = "rbops"

// SudoGateway is the name of the gateway whose login user is SudoUser.
const SudoGateway = "gw2"

//go:embed systemctl.sh
var systemctlScript string

// Gateway is one gateway host: a network namespace with a veth to the root
// namespace, its own iptables, an OpenSSH server on port 22 and, in its own
// mount namespace, /etc/litellm and a systemctl stand-in.
type Gateway struct {
	Name        string `json:"name"`
	Namespace   string `json:"namespace"`
	Address     string `json:"address"`      // inside the namespace
	HostAddress string `json:"host_address"` // the root namespace's end of the veth
	Veth        string `json:"veth"`         // the root namespace's end
	SSHPort     int    `json:"ssh_port"`
	User        string `json:"user"` // login user: root, or SudoUser
	Sudo        bool   `json:"sudo"`
	// Dir is the gateway's own directory, mounted at /etc/litellm inside
	// it: config.yaml and litellm.env.
	Dir string `json:"dir"`
	// RunDir holds the gateway process's pid file and log.
	RunDir string `json:"run_dir"`
	// HostKeyLine is the host key in authorized_keys form.
	HostKeyLine string `json:"host_key"`
	// SSHDPID is sshd, the host's PID 1, as seen from the root namespace.
	// BootPID is the process the lab started for the host (the same
	// process: the boot script execs sshd).
	SSHDPID int `json:"sshd_pid"`
	BootPID int `json:"boot_pid"`

	hostKey ssh.PublicKey
}

// HostKey is the gateway's ed25519 host key.
func (g *Gateway) HostKey() ssh.PublicKey {
	if g.hostKey == nil && g.HostKeyLine != "" {
		g.hostKey, _, _, _, _ = ssh.ParseAuthorizedKey([]byte(g.HostKeyLine))
	}
	return g.hostKey
}

// SSHAddr is address:port for an SSH client.
func (g *Gateway) SSHAddr() string { return g.Address + ":" + strconv.Itoa(g.SSHPort) }

// URL is the gateway's LiteLLM base URL.
func (g *Gateway) URL() string { return "http://" + g.Address + ":4000" }

// ConfigPath and EnvPath are the gateway's files as seen from the root
// namespace.
func (g *Gateway) ConfigPath() string { return filepath.Join(g.Dir, "config.yaml") }
func (g *Gateway) EnvPath() string    { return filepath.Join(g.Dir, "litellm.env") }

// hostsAvailable reports whether gateway hosts can run here, and if not,
// why.
func hostsAvailable() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: network namespaces need root", ErrNoSSHD)
	}
	if !isExec(SSHDBin) {
		return fmt.Errorf("%w: %s not found", ErrNoSSHD, SSHDBin)
	}
	for _, tool := range []string{"ip", "nsenter", "setsid", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not found", ErrNoSSHD, tool)
		}
	}
	if _, err := user.Lookup("sshd"); err != nil {
		return fmt.Errorf("%w: user sshd (privilege separation) not found", ErrNoSSHD)
	}
	return nil
}

// clientKey makes the runner's ed25519 key pair in dir: id_ed25519 (OpenSSH
// format, 0600) and id_ed25519.pub.
func clientKey(dir string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate client key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "runbook-lab runner")
	if err != nil {
		return nil, fmt.Errorf("encode client key: %w", err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode client key: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "id_ed25519"), pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("write client key: %w", err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " runbook-lab runner\n"
	if err := os.WriteFile(filepath.Join(dir, "id_ed25519.pub"), []byte(line), 0o644); err != nil {
		return nil, fmt.Errorf("write client key: %w", err)
	}
	return sp, nil
}

// hostKeyPair makes an ed25519 host key; it returns the private key in
// OpenSSH PEM form and the public key.
func hostKeyPair(comment string) ([]byte, ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, nil, err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(block), sp, nil
}

const sshdConfig = `# runbook lab gateway %s: OpenSSH server in its own network namespace.
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile /etc/ssh/lab_authorized_keys
StrictModes no
MaxStartups 100:30:200
MaxSessions 64
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
`

// hostFiles writes a gateway's directory: its /etc overlay (sshd
// configuration, host key, authorized keys, hostname, hosts, and on the
// sudo gateway the login user and its sudoers drop-in), /etc/litellm's
// directory and the boot script.
func (l *Lab) hostFiles(g *Gateway, authorized []byte, hosts []byte, sudo *sudoFiles) error {
	base := filepath.Dir(g.Dir)
	upper := filepath.Join(base, "etc-upper")
	for _, d := range []string{g.Dir, g.RunDir, filepath.Join(base, "etc-work"), filepath.Join(upper, "ssh"), filepath.Join(upper, "litellm")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// The merged /etc takes its mode from the upper directory.
	if err := os.Chmod(upper, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(upper, "ssh"), 0o755); err != nil {
		return err
	}
	priv, pub, err := hostKeyPair("root@" + g.Name)
	if err != nil {
		return fmt.Errorf("generate host key: %w", err)
	}
	g.hostKey = pub
	g.HostKeyLine = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{"ssh/ssh_host_ed25519_key", priv, 0o600},
		{"ssh/ssh_host_ed25519_key.pub", []byte(g.HostKeyLine + " root@" + g.Name + "\n"), 0o644},
		{"ssh/sshd_config", []byte(fmt.Sprintf(sshdConfig, g.Name)), 0o644},
		{"ssh/lab_authorized_keys", authorized, 0o644},
		{"hostname", []byte(g.Name + "\n"), 0o644},
		{"hosts", append(append([]byte(nil), hosts...), []byte("127.0.1.1\t"+g.Name+"\n")...), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(upper, f.path), f.data, f.mode); err != nil {
			return err
		}
	}
	if sudo != nil {
		if err := sudo.write(upper); err != nil {
			return fmt.Errorf("sudo user: %w", err)
		}
	}

	// The host's mounts, in order, done by one mount -a: every exec
	// costs milliseconds of CPU here, and twenty hosts boot at once.
	var fstab strings.Builder
	fmt.Fprintf(&fstab, "# runbook lab gateway %s: its own /proc and /sys, /etc overlay and bind mounts.\n", g.Name)
	fstab.WriteString("lab-proc /proc proc nosuid,nodev,noexec 0 0\n")
	fstab.WriteString("lab-sysfs /sys sysfs nosuid,nodev,noexec 0 0\n")
	fmt.Fprintf(&fstab, "lab-etc /etc overlay lowerdir=/etc,upperdir=%s,workdir=%s 0 0\n",
		fstabEscape(upper), fstabEscape(filepath.Join(base, "etc-work")))
	bind := func(src, dst string) {
		fmt.Fprintf(&fstab, "%s %s none bind 0 0\n", fstabEscape(src), fstabEscape(dst))
	}
	bind(g.Dir, "/etc/litellm")
	empty := filepath.Join(l.Dir, "home", "empty")
	for _, dot := range []string{"/root/.bashrc", "/root/.profile"} {
		if fi, err := os.Stat(dot); err == nil && fi.Mode().IsRegular() {
			bind(empty, dot)
		}
	}
	bind(filepath.Join(l.Dir, "bin", "systemctl"), "/usr/bin/systemctl")
	if sudo != nil {
		home := filepath.Join(base, "home")
		if err := os.MkdirAll(filepath.Join(home, SudoUser), 0o750); err != nil {
			return err
		}
		if err := os.Chmod(home, 0o755); err != nil {
			return err
		}
		if err := os.Chown(filepath.Join(home, SudoUser), sudo.uid, sudo.gid); err != nil {
			return err
		}
		bind(home, "/home")
	}
	fstabPath := filepath.Join(base, "fstab")
	if err := os.WriteFile(fstabPath, []byte(fstab.String()), 0o644); err != nil {
		return err
	}

	var b strings.Builder
	fmt.Fprintf(&b, "#!/bin/sh\n# Boots runbook lab gateway %s as PID 1 of its PID namespace, in its own\n# network, UTS and mount namespaces.\nset -e\n", g.Name)
	fmt.Fprintf(&b, "echo %s >/proc/sys/kernel/hostname\n", shq(g.Name))
	b.WriteString("echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null || true\n")
	fmt.Fprintf(&b, "mount -a -T %s\n", shq(fstabPath))
	fmt.Fprintf(&b, "exec %s -D -e -f /etc/ssh/sshd_config\n", shq(SSHDBin))
	return os.WriteFile(filepath.Join(base, "boot.sh"), []byte(b.String()), 0o755)
}

// fstabEscape escapes a path for fstab, where blanks separate fields.
func fstabEscape(p string) string {
	return strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(p)
}

// sudoFiles are the account files of the sudo gateway: copies of this
// machine's passwd, group and shadow with SudoUser added, so the user
// exists on that gateway alone.
type sudoFiles struct {
	passwd, group, shadow []byte
	shadowGID             int
	uid, gid              int // of SudoUser
}

func newSudoFiles() (*sudoFiles, error) {
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return nil, err
	}
	group, err := os.ReadFile("/etc/group")
	if err != nil {
		return nil, err
	}
	shadow, err := os.ReadFile("/etc/shadow")
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat("/etc/shadow")
	if err != nil {
		return nil, err
	}
	gid := 0
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		gid = int(st.Gid)
	}
	used := map[int]bool{}
	for _, f := range [][]byte{passwd, group} {
		sc := bufio.NewScanner(bytes.NewReader(f))
		for sc.Scan() {
			parts := strings.Split(sc.Text(), ":")
			if len(parts) > 2 {
				if parts[0] == SudoUser {
					// The machine has the user already: keep its files.
					u, err := user.Lookup(SudoUser)
					if err != nil {
						return nil, err
					}
					uid, _ := strconv.Atoi(u.Uid)
					ugid, _ := strconv.Atoi(u.Gid)
					return &sudoFiles{passwd: passwd, group: group, shadow: shadow, shadowGID: gid, uid: uid, gid: ugid}, nil
				}
				if n, err := strconv.Atoi(parts[2]); err == nil {
					used[n] = true
				}
			}
		}
	}
	id := 2900
	for used[id] {
		id++
	}
	sfx := func(b []byte) []byte {
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		return b
	}
	s := &sudoFiles{
		passwd:    append(sfx(passwd), fmt.Sprintf("%s:x:%d:%d:runbook lab operator:/home/%s:/bin/bash\n", SudoUser, id, id, SudoUser)...),
		group:     append(sfx(group), fmt.Sprintf("%s:x:%d:\n", SudoUser, id)...),
		shadow:    append(sfx(shadow), fmt.Sprintf("%s:*:20000:0:99999:7:::\n", SudoUser)...),
		shadowGID: gid,
		uid:       id,
		gid:       id,
	}
	return s, nil
}

func (s *sudoFiles) write(upper string) error {
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"passwd", s.passwd, 0o644}, {"group", s.group, 0o644}, {"shadow", s.shadow, 0o640}} {
		p := filepath.Join(upper, f.name)
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			return err
		}
		if f.name == "shadow" {
			if err := os.Chown(p, 0, s.shadowGID); err != nil {
				return err
			}
		}
	}
	dropin := filepath.Join(upper, "sudoers.d")
	if err := os.MkdirAll(dropin, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dropin, 0o755); err != nil {
		return err
	}
	rule := fmt.Sprintf("# runbook lab: the operator account of %s may run anything as root without a password.\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n", SudoGateway, SudoUser)
	return os.WriteFile(filepath.Join(dropin, "runbook-lab"), []byte(rule), 0o440)
}

// setupNetwork creates the namespaces and veths of gws: one ip batch in the
// root namespace, one per namespace. The host-side routes get quickack, so
// the runner's side acknowledges sshd's small packets at once instead of
// stalling on delayed ACKs.
func setupNetwork(ctx context.Context, gws []*Gateway) error {
	var root bytes.Buffer
	for _, g := range gws {
		fmt.Fprintf(&root, "netns add %s\n", g.Namespace)
		fmt.Fprintf(&root, "link add %s type veth peer name eth0 netns %s\n", g.Veth, g.Namespace)
		fmt.Fprintf(&root, "addr add %s/30 dev %s\n", g.HostAddress, g.Veth)
		fmt.Fprintf(&root, "link set %s up\n", g.Veth)
		net := hostNet(g.HostAddress)
		fmt.Fprintf(&root, "route replace %s/30 dev %s proto kernel scope link src %s quickack 1\n", net, g.Veth, g.HostAddress)
	}
	if _, err := run(ctx, root.Bytes(), "ip", "-batch", "-"); err != nil {
		return fmt.Errorf("create namespaces: %w", err)
	}
	for _, g := range gws {
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+g.Veth+"/disable_ipv6", []byte("1\n"), 0o644)
	}
	errs := parallel(len(gws), func(i int) error {
		g := gws[i]
		in := fmt.Sprintf("addr add %s/30 dev eth0\nlink set eth0 up\nlink set lo up\n", g.Address)
		if _, err := run(ctx, []byte(in), "ip", "-n", g.Namespace, "-batch", "-"); err != nil {
			return fmt.Errorf("configure namespace %s: %w", g.Namespace, err)
		}
		return nil
	})
	return errors.Join(errs...)
}

// hostNet is the /30 network of a host-side address (its .1).
func hostNet(host string) string {
	i := strings.LastIndexByte(host, '.')
	n, _ := strconv.Atoi(host[i+1:])
	return host[:i+1] + strconv.Itoa(n-1)
}

// bootHost starts the gateway's sshd through its boot script and waits
// until it listens on port 22. The host gets its own network, UTS, mount
// and PID namespaces: sshd is the host's PID 1, so processes that outlive
// their SSH session (the gateway started by systemctl) are reaped by it,
// as init reaps them on a real host, and die with it.
// It reports the PIDs through started (under the caller's lock) as soon as
// they are known, so that a failed Up can still end them.
func (l *Lab) bootHost(ctx context.Context, g *Gateway, started func(boot, sshd int)) error {
	base := filepath.Dir(g.Dir)
	// sshd's privilege separation directory, which its package's init
	// script would create.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return fmt.Errorf("boot %s: %w", g.Name, err)
	}
	pid, err := startInNetns(g.Namespace, "/bin/sh", []string{filepath.Join(base, "boot.sh")},
		minimalEnv(), filepath.Join(base, "sshd.log"))
	if err != nil {
		return fmt.Errorf("boot %s: %w", g.Name, err)
	}
	started(pid, pid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if listensOn(pid, 22) && runs(pid, "sshd") {
			return nil
		}
		if !alive(pid) {
			return fmt.Errorf("boot %s: sshd exited%s", g.Name, fileTail(filepath.Join(base, "sshd.log")))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("boot %s: sshd does not listen on port 22%s", g.Name, fileTail(filepath.Join(base, "sshd.log")))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// RebootHost boots g again, as Up boots it, after its sshd (the host's
// init) was stopped, and waits until sshd listens again.
func (l *Lab) RebootHost(ctx context.Context, g *Gateway) error {
	return l.bootHost(ctx, g, func(boot, sshd int) { g.BootPID, g.SSHDPID = boot, sshd })
}

// startInNetns starts name as a daemon (see daemon) in the network
// namespace netns, as PID 1 of a new PID namespace, in new mount (private)
// and UTS namespaces. It enters the network namespace on a locked thread
// and forks from there, which saves the ip netns exec and unshare programs
// (each exec costs milliseconds of CPU here).
func startInNetns(netns, name string, args, env []string, logPath string) (int, error) {
	nsf, err := os.Open(filepath.Join("/run/netns", netns))
	if err != nil {
		return 0, fmt.Errorf("open network namespace: %w", err)
	}
	defer nsf.Close()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:       true,
		Cloneflags:   syscall.CLONE_NEWPID,
		Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS,
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(nsf.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", netns, err)
			return
		}
		err = cmd.Start()
		// A thread that cannot go back stays locked and dies with this
		// goroutine rather than run other goroutines in the namespace.
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return 0, fmt.Errorf("start %s in %s: %w", name, netns, err)
	}
	go func() { _ = cmd.Wait() }()
	return cmd.Process.Pid, nil
}

// listensOn reports whether a TCP socket listens on port in the network
// namespace of process pid (read from /proc/PID/net, so no packet is sent).
func listensOn(pid, port int) bool {
	want := fmt.Sprintf(":%04X ", port)
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			// sl local_address rem_address st ...
			if len(fields) > 3 && strings.HasSuffix(fields[1]+" ", want) && fields[3] == "0A" {
				return true
			}
		}
	}
	return false
}

// gatewayPIDs lists the LiteLLM gateway processes running on g, as root
// namespace PIDs.
func gatewayPIDs(g *Gateway) []int {
	var pids []int
	for _, pid := range netnsPIDs(g.Namespace) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if err == nil && strings.HasPrefix(string(b), "litellm-gateway") && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// startGateway starts the LiteLLM gateway on g through its systemctl with
// --no-block, then waits, reading g's /proc/net (no process per poll, which
// matters with twenty gateways on two cores), until it listens on port 4000
// or its process dies.
func startGateway(ctx context.Context, g *Gateway) error {
	if out, err := systemctlInGateway(ctx, g, "--no-block", "start", "litellm"); err != nil {
		return fmt.Errorf("start litellm on %s: %w: %s", g.Name, err, out)
	}
	b, err := os.ReadFile(filepath.Join(g.RunDir, "litellm.pid"))
	if err != nil {
		return fmt.Errorf("start litellm on %s: %w", g.Name, err)
	}
	nspid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("start litellm on %s: bad pid file: %w", g.Name, err)
	}
	pid := rootPID(g, nspid)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if listensOn(g.SSHDPID, 4000) {
			return nil
		}
		if !alive(pid) {
			return fmt.Errorf("start litellm on %s: the process exited%s", g.Name, fileTail(filepath.Join(g.RunDir, "litellm.log")))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("start litellm on %s: port 4000 does not listen%s", g.Name, fileTail(filepath.Join(g.RunDir, "litellm.log")))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rootPID translates a PID of g's PID namespace to the root namespace's;
// 0 when no such process runs.
func rootPID(g *Gateway, nspid int) int {
	want := strconv.Itoa(nspid)
	for _, pid := range netnsPIDs(g.Namespace) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "NSpid:" && f[len(f)-1] == want && len(f) > 2 {
				return pid
			}
		}
	}
	return 0
}

// systemctlInGateway runs the systemctl stand-in inside gateway g's
// namespaces (the namespaces of its sshd), as a command over SSH would.
func systemctlInGateway(ctx context.Context, g *Gateway, args ...string) ([]byte, error) {
	argv := append([]string{"--target", strconv.Itoa(g.SSHDPID), "--net", "--mount", "--uts", "--pid",
		"/usr/bin/systemctl"}, args...)
	return run(ctx, nil, "nsenter", argv...)
}

// parallel runs fn(0..n-1) at once and returns the errors.
func parallel(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = fn(i)
		}(i)
	}
	wg.Wait()
	return errs
}

// shq quotes s for a POSIX shell.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// SSHClientConfig is a client configuration for user with the lab's
// identity and its known_hosts file (host keys are verified).
func (l *Lab) SSHClientConfig(user string) (*ssh.ClientConfig, error) {
	b, err := os.ReadFile(l.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("read lab identity: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("parse lab identity: %w", err)
	}
	cb, err := knownhosts.New(l.KnownHosts)
	if err != nil {
		return nil, fmt.Errorf("read lab known_hosts: %w", err)
	}
	return &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
		Timeout:           10 * time.Second,
	}, nil
}

// Gateway returns the gateway named name, or nil.
func (l *Lab) Gateway(name string) *Gateway {
	for _, g := range l.Gateways {
		if g.Name == name {
			return g
		}
	}
	return nil
}

// Systemctl runs the gateway's systemctl (the lab stand-in) inside it,
// without SSH; for tests and the lab's own start-up.
func (l *Lab) Systemctl(ctx context.Context, g *Gateway, args ...string) ([]byte, error) {
	return systemctlInGateway(ctx, g, args...)
}
