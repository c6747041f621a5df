package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// The reliability suite's faults (internal/reliability/RELIABILITY.md):
// compromise-master runs against the lab while one server or resource it
// depends on fails. Each fault must end the run with an error that names
// what failed, lose nothing (the journal verifies, every side effect in
// the world has its intent in the journal, Vault holds one new master-key
// version at most, every virtual key row holds the old key or one Vault
// holds), and, once the fault is cleared, `runbook resume` must complete
// the run with the crash matrix's invariants holding.

// faultWait bounds every wait on the runner or a server: generous, since
// other tests load the machine.
const faultWait = 4 * time.Minute

// faultRun is a lab run with the fault's own environment and what the
// runner printed.
type faultRun struct {
	*labRun
	mode    string
	env     []string
	outputs map[string][]byte
	// lostProxy names hosts whose proxy the fault itself ended (a host's
	// sshd is its init: stopping it stops everything on it).
	lostProxy map[string]bool
}

func newFaultRun(t *testing.T, mode string) *faultRun {
	t.Helper()
	r := newLabRun(t)
	return &faultRun{labRun: r, mode: mode, env: append([]string{}, r.env...), outputs: map[string][]byte{}, lostProxy: map[string]bool{}}
}

// bgRun is a runner started in the background.
type bgRun struct {
	cmd        *exec.Cmd
	out, errb  bytes.Buffer
	done       chan struct{}
	code       int
	start, end time.Time
}

func (r *faultRun) startExec(t *testing.T) *bgRun {
	t.Helper()
	b := &bgRun{done: make(chan struct{})}
	b.cmd = r.w.cmd(r.env, "exec", "compromise-master", "--yes", "--reason", "reliability: fault injection")
	b.cmd.Stdout, b.cmd.Stderr = &b.out, &b.errb
	b.start = time.Now()
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := b.cmd.Wait()
		b.end = time.Now()
		b.code = processExit(err)
		close(b.done)
	}()
	t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	})
	return b
}

func (b *bgRun) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// wait waits for the runner to end and returns its exit code.
func (b *bgRun) wait(t *testing.T, r *faultRun, what string) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(faultWait):
		_ = b.cmd.Process.Kill()
		<-b.done
		t.Fatalf("%s: the runner did not end within %v\n%s%s", what, faultWait, b.out.String(), b.errb.String())
	}
	r.outputs[what+" stdout"], r.outputs[what+" stderr"] = b.out.Bytes(), b.errb.Bytes()
	t.Logf("%s: exit %d after %v", what, b.code, b.end.Sub(b.start).Round(time.Millisecond))
	return b.code
}

// journalNow reads the run's journal straight from the state directory
// (complete lines only), as the runner writes it.
func (r *faultRun) journalNow() []journal.Record {
	files, _ := filepath.Glob(filepath.Join(r.w.state, "runs", "*.jsonl"))
	if len(files) != 1 {
		return nil
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		return nil
	}
	recs, _, _ := journal.DecodeLines(data)
	return recs
}

