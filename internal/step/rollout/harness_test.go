package rollout

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
	rbssh "github.com/runbook-dev/runbook/internal/transport/ssh"
	"github.com/runbook-dev/runbook/internal/vault"
)

// labDeps gives the kind what a run gives it: the lab's Vault (with the
// runner's least-privilege token), SSH transports to the gateways, and a
// note recorder.
type labDeps struct {
	l     *lab.Lab
	vc    *vault.Client
	hosts []*inventory.Host
	vars  map[string]map[string]string

	dialer *rbssh.Dialer
	mu     sync.Mutex
	trs    map[string]transport.Transport
	notes  []recordedNote
}

type recordedNote struct {
	Step, Host string
	Note       journal.Note
}

var (
	_ step.VaultDep = (*labDeps)(nil)
	_ step.HostsDep = (*labDeps)(nil)
	_ step.NoteDep  = (*labDeps)(nil)
)

func newLabDeps(t testing.TB, l *lab.Lab) *labDeps {
	t.Helper()
	ctx := context.Background()
	vc, err := vault.New(ctx, vault.Config{Address: l.Vault.Addr, Token: l.Vault.RunnerToken})
	if err != nil {
		t.Fatal(err)
	}
	d, err := rbssh.NewDialer(rbssh.Config{KnownHosts: l.KnownHosts, Identity: l.ClientKey, ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	deps := &labDeps{l: l, vc: vc, dialer: d, trs: map[string]transport.Transport{}, vars: map[string]map[string]string{}}
	for _, g := range l.Gateways {
		deps.hosts = append(deps.hosts, &inventory.Host{Name: g.Name, Address: g.Address, Port: g.SSHPort, User: g.User, Sudo: g.Sudo, Groups: []string{"gateways"}})
		deps.vars[g.Name] = map[string]string{"litellm_url": g.URL(), "litellm_env_file": "/etc/litellm/litellm.env", "litellm_unit": "litellm", "litellm_port": "4000"}
	}
	t.Cleanup(func() {
		deps.mu.Lock()
		defer deps.mu.Unlock()
		for _, tr := range deps.trs {
			tr.Close()
		}
		d.Close()
	})
	return deps
}

func (d *labDeps) Vault(context.Context) (*vault.Client, error) { return d.vc, nil }

func (d *labDeps) Hosts(targets []string) ([]*inventory.Host, error) {
	var out []*inventory.Host
	for _, h := range d.hosts {
		for _, t := range targets {
			if h.Name == t || contains(h.Groups, t) {
				out = append(out, h)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no hosts match %v", targets)
	}
	return out, nil
}

func (d *labDeps) HostVars(h *inventory.Host) map[string]string { return d.vars[h.Name] }

func (d *labDeps) Transport(ctx context.Context, h *inventory.Host) (transport.Transport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if tr := d.trs[h.Name]; tr != nil {
		return tr, nil
	}
	tr, err := d.dialer.Dial(ctx, h)
	if err != nil {
		return nil, err
	}
	d.trs[h.Name] = tr
	return tr, nil
}

func (d *labDeps) Note(_ context.Context, stepID, host string, n journal.Note) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.notes = append(d.notes, recordedNote{Step: stepID, Host: host, Note: n})
	return nil
}

func (d *labDeps) takeNotes() []recordedNote {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.notes
	d.notes = nil
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// runEnv is the Env a run gives a once step, with its log captured.
type runEnv struct {
	env *step.Env
	log *bytes.Buffer
	mu  *sync.Mutex
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func newEnv(runID, stepID string, d *labDeps, masker *secret.Masker) runEnv {
	var buf bytes.Buffer
	mu := &sync.Mutex{}
	log := slog.New(slog.NewTextHandler(lockedWriter{mu, &buf}, nil))
	return runEnv{
		env: &step.Env{RunID: runID, StepID: stepID, Vars: map[string]string{}, Secrets: masker, Deps: d, Log: log, Started: time.Now()},
		log: &buf, mu: mu,
	}
}

func (e runEnv) logText() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.log.String()
}

// apply runs a step as the engine does: Check, then Apply when it reports
// a change. It returns the change and the outputs.
func apply(ctx context.Context, st step.Step, env *step.Env) (string, step.Outputs, error) {
	obs, err := st.Check(ctx, env)
	if err != nil {
		return "", nil, fmt.Errorf("check: %w", err)
	}
	if obs.OK() {
		return "", obs.Outputs, nil
	}
	out, err := st.Apply(ctx, env)
	if err != nil {
		return obs.Change, nil, fmt.Errorf("apply: %w", err)
	}
	return obs.Change, out, nil
}

// loadKey finds a seeded virtual key that may call the config's model and
// has no budget, so the load is never refused for its own reasons.
func loadKey(t testing.TB, l *lab.Lab) secret.Value {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, l.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT token FROM "LiteLLM_VerificationToken"
		WHERE (models = '{}' OR 'gpt-4o-mini' = ANY(models)) AND max_budget IS NULL
		AND blocked IS NOT TRUE AND (expires IS NULL OR expires > now() + interval '1 day')`)
	if err != nil {
		t.Fatal(err)
	}
	ok := map[string]bool{}
	for rows.Next() {
		var tok string
		if err := rows.Scan(&tok); err != nil {
			t.Fatal(err)
		}
		ok[tok] = true
	}
	rows.Close()
	for _, k := range l.Seed.Keys {
		if ok[k.Hash] && k.Valid(time.Now().Add(time.Hour)) {
			return k.Key
		}
	}
	t.Fatal("no seeded key fit for the load")
	return secret.Value{}
}

// startLoad starts workers sending requests through nginx, half POST chat
// completions, half GET /v1/models, until finished (and at least min
// requests were sent), or until max requests or the time limit. Each
// opens its own connection to nginx: a drain reloads nginx, and a reload
// closes the idle client connections of the old workers, which a pooled
// client could be about to reuse for a POST it may not retry. That is
// nginx's behaviour on any reload, not the rotation's.
func startLoad(addr string, key secret.Value, workers int, min, max int64, limit time.Duration) *labtest.Load {
	return labtest.StartLoad(workers, labtest.LoadOptions{Min: min, Max: max, Limit: limit},
		labtest.ChatOrModels(addr, "gpt-4o-mini", key))
}

// argvWatch samples the command line of every process on the machine
// (gateway namespaces included: their processes are this machine's) and
// reports any that holds one of the secrets.
type argvWatch struct {
	stop    chan struct{}
	done    chan struct{}
	secrets func() [][]byte
	nets    map[string]bool // net namespaces of the gateways

	mu            sync.Mutex
	samples, inGW int
	gwCommands    map[string]int
	leaks         []string
}

func gatewayNets(l *lab.Lab) map[string]bool {
	out := map[string]bool{}
	for _, g := range l.Gateways {
		if ns, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(g.SSHDPID), "ns", "net")); err == nil {
			out[ns] = true
		}
	}
	return out
}

func watchArgv(l *lab.Lab, secrets func() [][]byte) *argvWatch {
	w := &argvWatch{stop: make(chan struct{}), done: make(chan struct{}), secrets: secrets, nets: gatewayNets(l), gwCommands: map[string]int{}}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			w.sample()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return w
}

func (w *argvWatch) sample() {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	secrets := w.secrets()
	self := strconv.Itoa(os.Getpid())
	w.mu.Lock()
	defer w.mu.Unlock()
	w.samples++
	for _, e := range ents {
		name := e.Name()
		if name == self || name[0] < '0' || name[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", name, "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if ns, err := os.Readlink(filepath.Join("/proc", name, "ns", "net")); err == nil && w.nets[ns] {
			w.inGW++
			argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
			cmd := filepath.Base(argv[0])
			if len(argv) > 2 && (cmd == "sh" || cmd == "bash") && argv[1] == "-c" {
				cmd += " -c"
			}
			w.gwCommands[cmd]++
		}
		for _, s := range secrets {
			if len(s) > 0 && bytes.Contains(b, s) {
				argv0, _, _ := strings.Cut(string(b), "\x00")
				w.leaks = append(w.leaks, fmt.Sprintf("pid %s (%s)", name, filepath.Base(argv0)))
			}
		}
	}
}

func (w *argvWatch) finish() {
	close(w.stop)
	<-w.done
}
