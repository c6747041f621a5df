package lab_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

// The acceptance tests share one lab of three gateways with nginx,
// PostgreSQL and Vault; each test puts back what it changes.
var shared struct {
	once sync.Once
	dir  string
	l    *lab.Lab
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		if err := lab.Down(shared.dir); err != nil {
			fmt.Fprintf(os.Stderr, "lab down: %v\n", err)
			code = 1
		}
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

func sharedLab(t *testing.T) *lab.Lab {
	t.Helper()
	cfg := lab.Full("", 3)
	if err := lab.Available(cfg); err != nil {
		labtest.Missing(t, "lab infrastructure is missing: "+err.Error())
	}
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "rbl")
		if shared.err != nil {
			return
		}
		cfg.Dir = shared.dir
		cfg.Owner = os.Getpid()
		ctx, cancel := context.WithTimeout(context.Background(), labtest.UpTimeout)
		defer cancel()
		start := time.Now()
		shared.l, shared.err = lab.Up(ctx, cfg)
		t.Logf("lab up with 3 gateways: %s", time.Since(start).Round(time.Millisecond))
	})
	if shared.err != nil {
		t.Fatalf("lab up: %v", shared.err)
	}
	return shared.l
}

func dialSSH(t *testing.T, g *lab.Gateway, cfg *ssh.ClientConfig) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", g.SSHAddr(), cfg)
	if err != nil {
		t.Fatalf("ssh %s@%s: %v", cfg.User, g.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sshConfig(t *testing.T, l *lab.Lab, user string) *ssh.ClientConfig {
	t.Helper()
	key, err := os.ReadFile(l.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := knownhosts.New(l.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	return &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: cb, HostKeyAlgorithms: []string{ssh.KeyAlgoED25519}, Timeout: 10 * time.Second}
}

// remote runs cmd in a new session and returns its output and exit code.
func remote(t *testing.T, c *ssh.Client, cmd string) (string, int) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer s.Close()
	// One writer for both streams, locked: two io.Copy calls into one
	// bytes.Buffer lose data.
	var out lockedBuffer
	s.Stdout, s.Stderr = &out, &out
	err = s.Run(cmd)
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitStatus()
	}
	t.Fatalf("run %q: %v", cmd, err)
	return "", -1
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestSSHVerifiesHostKeys(t *testing.T) {
	l := sharedLab(t)
	cfg := sshConfig(t, l, "root")
	for _, g := range l.Gateways {
		if g.User != "root" {
			continue
		}
		c := dialSSH(t, g, cfg)
		out, code := remote(t, c, "hostname; wc -c </root/.bashrc; stat -c %a /etc/litellm/litellm.env; systemctl --version")
		want := g.Name + "\n0\n600\n"
		if code != 0 || !strings.HasPrefix(out, want) || !strings.Contains(out, "lab stand-in") {
			t.Errorf("%s: got %q (exit %d), want prefix %q and the stand-in's version", g.Name, out, code, want)
		}
	}

	// known_hosts holding another key for the address: refused.
	other, err := hostKey()
	if err != nil {
		t.Fatal(err)
	}
	g := l.Gateways[0]
	bad := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(bad, []byte(knownhosts.Line([]string{g.Address}, other)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cb, err := knownhosts.New(bad)
	if err != nil {
		t.Fatal(err)
	}
	wrong := *cfg
	wrong.HostKeyCallback = cb
	_, err = ssh.Dial("tcp", g.SSHAddr(), &wrong)
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) || len(ke.Want) == 0 {
		t.Fatalf("dial with a wrong host key: got %v, want a knownhosts key mismatch", err)
	}

	// Another gateway's key is wrong too: each host has its own.
	if l.Gateways[0].HostKeyLine == l.Gateways[2].HostKeyLine {
		t.Fatal("gateways share a host key")
	}
}

func TestDropRuleTimesOutPort4000ButSSHWorks(t *testing.T) {
	l := sharedLab(t)
	g := l.Gateway("gw3")
	rule := []string{"INPUT", "-p", "tcp", "--dport", "4000", "-j", "DROP"}
	iptables := func(op string) error {
		args := append([]string{"netns", "exec", g.Namespace, "iptables", "-w", op}, rule...)
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s: %v: %s", op, err, out)
		}
		return nil
	}
	if err := iptables("-I"); err != nil {
		t.Fatal(err)
	}
	inserted := true
	t.Cleanup(func() {
		if inserted {
			if err := iptables("-D"); err != nil {
				t.Error(err)
			}
		}
	})

	start := time.Now()
	c, err := net.DialTimeout("tcp", g.Address+":4000", 1500*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("port 4000 answered through a DROP rule")
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial port 4000: got %v, want a timeout", err)
	}
	t.Logf("port 4000 timed out after %s", time.Since(start).Round(time.Millisecond))

	// The root namespace's own iptables are untouched; SSH still works.
	if out, code := remote(t, dialSSH(t, g, sshConfig(t, l, "root")), "systemctl is-active litellm"); code != 0 || out != "active\n" {
		t.Fatalf("ssh through the DROP rule: %q exit %d", out, code)
	}

	// nginx's passive health check routes around the silent gateway.
	key := validKey(t, l)
	for i := 0; i < 2*len(l.Gateways); i++ {
		if code := get(t, "http://"+l.Nginx.Addr+"/v1/models", key); code != http.StatusOK {
			t.Fatalf("request %d through nginx with gw3 dropped: status %d", i, code)
		}
	}

	if err := iptables("-D"); err != nil {
		t.Fatal(err)
	}
	inserted = false
	c, err = net.DialTimeout("tcp", g.Address+":4000", 2*time.Second)
	if err != nil {
		t.Fatalf("port 4000 after the rule is gone: %v", err)
	}
	c.Close()
}

func validKey(t *testing.T, l *lab.Lab) secret.Value {
	t.Helper()
	now := time.Now()
	for _, k := range l.Seed.Keys {
		if k.Valid(now.Add(time.Hour)) {
			return k.Key
		}
	}
	t.Fatal("no valid seeded key")
	return secret.Value{}
}

func get(t *testing.T, url string, key secret.Value) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !key.IsZero() {
		req.Header.Set("Authorization", "Bearer "+key.Reveal())
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestGatewayAcceptsSeededKeysOnly(t *testing.T) {
	l := sharedLab(t)
	good := validKey(t, l)
	wrong, err := litellm.NewVirtualKey()
	if err != nil {
		t.Fatal(err)
	}
	var blocked secret.Value
	for _, k := range l.Seed.Keys {
		if k.Blocked {
			blocked = k.Key
			break
		}
	}
	bases := []string{"http://" + l.Nginx.Addr}
	for _, g := range l.Gateways {
		bases = append(bases, g.URL())
	}
	for _, base := range bases {
		for _, c := range []struct {
			name string
			key  secret.Value
			want int
		}{
			{"seeded key", good, http.StatusOK},
			{"master key", l.MasterKey, http.StatusOK},
			{"wrong key", wrong, http.StatusUnauthorized},
			{"blocked key", blocked, http.StatusUnauthorized},
		} {
			if c.key.IsZero() {
				continue
			}
			if got := get(t, base+"/v1/models", c.key); got != c.want {
				t.Errorf("%s with the %s: status %d, want %d", base, c.name, got, c.want)
			}
		}
	}
}

func TestSystemctlStopRefusesConnections(t *testing.T) {
	l := sharedLab(t)
	g := l.Gateway("gw1")
	c := dialSSH(t, g, sshConfig(t, l, "root"))
	t.Cleanup(func() {
		if out, err := l.Systemctl(context.Background(), g, "start", "litellm"); err != nil {
			t.Errorf("restart gw1: %v: %s", err, out)
		}
	})

	if out, code := remote(t, c, "systemctl stop litellm"); code != 0 {
		t.Fatalf("systemctl stop: exit %d: %s", code, out)
	}
	if out, code := remote(t, c, "systemctl is-active litellm"); code != 3 || out != "inactive\n" {
		t.Errorf("is-active after stop: %q exit %d, want inactive exit 3", out, code)
	}
	if _, code := remote(t, c, "systemctl status litellm.service"); code != 3 {
		t.Errorf("status after stop: exit %d, want 3", code)
	}
	_, err := net.DialTimeout("tcp", g.Address+":4000", 2*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial port 4000 after stop: %v, want connection refused", err)
	}
	// Stopping a stopped unit is fine, as with systemd.
	if out, code := remote(t, c, "systemctl stop litellm"); code != 0 {
		t.Errorf("second stop: exit %d: %s", code, out)
	}

	if out, code := remote(t, c, "systemctl start litellm && systemctl is-active litellm"); code != 0 || out != "active\n" {
		t.Fatalf("start: %q exit %d", out, code)
	}
	if code := get(t, g.URL()+"/health/liveliness", secret.Value{}); code != http.StatusOK {
		t.Fatalf("liveliness after start: %d", code)
	}
	// The gateway outlived the session that started it.
	c.Close()
	time.Sleep(100 * time.Millisecond)
	if code := get(t, g.URL()+"/health/liveliness", secret.Value{}); code != http.StatusOK {
		t.Fatalf("liveliness after the session ended: %d", code)
	}
}

func TestSystemctlContract(t *testing.T) {
	l := sharedLab(t)
	g := l.Gateway("gw3")
	c := dialSSH(t, g, sshConfig(t, l, "root"))
	for _, tc := range []struct {
		cmd  string
		code int
		out  string
	}{
		{"systemctl is-active litellm", 0, "active\n"},
		{"systemctl is-active --quiet litellm.service", 0, ""},
		{"systemctl status litellm", 0, "Active: active (running)"},
		{"systemctl status nosuch", 4, "Unit nosuch.service could not be found.\n"},
		{"systemctl is-active nosuch", 3, "inactive\n"},
		{"systemctl start nosuch", 5, "Failed to start nosuch.service: Unit nosuch.service not found.\n"},
		{"systemctl stop nosuch.service", 5, "Failed to stop nosuch.service: Unit nosuch.service not loaded.\n"},
		{"systemctl frobnicate litellm", 1, "stand-in"},
	} {
		out, code := remote(t, c, tc.cmd)
		if code != tc.code || !strings.Contains(out, tc.out) {
			t.Errorf("%s: %q exit %d, want %q exit %d", tc.cmd, out, code, tc.out, tc.code)
		}
	}

	// A unit whose process dies at start fails like one: the gateway
	// refuses the well-known default master key.
	env, err := os.ReadFile(g.EnvPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(g.EnvPath(), env, 0o600); err != nil {
			t.Error(err)
		}
		if out, err := l.Systemctl(context.Background(), g, "restart", "litellm"); err != nil {
			t.Errorf("restart gw3: %v: %s", err, out)
		}
	})
	bad := strings.Replace(string(env), "LITELLM_MASTER_KEY="+l.MasterKey.Reveal(), "LITELLM_MASTER_KEY=sk-1234", 1)
	if err := os.WriteFile(g.EnvPath(), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := remote(t, c, "systemctl restart litellm"); code == 0 {
		t.Fatalf("restart with the default master key succeeded: %s", out)
	}
	if out, code := remote(t, c, "systemctl is-active litellm"); code != 3 || out != "failed\n" {
		t.Errorf("is-active after a failed start: %q exit %d, want failed exit 3", out, code)
	}
}

func TestSudoUser(t *testing.T) {
	l := sharedLab(t)
	g := l.Gateway(lab.SudoGateway)
	if !g.Sudo || g.User != lab.SudoUser {
		t.Fatalf("%s: user %s sudo %v", g.Name, g.User, g.Sudo)
	}
	c := dialSSH(t, g, sshConfig(t, l, g.User))
	out, code := remote(t, c, "id -un; sudo -n systemctl is-active litellm; sudo -n id -u")
	if want := lab.SudoUser + "\nactive\n0\n"; code != 0 || out != want {
		t.Fatalf("got %q exit %d, want %q", out, code, want)
	}
	// Without sudo the user cannot touch the gateway's secrets.
	if _, code := remote(t, c, "cat /etc/litellm/litellm.env"); code == 0 {
		t.Error("the sudo user read litellm.env without sudo")
	}
	// The user exists on its gateway only.
	_, err := ssh.Dial("tcp", l.Gateway("gw1").SSHAddr(), sshConfig(t, l, lab.SudoUser))
	if err == nil {
		t.Error("the sudo user logged in to gw1")
	}
}

func TestVaultRunnerTokenIsLeastPrivilege(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	runner, err := l.Vault.Client(l.Vault.RunnerToken)
	if err != nil {
		t.Fatal(err)
	}
	s, err := runner.KVv2("secret").Get(ctx, "litellm/master")
	if err != nil {
		t.Fatalf("runner reads secret/litellm/master: %v", err)
	}
	if got, _ := s.Data["key"].(string); got != l.MasterKey.Reveal() {
		t.Error("secret/litellm/master does not hold the gateways' master key")
	}
	if _, err := runner.KVv2("secret").Put(ctx, "litellm/test-write", map[string]any{"key": "x"}); err != nil {
		t.Errorf("runner writes under secret/litellm/: %v", err)
	}
	if _, err := runner.KVv2("secret").Put(ctx, "other/thing", map[string]any{"key": "x"}); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("runner writes secret/other/thing: %v, want permission denied", err)
	}
	if _, err := runner.Sys().ListPolicies(); err == nil {
		t.Error("runner lists policies")
	}
	root, err := l.Vault.Client(l.Vault.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := root.KVv2("secret").Put(ctx, "other/thing", map[string]any{"key": "x"}); err != nil {
		t.Errorf("root writes secret/other/thing: %v", err)
	}
	health, err := root.Sys().Health()
	if err != nil {
		t.Fatal(err)
	}
	if health.Version != "1.21.4" || health.Sealed {
		t.Errorf("vault version %s sealed %v", health.Version, health.Sealed)
	}
}

func TestInventoryAndEnv(t *testing.T) {
	l := sharedLab(t)
	inv, err := inventory.LoadFile(l.InventoryPath)
	if err != nil {
		t.Fatalf("load the lab's inventory: %v", err)
	}
	if len(inv.Hosts) != len(l.Gateways) || inv.SSH.KnownHosts != l.KnownHosts || inv.SSH.Identity != l.ClientKey {
		t.Errorf("inventory hosts %d, ssh %+v", len(inv.Hosts), inv.SSH)
	}
	for i, h := range inv.Hosts {
		g := l.Gateways[i]
		if h.Name != g.Name || h.Address != g.Address || h.Port != 22 || h.User != g.User || h.Sudo != g.Sudo ||
			len(h.Groups) != 1 || h.Groups[0] != "gateways" {
			t.Errorf("host %d: %+v, gateway %+v", i, h, g)
		}
	}
	if inv.Vault.Address != l.Vault.Addr || inv.Vault.Token.Env != "VAULT_TOKEN" || inv.Database.URL.Env != "DATABASE_URL" {
		t.Errorf("vault %+v database %+v", inv.Vault, inv.Database)
	}
	env, err := os.ReadFile(l.EnvPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"VAULT_ADDR='" + l.Vault.Addr + "'", "VAULT_TOKEN='" + l.Vault.RunnerToken.Reveal() + "'", "DATABASE_URL='" + l.DatabaseURL + "'"} {
		if !strings.Contains(string(env), want) {
			t.Errorf("env file lacks %s", strings.SplitN(want, "=", 2)[0])
		}
	}
	if strings.Contains(string(env), l.Vault.RootToken.Reveal()) {
		t.Error("env file holds the root token")
	}
	if fi, err := os.Stat(l.EnvPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("env file mode: %v %v", fi.Mode(), err)
	}
}

func TestUpReusesHealthyLab(t *testing.T) {
	l := sharedLab(t)
	cfg := lab.Full(l.Dir, 3)
	cfg.Owner = os.Getpid()
	start := time.Now()
	again, err := lab.Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.Block != l.Block || again.Gateways[0].SSHDPID != l.Gateways[0].SSHDPID || !again.MasterKey.Equal(l.MasterKey) {
		t.Fatalf("second Up built a new lab: block %d/%d", again.Block, l.Block)
	}
	t.Logf("second Up: %s", time.Since(start).Round(time.Millisecond))
	if st := again.Status(context.Background()); !st.Healthy() {
		t.Fatalf("status: %+v", st)
	}
}

// TestLabsCoexist brings up a second lab beside the shared one: its own
// addresses and names, both reachable, and its Down leaves the other be.
func TestLabsCoexist(t *testing.T) {
	l := sharedLab(t)
	dir := t.TempDir()
	other, err := lab.Up(context.Background(), lab.Config{Dir: dir, Gateways: 2, Owner: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if other.Block == l.Block || other.Prefix == l.Prefix || other.Gateways[0].Address == l.Gateways[0].Address {
		t.Fatalf("second lab shares block %d prefix %s", other.Block, other.Prefix)
	}
	for _, x := range []*lab.Lab{l, other} {
		c := dialSSH(t, x.Gateways[0], sshConfig(t, x, "root"))
		if out, code := remote(t, c, "hostname"); code != 0 || out != "gw1\n" {
			t.Errorf("lab %s gw1: %q %d", x.Prefix, out, code)
		}
	}
	if err := lab.Down(dir); err != nil {
		t.Fatal(err)
	}
	assertGone(t, other)
	if out, code := remote(t, dialSSH(t, l.Gateways[0], sshConfig(t, l, "root")), "true"); code != 0 {
		t.Fatalf("shared lab after the other's Down: %s %d", out, code)
	}
}

// assertGone checks that no namespace or veth of lab l (taken down) is
// left. Test packages run side by side, each with its own labs, so the
// block may already belong to a new lab: its names are not leftovers.
func assertGone(t *testing.T, l *lab.Lab) {
	t.Helper()
	if blockTakenByOther(l.Block, l.Dir) {
		return
	}
	prefix := l.Prefix
	for _, d := range []string{"/run/netns", "/sys/class/net"} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix) {
				t.Errorf("%s/%s is left", d, e.Name())
			}
		}
	}
}

func TestDownLeavesNothing(t *testing.T) {
	if err := lab.Available(lab.Full("", 2)); err != nil {
		labtest.Missing(t, err.Error())
	}
	dir := t.TempDir()
	cfg := lab.Full(dir, 2)
	cfg.Owner = os.Getpid()
	l, err := lab.Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, g := range l.Gateways {
		pids = append(pids, g.SSHDPID, g.BootPID)
	}
	pids = append(pids, l.Nginx.PID, l.Vault.PID)
	pids = append(pids, namespacePIDs(t, l)...)
	if pg, err := os.ReadFile(filepath.Join(l.Postgres.Dir, "data", "postmaster.pid")); err == nil {
		var pid int
		fmt.Sscan(string(pg), &pid)
		pids = append(pids, pid)
	}
	if len(namespacePIDs(t, l)) < 2*len(l.Gateways) {
		t.Fatalf("expected sshd and a gateway in each namespace, found %d processes", len(namespacePIDs(t, l)))
	}

	if err := lab.Down(dir); err != nil {
		t.Fatal(err)
	}
	assertGone(t, l)
	for _, pid := range pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !bytes.Contains(b, []byte(") Z ")) {
			t.Errorf("process %d is left: %s", pid, b)
		}
	}
	// Another lab (of a test running beside this one) may have taken the
	// block since; it must not name this lab's directory.
	if b, err := os.ReadFile(filepath.Join(lab.RunDir, fmt.Sprintf("block-%03d.json", l.Block))); err == nil && bytes.Contains(b, []byte(`"`+dir+`"`)) {
		t.Errorf("allocation of block %d is left: %s", l.Block, b)
	}
	if _, err := lab.Load(dir); err == nil {
		t.Error("Load finds the lab after Down")
	}
	if err := lab.Down(dir); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// namespacePIDs lists the processes in the lab's namespaces.
func namespacePIDs(t *testing.T, l *lab.Lab) []int {
	t.Helper()
	var pids []int
	for _, g := range l.Gateways {
		out, err := exec.Command("ip", "netns", "pids", g.Namespace).Output()
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(out)) {
			var pid int
			fmt.Sscan(f, &pid)
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestStaleLabIsReclaimed: a lab whose owner process died is torn down,
// servers included, by the next lab that allocates addresses.
func TestStaleLabIsReclaimed(t *testing.T) {
	cfg := lab.Full("", 1)
	if err := lab.Available(cfg); err != nil {
		labtest.Missing(t, err.Error())
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	cfg.Dir = t.TempDir()
	cfg.Owner = dead.Process.Pid
	stale, err := lab.Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{stale.Gateways[0].SSHDPID, stale.Nginx.PID, stale.Vault.PID}

	dir := t.TempDir()
	fresh, err := lab.Up(context.Background(), lab.Config{Dir: dir, Gateways: 1, Owner: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Down(dir)
	for _, pid := range pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !bytes.Contains(b, []byte(") Z ")) {
			t.Errorf("process %d of the stale lab still runs: %s", pid, b)
		}
	}
	// The fresh lab may have taken the reclaimed block, and so may a lab of
	// another test package running at the same time (assertGone allows it).
	if fresh.Prefix != stale.Prefix {
		assertGone(t, stale)
	}
	if _, err := lab.Load(cfg.Dir); err == nil {
		t.Error("the stale lab is still recorded")
	}
}

// blockTakenByOther reports whether address block i is now allocated to a
// lab in a directory other than dir.
func blockTakenByOther(i int, dir string) bool {
	b, err := os.ReadFile(filepath.Join(lab.RunDir, fmt.Sprintf("block-%03d.json", i)))
	if err != nil {
		return false
	}
	var a struct {
		Dir string `json:"dir"`
	}
	return json.Unmarshal(b, &a) == nil && a.Dir != "" && a.Dir != dir
}

// hostKey makes a throwaway ed25519 public key.
func hostKey() (ssh.PublicKey, error) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

// TestGatewaysReachNothingElse: a gateway has a route to its own /30 and no
// default route, so nothing it runs can reach past the lab.
func TestGatewaysReachNothingElse(t *testing.T) {
	l := sharedLab(t)
	for _, g := range l.Gateways {
		out, err := exec.Command("ip", "-n", g.Namespace, "-4", "route", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", g.Name, err, out)
		}
		routes := strings.TrimSpace(string(out))
		if strings.Contains(routes, "default") || strings.Count(routes, "\n") != 0 || !strings.HasSuffix(strings.Fields(routes)[0], "/30") {
			t.Errorf("%s routes: %q, want only its /30", g.Name, routes)
		}
	}
	if l.Nginx.Addr[:10] != "127.0.0.1:" || !strings.HasPrefix(l.Vault.Addr, "http://127.0.0.1:") {
		t.Errorf("nginx %s and vault %s must listen on loopback", l.Nginx.Addr, l.Vault.Addr)
	}
}