// waitRecord polls the journal until a record matches and returns it; it
// fails the test when the runner ends first.
func (r *faultRun) waitRecord(t *testing.T, b *bgRun, what string, match func(journal.Record) bool) journal.Record {
	t.Helper()
	deadline := time.Now().Add(faultWait)
	for {
		exited := b.exited()
		for _, rec := range r.journalNow() {
			if match(rec) {
				return rec
			}
		}
		if exited {
			t.Fatalf("the run ended (exit %d) before %s\n%s%s", b.code, what, b.out.String(), b.errb.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the journal after %v", what, faultWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func isRecord(typ journal.Type, stepID string) func(journal.Record) bool {
	return func(rec journal.Record) bool { return rec.Type == typ && rec.Step == stepID }
}

// runID is the id of the one run in the state directory.
func (r *faultRun) runID(t *testing.T) string {
	t.Helper()
	runs := r.w.runs()
	if len(runs) != 1 {
		t.Fatalf("%d runs in the state directory, want 1", len(runs))
	}
	return runs[0].RunID
}

// checkError checks the runner's exit code and that its error names each
// of want (the step, the host or server, the cause).
func (r *faultRun) checkError(t *testing.T, b *bgRun, code int, want ...string) {
	t.Helper()
	errOut := b.errb.String()
	if b.code != code {
		t.Errorf("exit %d, want %d\n%s%s", b.code, code, b.out.String(), errOut)
	}
	line := ""
	for _, l := range strings.Split(errOut, "\n") {
		if strings.HasPrefix(l, "runbook: error: ") {
			line = l
			break
		}
	}
	if line == "" {
		t.Errorf("no \"runbook: error:\" line on stderr\n%s", errOut)
		return
	}
	t.Logf("error seen: %s", line)
	for _, w := range want {
		if !strings.Contains(errOut, w) {
			t.Errorf("the error does not say %q:\n%s", w, errOut)
		}
	}
	if !strings.Contains(errOut, "runbook resume ") {
		t.Errorf("no hint to resume:\n%s", errOut)
	}
}

// resume clears nothing itself: the fault must be cleared first. It runs
// `runbook resume` to the end and checks the crash matrix's invariants.
func (r *faultRun) resume(t *testing.T, id string) {
	t.Helper()
	start := time.Now()
	out, errOut, code := r.w.run(r.env, "resume", id)
	r.outputs["resume stdout"], r.outputs["resume stderr"] = []byte(out), []byte(errOut)
	if code != 0 {
		t.Fatalf("resume: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("resume: exit 0 after %v", time.Since(start).Round(time.Millisecond))
	r.checkNotes(t, id)
	r.checkInvariants(t, id, r.outputs)
}

// checkNotes checks that the journal holds every fact a run of
// compromise-master leaves for its incident record, whichever attempt
// wrote it: the master keys' fingerprints, the re-encryption, the
// re-issued keys (all of them), the exposure report, each gateway's key
// and the follow-ups. A fault between a side effect and its note must not
// lose the note.
func (r *faultRun) checkNotes(t *testing.T, id string) {
	t.Helper()
	kinds := map[string]int{}
	hosts := map[string]bool{}
	reissued := ""
	for _, rec := range r.w.journal(id) {
		if rec.Type != journal.TNote || rec.Note == nil {
			continue
		}
		kinds[rec.Note.Kind]++
		switch rec.Note.Kind {
		case "key_version":
			hosts[rec.Note.Fields["host"]] = true
		case "reissued_virtual_keys":
			reissued = rec.Note.Fields["count"]
		}
	}
	for _, k := range []string{"key_fingerprint", "reencrypted_at_rest", "reissued_virtual_keys", "exposure_report", "key_version", "follow_up"} {
		if kinds[k] == 0 {
			t.Errorf("the journal holds no %s note: a fact of the incident record is lost", k)
		}
	}
	for _, g := range r.lb.Gateways {
		if !hosts[g.Name] {
			t.Errorf("no key_version note for %s", g.Name)
		}
	}
	if want := strconv.Itoa(len(r.lb.Seed.Keys)); kinds["reissued_virtual_keys"] > 0 && reissued != want {
		t.Errorf("the last reissued_virtual_keys note counts %s keys, want %s", reissued, want)
	}
}

// checkNothingLost checks what must hold after a run that a fault stopped:
// the journal verifies; Vault gained one master-key version at most; every
// side effect found in the world (a Vault version, a virtual key stored or
// re-issued, a gateway stopped, contained or given a new key) has its
// intent in the journal; and every virtual key row holds either its seeded
// key or one that Vault holds for it. It reads the servers directly, not
// through the runner's view of them.
func (r *faultRun) checkNothingLost(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	lb := r.lb
	recs := r.w.journal(id)
	if err := journal.Verify(recs); err != nil {
		t.Errorf("journal hash chain: %v", err)
	}
	if _, err := journal.Replay(recs); err != nil {
		t.Errorf("journal replay: %v", err)
	}
	intent := map[string]bool{}
	for _, rec := range recs {
		if rec.Type == journal.TIntent {
			intent[rec.Step+"@"+rec.Host] = true
		}
	}
	needIntent := func(key, what string) {
		if !intent[key] {
			t.Errorf("%s, but the journal has no intent of %s", what, key)
		}
	}

	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	md, err := vc.Metadata(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	var newMaster secret.Value
	switch {
	case len(md.Versions) > 2 || md.CurrentVersion > 2:
		t.Errorf("Vault master key: %d versions, current %d: more than one new version", len(md.Versions), md.CurrentVersion)
	case md.CurrentVersion == 2:
		needIntent("new-master-key@", "Vault holds a second master-key version")
		e, err := vc.ReadVersion(ctx, "litellm/master", 2)
		if err != nil {
			t.Fatal(err)
		}
		newMaster = e.Secret("key")
	}

	// Virtual keys: each row holds its seeded hash, or the hash of the key
	// Vault holds for it.
	conn := connectDB(t, lb.DatabaseURL)
	defer conn.Close(ctx)
	seeded := map[string]string{} // seeded hash -> Vault name
	for _, k := range lb.Seed.Keys {
		name := k.Alias
		if name == "" {
			name = k.Hash
		}
		seeded[k.Hash] = name
	}
	inVault := map[string]bool{} // hashes of keys Vault holds
	names, err := vc.List(ctx, "litellm/virtual-keys")
	if err != nil && !errors.Is(err, vault.ErrNotFound) {
		t.Fatal(err)
	}
	if len(names) > 0 {
		needIntent("reissue@", fmt.Sprintf("Vault holds %d re-issued virtual keys", len(names)))
	}
	for _, n := range names {
		e, err := vc.Read(ctx, "litellm/virtual-keys/"+n)
		if err != nil {
			t.Errorf("read re-issued key %s: %v", n, err)
			continue
		}
		if k := e.Secret("key"); !k.IsZero() {
			inVault[litellm.HashToken(k.Reveal())] = true
		}
	}
	rows, err := conn.Query(ctx, `SELECT token FROM `+litellm.TableVerificationToken)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for _, tok := range tokens {
		if _, ok := seeded[tok]; ok {
			continue
		}
		changed++
		if !inVault[tok] {
			t.Errorf("virtual key row %s holds neither its seeded key nor one Vault holds: a key is lost", tok)
		}
	}
	if len(tokens) != len(lb.Seed.Keys) {
		t.Errorf("%d virtual key rows, %d seeded", len(tokens), len(lb.Seed.Keys))
	}
	if changed > 0 {
		needIntent("reissue@", fmt.Sprintf("%d virtual key rows were re-issued", changed))
	}

	// Gateways: proxy stopped, port dropped, new master key: each with
	// its intent; and no gateway holds a key Vault does not.
	for _, g := range lb.Gateways {
		if !gatewayRunning(g) && !r.lostProxy[g.Name] {
			needIntent("stop-proxy@"+g.Name, g.Name+"'s proxy is stopped")
		}
		if out, err := exec.Command("ip", "netns", "exec", g.Namespace, "iptables", "-w", "-S").CombinedOutput(); err != nil {
			t.Errorf("iptables on %s: %v\n%s", g.Name, err, out)
		} else if strings.Contains(string(out), "runbook:") {
			needIntent("drop-port@"+g.Name, g.Name+" has a containment rule")
		}
		k := envKey(t, g.EnvPath())
		switch {
		case k.Equal(lb.MasterKey):
		case !newMaster.IsZero() && k.Equal(newMaster):
			needIntent("rollout@", g.Name+" has the new master key")
		default:
			t.Errorf("%s's environment file holds a master key that is neither the old one nor Vault's new one", g.Name)
		}
	}
}

// gatewayRunning reports whether g's LiteLLM gateway process runs.
func gatewayRunning(g *lab.Gateway) bool {
	out, err := exec.Command("ip", "netns", "pids", g.Namespace).Output()
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(out)) {
		b, err := os.ReadFile("/proc/" + f + "/comm")
		if err == nil && strings.HasPrefix(string(b), "litellm-gateway") {
			return true
		}
	}
	return false
}

// envKey reads LITELLM_MASTER_KEY from a gateway's environment file.
func envKey(t *testing.T, path string) secret.Value {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "LITELLM_MASTER_KEY="); ok {
			return secret.New(v)
		}
	}
	t.Fatalf("%s holds no LITELLM_MASTER_KEY", path)
	return secret.Value{}
}

// poll calls ok until it is true or faultWait passes.
func poll(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(faultWait)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, faultWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// --- 1. sshd stopped ---------------------------------------------------

// faultSSHDStopped stops the sshd of gw3 before the run: it is the host's
// init (PID 1 of its PID namespace), so the host goes down with it, as a
// host whose sshd died is unreachable. Containment fails on gw3; the
// others are contained. The host is booted again the way the lab boots it
// and the run resumed.
func faultSSHDStopped(t *testing.T, r *faultRun) {
	g := r.lb.Gateway("gw3")
	stopSSHD(t, r, g)
	b := r.startExec(t)
	b.wait(t, r, "exec")
	r.checkError(t, b, ExitFailed, "step stop-proxy", "gw3", "connect to gw3", "connection refused")
	id := r.runID(t)
	r.checkNothingLost(t, id)

	rebootHost(t, r.lb, g)
	r.resume(t, id)
}

// faultSSHDStoppedContaining stops gw3's sshd (and so the host) while the
// run contains: as soon as the first firewall rule's intent is journaled,
// with the runner's SSH connection to gw3 open.
func faultSSHDStoppedContaining(t *testing.T, r *faultRun) {
	g := r.lb.Gateway("gw3")
	b := r.startExec(t)
	r.waitRecord(t, b, "the first intent of drop-port", isRecord(journal.TIntent, "drop-port"))
	stopSSHD(t, r, g)
	b.wait(t, r, "exec")
	r.checkError(t, b, ExitFailed, "gw3")
	id := r.runID(t)
	r.checkNothingLost(t, id)

	rebootHost(t, r.lb, g)
	r.resume(t, id)
}

func stopSSHD(t *testing.T, r *faultRun, g *lab.Gateway) {
	t.Helper()
	pid := g.SSHDPID
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stop sshd of %s: %v", g.Name, err)
	}
	poll(t, "sshd of "+g.Name+" gone", func() bool { return !pidAlive(pid) })
	r.lostProxy[g.Name] = true
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && !bytes.ContainsAny(b[i+2:i+3], "ZXx")
}

// rebootHost starts a gateway host again as the lab boots it and waits
// until its sshd listens.
func rebootHost(t *testing.T, lb *lab.Lab, g *lab.Gateway) {
	t.Helper()
	if err := lb.RebootHost(context.Background(), g); err != nil {
		t.Fatal(err)
	}
}

// --- 2. network cut during the rollout ----------------------------------

// faultLinkDown takes gw3's link down (the root namespace's end of its
// veth) as soon as the rollout has observed every gateway and journaled
// its target (it then works on the hosts), holds it down until
// the runner gives up, then brings it up again and resumes. While the link
// is down a fallback route makes the host's addresses unreachable, so that
// nothing meant for it leaves through the machine's default route.
//
// A connection whose peer vanished without a word is found dead by the SSH
// keepalive (three intervals unanswered); in smoke mode the inventory sets
// a 1s interval instead of the default 15s, so the runner gives up in
// seconds rather than in about a minute.
func faultLinkDown(t *testing.T, r *faultRun) {
	g := r.lb.Gateway("gw3")
	if r.mode == "smoke" {
		r.useInventory(t, "inventory-keepalive.yaml", func(s string) string {
			return strings.Replace(s, "  command_timeout: 60s\n", "  command_timeout: 60s\n  keepalive: 1s\n", 1)
		})
	}
	i := strings.LastIndexByte(g.HostAddress, '.')
	n, _ := strconv.Atoi(g.HostAddress[i+1:])
	hostNet := g.HostAddress[:i+1] + strconv.Itoa(n-1) + "/30"
	sh(t, "ip", "route", "add", "unreachable", hostNet, "metric", "4242")
	t.Cleanup(func() { _ = exec.Command("ip", "route", "del", "unreachable", hostNet, "metric", "4242").Run() })

	b := r.startExec(t)
	r.waitRecord(t, b, "the rollout's target note", func(rec journal.Record) bool {
		return rec.Type == journal.TNote && rec.Step == "rollout" && rec.Note != nil && rec.Note.Kind == "rollout_target"
	})
	sh(t, "ip", "link", "set", g.Veth, "down")
	up := false
	linkUp := func() {
		if up {
			return
		}
		up = true
		sh(t, "ip", "link", "set", g.Veth, "up")
		// The lab's route to the host carries quickack; bringing the link
		// up again restores only the kernel's plain route.
		sh(t, "ip", "route", "replace", hostNet, "dev", g.Veth, "proto", "kernel", "scope", "link", "src", g.HostAddress, "quickack", "1")
	}
	t.Cleanup(linkUp)
	if route, _ := exec.Command("ip", "route", "get", g.Address).CombinedOutput(); strings.Contains(string(route), " via ") {
		t.Fatalf("with the link down the host's address is routed elsewhere: %s", route)
	}
	b.wait(t, r, "exec")
	r.checkError(t, b, ExitFailed, "step rollout", "gw3")
	id := r.runID(t)
	r.checkNothingLost(t, id)

	linkUp()
	// A command the runner gave up on may still run on gw3, its session
	// held by sshd until the dead connection is reset, which the link
	// coming back brings about: the environment file's write, reading the
	// new text from standard input. Once it is over, gw3 must hold a whole
	// environment file with a key Vault holds, not a cut one.
	poll(t, "the commands of the dead connection gone from gw3", func() bool { return len(netnsCmdlines(g, "rollout-write")) == 0 })
	r.checkNothingLost(t, id)
	r.resume(t, id)
}

// netnsCmdlines lists the command lines of g's processes that contain s.
func netnsCmdlines(g *lab.Gateway, s string) []string {
	out, err := exec.Command("ip", "netns", "pids", g.Namespace).Output()
	if err != nil {
		return nil
	}
	var found []string
	for _, pid := range strings.Fields(string(out)) {
		b, err := os.ReadFile("/proc/" + pid + "/cmdline")
		if err == nil && strings.Contains(string(b), s) {
			found = append(found, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return found
}

// --- 3. Vault stopped, hung or sealed mid-run -----------------------------

// vaultFront stands between the runner and the lab's Vault, as the network
// path to a Vault server does, and counts the virtual-key writes Vault
// answers, to put a fault at a fixed point of the re-issue. Stopping it is,
// to the runner, Vault stopping: every connection is cut and new ones are
// refused. Hanging it is Vault hanging: connections are accepted and
// nothing is answered. The lab's Vault server keeps its storage in memory,
// so stopping the real process could not be undone; behind this front it
// keeps what it stored, as a restarted Vault with durable storage does.
// Sealing is real: the front seals the lab's Vault through Vault's API
// and passes every request on, so the runner talks to the sealed Vault
// itself; the lab keeps the unseal key, and unsealing it gives back
// everything it stored.
type vaultFront struct {
	addr   string // 127.0.0.1:PORT
	target *url.URL
	vault  *lab.Vault
	// After this many virtual-key writes answered by Vault, the front
	// stops, hangs (the answer to the last one never reaches the runner)
	// or seals Vault (before the answer to the last one reaches the
	// runner, which gets it).
	faultAfter int
	fault      frontFault
	sealErr    error // from sealing Vault, once faulted

	mu      sync.Mutex
	srv     *http.Server
	writes  int
	hung    chan struct{} // closed on release; nil when not hung
	faulted chan struct{} // closed once the fault is in
}

// frontFault is what a vaultFront does after its faultAfter-th write.
type frontFault int

const (
	frontStop frontFault = iota // cut every connection, refuse new ones
	frontHang                   // accept connections, answer nothing
	frontSeal                   // seal the lab's Vault, pass everything on
)

func newVaultFront(t *testing.T, v *lab.Vault, faultAfter int, fault frontFault) *vaultFront {
	t.Helper()
	u, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &vaultFront{target: u, vault: v, faultAfter: faultAfter, fault: fault, faulted: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	f.serve(ln)
	t.Cleanup(func() {
		f.release()
		f.stop()
	})
	return f
}

func (f *vaultFront) serve(ln net.Listener) {
	proxy := httputil.NewSingleHostReverseProxy(f.target)
	proxy.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		f.waitHung(req)
		write := (req.Method == http.MethodPut || req.Method == http.MethodPost) &&
			strings.HasPrefix(req.URL.Path, "/v1/secret/data/litellm/virtual-keys/")
		if !write {
			proxy.ServeHTTP(w, req)
			return
		}
		// Forward, and once the faultAfter-th write is answered, stop,
		// hang or seal Vault before the answer reaches the runner.
		rec := &heldResponse{header: http.Header{}}
		proxy.ServeHTTP(rec, req)
		f.mu.Lock()
		f.writes++
		fault := f.writes == f.faultAfter
		if fault && f.fault == frontHang {
			f.hung = make(chan struct{})
		}
		if fault && f.fault == frontSeal {
			// The answer waits until Vault is sealed. Writes the runner
			// sent meanwhile (it writes several at once) may land before
			// the seal, as they would when an operator seals a Vault.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			f.sealErr = f.vault.Seal(ctx)
			cancel()
		}
		f.mu.Unlock()
		if fault {
			close(f.faulted)
			switch f.fault {
			case frontStop:
				go f.stop()
				panic(http.ErrAbortHandler)
			case frontHang:
				f.waitHung(req)
			}
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.code)
		_, _ = w.Write(rec.body.Bytes())
	}), ReadHeaderTimeout: 10 * time.Second}
	f.mu.Lock()
	f.srv = srv
	f.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// waitHung blocks while the front hangs, or until the request is gone.
func (f *vaultFront) waitHung(req *http.Request) {
	f.mu.Lock()
	ch := f.hung
	f.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-req.Context().Done():
		}
	}
}

// release ends a hang.
func (f *vaultFront) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hung != nil {
		close(f.hung)
		f.hung = nil
	}
	f.faultAfter = -1
}

// heldResponse holds a response until the front decides to deliver it.
type heldResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (h *heldResponse) Header() http.Header { return h.header }
func (h *heldResponse) WriteHeader(c int)   { h.code = c }
func (h *heldResponse) Write(b []byte) (int, error) {
	if h.code == 0 {
		h.code = http.StatusOK
	}
	return h.body.Write(b)
}

// stop closes the listener and every connection.
func (f *vaultFront) stop() {
	f.mu.Lock()
	srv := f.srv
	f.srv = nil
	f.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// start serves again on the same address, as a restarted Vault does.
func (f *vaultFront) start(t *testing.T) {
	t.Helper()
	var ln net.Listener
	poll(t, "listen on "+f.addr+" again", func() bool {
		var err error
		ln, err = net.Listen("tcp", f.addr)
		return err == nil
	})
	f.release()
	f.serve(ln)
}

// useInventory points the runner at a copy of the lab's inventory, edited.
func (r *faultRun) useInventory(t *testing.T, name string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(r.lb.InventoryPath)
	if err != nil {
		t.Fatal(err)
	}
	inv := edit(string(b))
	if inv == string(b) {
		t.Fatalf("%s: the edit changed nothing in the lab's inventory", name)
	}
	p := filepath.Join(r.w.dir, name)
	if err := os.WriteFile(p, []byte(inv), 0o644); err != nil {
		t.Fatal(err)
	}
	r.env = append(r.env, "RUNBOOK_INVENTORY="+p)
}

// useVaultFront points the runner at the front: the inventory's Vault
// address and VAULT_ADDR.
func (r *faultRun) useVaultFront(t *testing.T, f *vaultFront) {
	t.Helper()
	r.useInventory(t, "inventory-vault-front.yaml", func(s string) string {
		return strings.ReplaceAll(s, r.lb.Vault.Addr, "http://"+f.addr)
	})
	r.env = append(r.env, "VAULT_ADDR=http://"+f.addr)
}

// faultVaultStopped stops Vault (see vaultFront) in the middle of the
// re-issue, right after Vault stored the 10th new virtual key and before
// its answer reached the runner; it stays stopped until the runner gives
// up, then comes back and the run is resumed.
func faultVaultStopped(t *testing.T, r *faultRun) {
	f := newVaultFront(t, r.lb.Vault, 10, frontStop)
	r.useVaultFront(t, f)
	b := r.startExec(t)
	waitFault(t, b, f)
	b.wait(t, r, "exec")
	r.checkError(t, b, ExitFailed, "step reissue", f.addr, "connection refused")
	id := r.runID(t)
	r.checkNothingLost(t, id)

	f.start(t)
	r.resume(t, id)
}

// faultVaultHung makes Vault hang (see vaultFront) at the same point: it
// accepts connections and answers nothing until the runner gives up on it
// (its Vault client's request timeout, 30s, and retries), then answers
// again and the run is resumed.
func faultVaultHung(t *testing.T, r *faultRun) {
	f := newVaultFront(t, r.lb.Vault, 10, frontHang)
	r.useVaultFront(t, f)
	b := r.startExec(t)
	waitFault(t, b, f)
	b.wait(t, r, "exec")
	r.checkError(t, b, ExitFailed, "step reissue", f.addr)
	id := r.runID(t)
	r.checkNothingLost(t, id)

	f.release()
	r.resume(t, id)
}

// faultVaultSealed seals the lab's Vault (see vaultFront) at the same
// point: right after it stored the 10th new virtual key, before its answer
// reaches the runner. The runner gets that answer, then talks to the
// sealed Vault until it gives up. Vault is unsealed with the lab's key
// (checkNothingLost reads Vault, and a sealed Vault answers nothing; the
// runner has ended, so nothing changes in between) and the run is resumed.
func faultVaultSealed(t *testing.T, r *faultRun) {
	f := newVaultFront(t, r.lb.Vault, 10, frontSeal)
	r.useVaultFront(t, f)
	b := r.startExec(t)
	waitFault(t, b, f)
	f.mu.Lock()
	sealErr := f.sealErr
	f.mu.Unlock()
	if sealErr != nil {
		t.Fatal(sealErr)
	}
	b.wait(t, r, "exec")
	r.checkError(t, b, ExitFailed, "step reissue", f.addr, "Vault is sealed")

	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	root, err := r.lb.Vault.Client(r.lb.Vault.RootToken)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := root.Sys().SealStatusWithContext(ctx); err != nil || !st.Sealed {
		t.Fatalf("Vault once the run failed: %+v %v, want sealed", st, err)
	}
	start := time.Now()
	if err := r.lb.Vault.Unseal(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Vault unsealed and active in %v", time.Since(start).Round(time.Millisecond))
	id := r.runID(t)
	r.checkNothingLost(t, id)
	r.resume(t, id)
}

func waitFault(t *testing.T, b *bgRun, f *vaultFront) {
	t.Helper()
	select {
	case <-f.faulted:
	case <-b.done:
		t.Fatalf("the run ended (exit %d) before the Vault fault\n%s%s", b.code, b.out.String(), b.errb.String())
	case <-time.After(faultWait):
		t.Fatal("the Vault fault did not happen")
	}
}

// --- 4. PostgreSQL restarted during the re-issue --------------------------

// faultPostgresRestart makes the re-issue's transaction wait on a lock
// the test takes on the virtual key table as soon as the re-issue's intent
// is journaled (the runner is then storing the new keys in Vault; the
// re-encryption before it writes that table too, so the lock cannot be
// taken earlier), then restarts the lab's PostgreSQL (pg_ctl restart -m
// fast) while that transaction is open.
func faultPostgresRestart(t *testing.T, r *faultRun) {
	lb := r.lb
	b, _ := r.startHeld(t, "reissue")
	pgRestart(t, lb)

	code := b.wait(t, r, "exec")
	id := r.runID(t)
	if code == 0 {
		// The runner rode out the restart: its retry found the database
		// back. Nothing to resume.
		t.Logf("the run completed across the restart")
		r.checkInvariants(t, id, r.outputs)
		return
	}
	r.checkError(t, b, ExitFailed, "step reissue", "litellm database 127.0.0.1:", "SQLSTATE")
	r.checkNothingLost(t, id)
	r.resume(t, id)
}

// tableLock holds LOCK TABLE ... IN EXCLUSIVE MODE in a transaction of its
// own: a step's transaction that writes one of the tables waits on it, so
// the test knows the step is between its intent and its commit.
type tableLock struct {
	url  string // the lab's database
	conn *pgx.Conn
	tx   pgx.Tx
}

func lockTables(t *testing.T, lb *lab.Lab, tables ...string) *tableLock {
	t.Helper()
	ctx := context.Background()
	conn := connectDB(t, lb.DatabaseURL)
	t.Cleanup(func() { conn.Close(context.Background()) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(tables))
	for i, tb := range tables {
		names[i] = pgx.Identifier{strings.Trim(tb, `"`)}.Sanitize()
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE `+strings.Join(names, ", ")+` IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	return &tableLock{url: lb.DatabaseURL, conn: conn, tx: tx}
}

// blocked counts the sessions of the lab's PostgreSQL that wait on a lock
// whose chain of blockers (pg_blocking_pids) leads to this table lock, and
// returns what the first of them runs. It asks from a session of its own:
// within the lock's transaction, pg_stat_activity would stay as it was at
// its first read.
func (l *tableLock) blocked(t *testing.T) (int, string) {
	t.Helper()
	ctx := context.Background()
	conn := connectDB(t, l.url)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT pid, pg_blocking_pids(pid), left(query, 160) FROM pg_stat_activity
		WHERE wait_event_type = 'Lock' ORDER BY backend_start`)
	if err != nil {
		t.Fatal(err)
	}
	blockers := map[int32][]int32{}
	queries := map[int32]string{}
	var order []int32
	for rows.Next() {
		var pid int32
		var by []int32
		var q string
		if err := rows.Scan(&pid, &by, &q); err != nil {
			t.Fatal(err)
		}
		blockers[pid], queries[pid] = by, q
		order = append(order, pid)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	holder := int32(l.conn.PgConn().PID())
	reaches := func(pid int32) bool {
		seen := map[int32]bool{pid: true}
		queue := []int32{pid}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, b := range blockers[p] {
				if b == holder {
					return true
				}
				if !seen[b] {
					seen[b] = true
					queue = append(queue, b)
				}
			}
		}
		return false
	}
	n, first := 0, ""
	for _, pid := range order {
		if reaches(pid) {
			if n == 0 {
				first = strings.Join(strings.Fields(queries[pid]), " ")
			}
			n++
		}
	}
	return n, first
}

// waitBlocked waits until want sessions wait behind the table lock (more
// fails the test) and returns what the first of them runs.
func (l *tableLock) waitBlocked(t *testing.T, want int, what string) string {
	t.Helper()
	deadline := time.Now().Add(faultWait)
	for {
		n, q := l.blocked(t)
		if n == want {
			return q
		}
		if n > want {
			t.Fatalf("%s: %d sessions wait behind the test's table lock, want %d", what, n, want)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d sessions wait behind the test's table lock after %v, want %d", what, n, faultWait, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *tableLock) release(t *testing.T) {
	t.Helper()
	if err := l.tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// atRestTables are the tables the re-encryption writes.
func atRestTables() []string {
	seen := map[string]bool{}
	var out []string
	for _, tc := range litellm.AtRestTables() {
		tb, _, _ := strings.Cut(tc, ".")
		if !seen[tb] {
			seen[tb] = true
			out = append(out, tb)
		}
	}
	return out
}

// stepTables are the tables whose lock holds a step between its intent
// and its commit.
var stepTables = map[string][]string{
	"reencrypt": atRestTables(),
	"reissue":   {litellm.TableVerificationToken},
}

// holdFrom says when the test can lock a step's tables: before the run
// starts for the re-encryption (no earlier step writes the database, and
// its observation reads without locking), once the re-encryption is done
// for the re-issue (the re-encryption writes the virtual key table too;
// the re-issue then still observes and stores its new keys in Vault
// before it writes the table). A lock taken only at the step's intent
// could come after a quick step had already committed, and the fault
// would land on a later step.
var holdFrom = map[string]string{"reencrypt": "", "reissue": "reencrypt"}

// startHeld starts compromise-master with stepID held between its intent
// and its commit: it returns once the step waits on the test's lock on its
// tables, with its intent journaled and no outcome.
func (r *faultRun) startHeld(t *testing.T, stepID string) (*bgRun, *tableLock) {
	t.Helper()
	prev, ok := holdFrom[stepID]
	if !ok {
		t.Fatalf("no way to hold step %s", stepID)
	}
	var l *tableLock
	if prev == "" {
		l = lockTables(t, r.lb, stepTables[stepID]...)
	}
	b := r.startExec(t)
	if prev != "" {
		r.waitRecord(t, b, prev+" done", func(rec journal.Record) bool {
			return rec.Step == prev && (rec.Type == journal.TDone || rec.Type == journal.TSkipped)
		})
		l = lockTables(t, r.lb, stepTables[stepID]...)
	}
	r.waitRecord(t, b, "the intent of "+stepID, isRecord(journal.TIntent, stepID))
	l.waitBlocked(t, 1, "step "+stepID)
	last := ""
	for _, rec := range r.journalNow() {
		if rec.Step == stepID && rec.Type != journal.TIntent && rec.Type != journal.TNote {
			t.Fatalf("step %s ended (%s) while the test held its tables", stepID, rec.Type)
		}
		if rec.Type == journal.TIntent {
			last = rec.Step
		}
	}
	if last != stepID {
		t.Fatalf("the lock holds step %s, not %s", last, stepID)
	}
	return b, l
}

func pgRestart(t *testing.T, lb *lab.Lab) {
	t.Helper()
	bin := ""
	for _, d := range append(append([]string{}, lab.PostgresBinDirs...), globDirs("/usr/lib/postgresql/*/bin")...) {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			bin = d
			break
		}
	}
	if bin == "" {
		t.Fatal("pg_ctl not found")
	}
	start := time.Now()
	data := filepath.Join(lb.Postgres.Dir, "data")
	sh(t, "runuser", "-u", "postgres", "--", filepath.Join(bin, "pg_ctl"), "-D", data,
		"-l", filepath.Join(lb.Postgres.Dir, "postgres.log"), "-m", "fast", "-w", "-t", "120", "restart")
	t.Logf("PostgreSQL restarted in %v", time.Since(start).Round(time.Millisecond))
}

func globDirs(pattern string) []string {
	m, _ := filepath.Glob(pattern)
	return m
}

// --- 5. the state directory full or read-only ----------------------------

// mountStateTmpfs mounts a small tmpfs on the run's state directory.
func mountStateTmpfs(t *testing.T, r *faultRun, size string) {
	t.Helper()
	if err := os.MkdirAll(r.w.state, 0o700); err != nil {
		t.Fatal(err)
	}
	sh(t, "mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "runbook-faults", r.w.state)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", r.w.state).Run() })
}

// fill writes zeros to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	// Small writes take what a large one could not.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
}

// stateFull fills the state directory (a 4 MB tmpfs) as soon as the
// intent of stepID is journaled: the step's side effect lands and the
// next record that needs a new page of the file system cannot be
// journaled (for the re-issue: its note for the incident record, which
// must not be lost). Then frees the space and resumes.
func stateFull(stepID string) func(t *testing.T, r *faultRun) {
	return func(t *testing.T, r *faultRun) {
		mountStateTmpfs(t, r, "4m")
		filler := filepath.Join(r.w.state, "filler")
		b := r.startExec(t)
		r.waitRecord(t, b, "the intent of "+stepID, isRecord(journal.TIntent, stepID))
		fill(t, filler)
		b.wait(t, r, "exec")
		r.checkError(t, b, r.endCode(t), "step "+stepID, "no space left on device")
		id := r.runID(t)
		r.checkNothingLost(t, id)

		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		r.resume(t, id)
	}
}

// endCode is the exit code the README documents for a run stopped by a
// failing state store: 1 (a step failed) when the run's end was journaled
// all the same (a torn record was cut, which made room), 5 when not.
func (r *faultRun) endCode(t *testing.T) int {
	t.Helper()
	recs := r.journalNow()
	if len(recs) > 0 && recs[len(recs)-1].Type == journal.TEnd {
		t.Logf("the run's end is journaled")
		return ExitFailed
	}
	t.Logf("the run's end is not journaled")
	return ExitInternal
}

// stateReadOnly puts the state directory on a small ext4 file system (a
// loop device, errors=remount-ro) and, while stepID's transaction waits on
// a table lock the test holds (after its intent is journaled, before its
// commit), triggers a file system error through ext4's sysfs: the kernel
// remounts it read-only under the running runner, as it does on a disk
// error. The test then lets the transaction commit: the step's side effect
// lands and nothing after it can be journaled. The fault is cleared the way an operator would: unmount, e2fsck,
// mount again.
func stateReadOnly(stepID string) func(t *testing.T, r *faultRun) {
	return func(t *testing.T, r *faultRun) { faultStateReadOnly(t, r, stepID) }
}

func faultStateReadOnly(t *testing.T, r *faultRun, stepID string) {
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck", "findmnt"} {
		if _, err := exec.LookPath(tool); err != nil {
			labtest.Missing(t, tool+" not found: "+err.Error())
		}
	}
	img := filepath.Join(r.w.dir, "state.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	sh(t, "mkfs.ext4", "-q", "-F", img)
	if err := os.MkdirAll(r.w.state, 0o700); err != nil {
		t.Fatal(err)
	}
	mount := func() {
		if out, err := exec.Command("mount", "-o", "loop,errors=remount-ro", img, r.w.state).CombinedOutput(); err != nil {
			labtest.Missing(t, fmt.Sprintf("mount an ext4 image on a loop device: %v: %s", err, out))
		}
	}
	mount()
	t.Cleanup(func() { _ = exec.Command("umount", "-l", r.w.state).Run() })
	dev := strings.TrimSpace(sh(t, "findmnt", "-n", "-o", "SOURCE", r.w.state))
	trigger := filepath.Join("/sys/fs/ext4", filepath.Base(dev), "trigger_fs_error")
	if _, err := os.Stat(trigger); err != nil {
		labtest.Missing(t, "ext4 has no trigger_fs_error here: "+err.Error())
	}

	b, l := r.startHeld(t, stepID)
	if err := os.WriteFile(trigger, []byte("runbook reliability: state directory fault\n"), 0o200); err != nil {
		t.Fatalf("trigger the file system error: %v", err)
	}
	// ext4 remounts read-only a moment after the error, not within the
	// write to trigger_fs_error: wait for it, or the step's outcome can
	// still be journaled and the fault lands on a later step.
	poll(t, "the state directory remounted read-only", func() bool {
		f, err := os.CreateTemp(r.w.state, "probe")
		if err == nil {
			f.Close()
			os.Remove(f.Name())
			return false
		}
		return errors.Is(err, syscall.EROFS)
	})
	l.release(t)
	b.wait(t, r, "exec")
	r.checkError(t, b, r.endCode(t), "step "+stepID, "read-only file system")
	if opts := sh(t, "findmnt", "-n", "-o", "OPTIONS", r.w.state); !strings.Contains(opts, "ro") {
		t.Errorf("the state directory is not read-only: %s", opts)
	}
	id := r.runID(t)
	r.checkNothingLost(t, id)

	sh(t, "umount", r.w.state)
	// The loop device is released after the unmount, not by it: wait, so
	// that mounting the image again does not find the old one.
	poll(t, "the loop device of the state directory released", func() bool {
		out, err := exec.Command("losetup", "-j", img).Output()
		return err == nil && len(bytes.TrimSpace(out)) == 0
	})
	out, err := exec.Command("e2fsck", "-fy", img).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() > 1) {
		t.Fatalf("e2fsck: %v\n%s", err, out)
	}
	mount()
	if opts := sh(t, "findmnt", "-n", "-o", "OPTIONS", r.w.state); !strings.HasPrefix(opts, "rw") {
		t.Fatalf("the state directory is not writable again: %s", opts)
	}
	r.resume(t, id)
}

// --- 6. the clock jumping ------------------------------------------------

// faultClockSteps steps the runner's wall clock forward by 2h after the
// 5th journal record (during the containment) and back by 3h after the
// 20th (during the rotation), kills the runner after the 25th, and resumes
// it with the wall clock 3h behind, with the crashpoints build's hooks.
// The machine's clock is not touched: faketime is not installed here, and
// could not reach a Go program anyway (it reads the clock through the
// vDSO, not libc); a time namespace offsets only the monotonic and boot
// clocks, and only before a process enters it. A clock step is not an
// error: the run completes, its journal's times neither jump nor go back
// with the clock, and the incident record times its phases as they ran.
func faultClockSteps(t *testing.T, r *faultRun) {
	env := r.env
	r.env = append(append([]string{}, env...), "RUNBOOK_TEST_CLOCK_STEP=5:2h,20:-3h", "RUNBOOK_TEST_CRASH_AFTER=25")
	b := r.startExec(t)
	if code := b.wait(t, r, "exec"); code != 128+int(syscall.SIGKILL) {
		t.Fatalf("exit %d, want the crash hook's SIGKILL after record 25\n%s%s", code, b.out.String(), b.errb.String())
	}
	if n := strings.Count(b.errb.String(), "test hook: the wall clock steps by"); n != 2 {
		t.Fatalf("the clock stepped %d times, want 2 (is this the crashpoints build?)\n%s", n, b.errb.String())
	}
	id := r.runID(t)
	r.checkNothingLost(t, id)
	r.env = append(append([]string{}, env...), "RUNBOOK_TEST_CLOCK_STEP=0:-3h")
	r.resume(t, id)
	elapsed := time.Since(b.start)

	recs := r.w.journal(id)
	for i := 1; i < len(recs); i++ {
		if d := recs[i].Time.Sub(recs[i-1].Time); d < 0 || d > elapsed {
			t.Errorf("journal time jumps by %v from record %d (%s) to %d (%s)", d, recs[i-1].Seq, recs[i-1].Type, recs[i].Seq, recs[i].Type)
		}
	}
	if span := recs[len(recs)-1].Time.Sub(recs[0].Time); span < 0 || span > elapsed {
		t.Errorf("the journal spans %v; the run took %v", span, elapsed)
	}
	jsons, _ := filepath.Glob(filepath.Join(r.w.dir, "records", "*-compromise-master-"+id+".json"))
	if len(jsons) != 1 {
		t.Fatalf("%d JSON records", len(jsons))
	}
	data, err := os.ReadFile(jsons[0])
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Duration string `json:"duration"`
		Phases   []struct {
			Name, Duration, Met string
		} `json:"phases"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if d, err := time.ParseDuration(rec.Duration); err != nil || d < 0 || d > elapsed {
		t.Errorf("the record says the run took %s; it took %v", rec.Duration, elapsed)
	}
	for _, ph := range rec.Phases {
		if d, err := time.ParseDuration(ph.Duration); err != nil || d < 0 || d > elapsed || ph.Met != "yes" {
			t.Errorf("the record says phase %s took %s (met its target: %s); the run took %v", ph.Name, ph.Duration, ph.Met, elapsed)
		}
	}
}

// --- the suite ------------------------------------------------------------

type fault struct {
	name string
	run  func(t *testing.T, r *faultRun)
	// full: only in full mode (it waits out a timeout).
	full bool
}

var faults = []fault{
	{name: "sshd-stopped-before-the-run", run: faultSSHDStopped},
	{name: "sshd-stopped-during-containment", run: faultSSHDStoppedContaining},
	{name: "link-down-during-rollout", run: faultLinkDown},
	{name: "vault-stopped-during-reissue", run: faultVaultStopped},
	{name: "vault-hung-during-reissue", run: faultVaultHung, full: true},
	{name: "vault-sealed-during-reissue", run: faultVaultSealed},
	{name: "postgres-restarted-during-reissue", run: faultPostgresRestart},
	{name: "state-dir-full-during-reissue", run: stateFull("reissue")},
	{name: "state-dir-read-only-during-reencrypt", run: stateReadOnly("reencrypt")},
	{name: "state-dir-read-only-during-reissue", run: stateReadOnly("reissue")},
	{name: "clock-steps-forward-then-back", run: faultClockSteps},
}

// TestReliabilityFaults injects each fault into compromise-master on a
// fresh lab of 3 gateways, checks the error and that nothing is lost,
// clears the fault, resumes and checks the invariants. Full mode adds the
// faults that wait out a timeout (a hung Vault) and cuts the link with the
// default SSH keepalive.
func TestReliabilityFaults(t *testing.T) {
	mode := reliabilityMode(t)
	start := time.Now()
	tried, survived := 0, 0
	var failed []string
	for _, f := range faults {
		ran, skipped := false, false
		if f.full && mode != "full" {
			continue
		}
		ok := t.Run(f.name, func(t *testing.T) {
			ran = true
			defer func() { skipped = t.Skipped() }()
			fs := time.Now()
			r := newFaultRun(t, mode)
			t.Logf("lab up in %v", time.Since(fs).Round(time.Millisecond))
			f.run(t, r)
			t.Logf("%s: %v in all", f.name, time.Since(fs).Round(time.Millisecond))
		})
		if !ran || skipped {
			continue // not selected by -run, or its infrastructure is missing
		}
		tried++
		if ok {
			survived++
		} else {
			failed = append(failed, f.name)
		}
	}
	t.Logf("faults tried: %d, survived: %d (mode %s, %v)", tried, survived, mode, time.Since(start).Round(time.Second))
	if len(failed) > 0 {
		t.Logf("failed: %s", strings.Join(failed, " "))
	}
}
