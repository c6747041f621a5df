package litellm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	ll "github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/vault"
)

// The tests run the kinds against a real PostgreSQL cluster and a real
// Vault server core, both started by the lab. Gateways are local hosts
// whose `systemctl` is a stand-in that reports the state the test sets (the
// machine has no systemd), and whose environment file is a real file that
// the kind greps.

// testDeps hands the kinds real clients.
type testDeps struct {
	pool *pgxpool.Pool
	vc   *vault.Client
	gw   *gatewaySet

	mu    sync.Mutex
	notes []recordedNote
}

type recordedNote struct {
	Step, Host string
	Note       journal.Note
}

var (
	_ step.DBDep    = (*testDeps)(nil)
	_ step.VaultDep = (*testDeps)(nil)
	_ step.HostsDep = (*testDeps)(nil)
	_ step.NoteDep  = (*testDeps)(nil)
)

func (d *testDeps) DB(context.Context) (*pgxpool.Pool, error) { return d.pool, nil }
func (d *testDeps) Vault(context.Context) (*vault.Client, error) {
	if d.vc == nil {
		return nil, errors.New("no vault in this test")
	}
	return d.vc, nil
}

func (d *testDeps) Hosts(targets []string) ([]*inventory.Host, error) {
	var out []*inventory.Host
	for _, h := range d.gw.hosts {
		for _, t := range targets {
			if h.Name == t || contains(h.Groups, t) {
				out = append(out, h)
				break
			}
		}
	}
	return out, nil
}

func (d *testDeps) HostVars(*inventory.Host) map[string]string { return map[string]string{} }

func (d *testDeps) Transport(_ context.Context, h *inventory.Host) (transport.Transport, error) {
	return &gwTransport{name: h.Name, set: d.gw}, nil
}

func (d *testDeps) Note(_ context.Context, stepID, host string, n journal.Note) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.notes = append(d.notes, recordedNote{Step: stepID, Host: host, Note: n})
	return nil
}

func (d *testDeps) Notes() []recordedNote {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]recordedNote(nil), d.notes...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// gatewaySet is a few local gateway hosts. Each runs commands on this
// machine with its own directory first on PATH, where `systemctl` is a
// stand-in reading the unit state from a file.
type gatewaySet struct {
	dir   string
	hosts []*inventory.Host
}

const systemctlStandIn = `#!/bin/sh
# systemctl stand-in for tests: "is-active UNIT" prints the state in
# $GW_DIR/UNIT.state (inactive when missing); exit 0 only when active.
[ "$1" = is-active ] || { echo "stand-in: unsupported $1" >&2; exit 1; }
state=inactive
[ -r "$GW_DIR/$2.state" ] && read -r state <"$GW_DIR/$2.state"
echo "$state"
[ "$state" = active ] && exit 0
exit 3
`

func newGatewaySet(t testing.TB, n int) *gatewaySet {
	t.Helper()
	s := &gatewaySet{dir: t.TempDir()}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("gw%d", i)
		dir := filepath.Join(s.dir, name)
		if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "bin", "systemctl"), []byte(systemctlStandIn), 0o755); err != nil {
			t.Fatal(err)
		}
		s.hosts = append(s.hosts, &inventory.Host{Name: name, Address: "127.0.0.1", Groups: []string{"gateways"}, Transport: "local"})
	}
	return s
}

// setState sets the unit's state on a gateway ("active", "inactive", ...).
func (s *gatewaySet) setState(t testing.TB, host, unit, state string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.dir, host, unit+".state"), []byte(state+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// gwTransport runs a gateway's commands on this machine.
type gwTransport struct {
	name string
	set  *gatewaySet
}

func (g *gwTransport) Host() string { return g.name }
func (g *gwTransport) Close() error { return nil }
func (g *gwTransport) Run(ctx context.Context, cmd transport.Command) (transport.Result, error) {
	dir := filepath.Join(g.set.dir, g.name)
	path := filepath.Join(dir, "bin") + ":" + os.Getenv("PATH")
	argv0, err := lookIn(path, cmd.Args[0])
	if err != nil {
		return transport.Result{}, err
	}
	c := exec.CommandContext(ctx, argv0, cmd.Args[1:]...)
	c.Env = []string{"PATH=" + path, "GW_DIR=" + dir, "LANG=C.UTF-8"}
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if cmd.Stdin != nil {
		c.Stdin = strings.NewReader(cmd.Stdin.Reveal())
	}
	err = c.Run()
	res := transport.Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.ExitCode = ee.ExitCode()
		return res, nil
	}
	return res, err
}

func lookIn(path, name string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range filepath.SplitList(path) {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// labVault starts the lab's Vault server for the test.
func labVault(t testing.TB) *lab.Vault {
	t.Helper()
	return labtest.Up(t, lab.Config{Vault: true}).Vault
}

// One PostgreSQL cluster serves every test of the package, each test in a
// database of its own: starting a cluster costs seconds on a busy machine.
var (
	pgOnce   sync.Once
	pgShared *lab.Postgres
	pgDir    string
	pgErr    error
	dbSeq    atomic.Int64
)

func sharedPostgres(t testing.TB) *lab.Postgres {
	t.Helper()
	if err := lab.PostgresAvailable(); err != nil {
		labtest.Missing(t, "postgresql is not available: "+err.Error())
	}
	pgOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if pgDir, pgErr = os.MkdirTemp("", "rbpg"); pgErr != nil {
			return
		}
		for attempt := 0; attempt < 3; attempt++ {
			var port int
			if port, pgErr = lab.FreePort(); pgErr != nil {
				return
			}
			if pgShared, pgErr = lab.StartPostgres(ctx, pgDir, port); pgErr == nil {
				return
			}
		}
	})
	if pgErr != nil {
		t.Fatalf("start postgres: %v", pgErr)
	}
	return pgShared
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pgShared != nil {
		if err := pgShared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop postgres:", err)
			code = 1
		}
	}
	if pgDir != "" {
		_ = os.RemoveAll(pgDir)
	}
	os.Exit(code)
}

// world is one test's lab: database, Vault, gateways, and the env kinds see.
type world struct {
	t      testing.TB
	pg     *lab.Postgres
	dbURL  string
	pool   *pgxpool.Pool
	vault  *lab.Vault
	vc     *vault.Client
	gw     *gatewaySet
	deps   *testDeps
	seed   *lab.SeedResult
	master secret.Value
	logs   *bytes.Buffer
	masker *secret.Masker
}

type worldOpts struct {
	seed     lab.SeedConfig
	noVault  bool
	gateways int
}

func newWorld(t testing.TB, o worldOpts) *world {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := &world{t: t, logs: &bytes.Buffer{}, masker: &secret.Masker{}}
	w.pg = sharedPostgres(t)
	db := fmt.Sprintf("litellm_%d", dbSeq.Add(1))
	if err := w.pg.CreateDatabase(ctx, db); err != nil {
		t.Fatal(err)
	}
	w.dbURL = w.pg.URL(db)
	if o.seed.MasterKey.IsZero() {
		mk, err := ll.NewMasterKey()
		if err != nil {
			t.Fatal(err)
		}
		o.seed.MasterKey = mk
	}
	w.master = o.seed.MasterKey
	seed, err := lab.Seed(ctx, w.dbURL, o.seed)
	if err != nil {
		t.Fatal(err)
	}
	w.seed = seed
	w.pool, err = pgxpoolNew(ctx, w.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.pool.Close)
	if !o.noVault {
		w.vault = labVault(t)
		w.vc, err = vault.New(ctx, vault.Config{Address: w.vault.Addr, Token: w.vault.RunnerToken})
		if err != nil {
			t.Fatal(err)
		}
	}
	if o.gateways == 0 {
		o.gateways = 2
	}
	w.gw = newGatewaySet(t, o.gateways)
	w.deps = &testDeps{pool: w.pool, vc: w.vc, gw: w.gw}
	w.masker.Add(w.master)
	return w
}

func (w *world) env(runID string) *step.Env {
	return &step.Env{
		RunID:   runID,
		StepID:  "step-under-test",
		DryRun:  false,
		Secrets: w.masker,
		Deps:    w.deps,
		Log:     slog.New(slog.NewTextHandler(w.logs, nil)),
		Started: time.Now(),
	}
}

// newStep builds a kind's step from `with:` values, applying defaults as
// the engine does.
func newStep(t testing.TB, spec *step.Spec, with map[string]any) step.Step {
	t.Helper()
	p := step.Params{}
	for _, ps := range spec.Params {
		if ps.Default != nil {
			p[ps.Name] = ps.Default
		}
	}
	for k, v := range with {
		if _, ok := spec.Param(k); !ok {
			t.Fatalf("%s has no parameter %s", spec.Name, k)
		}
		p[k] = v
	}
	for _, ps := range spec.Params {
		if ps.Required && !p.Has(ps.Name) {
			t.Fatalf("%s: parameter %s is required", spec.Name, ps.Name)
		}
		if ps.Validate != nil && p.Has(ps.Name) {
			if err := ps.Validate(p[ps.Name]); err != nil {
				t.Fatalf("%s: %s: %v", spec.Name, ps.Name, err)
			}
		}
	}
	s, err := spec.New(p)
	if err != nil {
		t.Fatalf("%s: %v", spec.Name, err)
	}
	return s
}

// dump is a table's content as sorted text lines, for before/after
// comparisons.
func (w *world) dump(table string) []string {
	w.t.Helper()
	rows, err := w.pool.Query(context.Background(), fmt.Sprintf(`SELECT t::text FROM %q t`, table))
	if err != nil {
		w.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			w.t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		w.t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

var litellmTables = []string{
	"LiteLLM_VerificationToken", "LiteLLM_JWTKeyMapping", "LiteLLM_DeprecatedVerificationToken",
	"LiteLLM_DeletedVerificationToken", "LiteLLM_SpendLogs", "LiteLLM_ProxyModelTable",
	"LiteLLM_CredentialsTable", "LiteLLM_Config", "LiteLLM_TeamTable", "LiteLLM_UserTable",
}

func (w *world) dumpAll() map[string][]string {
	out := map[string][]string{}
	for _, t := range litellmTables {
		out[t] = w.dump(t)
	}
	return out
}

func (w *world) count(sql string, args ...any) int {
	w.t.Helper()
	var n int
	if err := w.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		w.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// vaultState lists every path under prefix with its current version.
func (w *world) vaultState(prefix string) map[string]int {
	w.t.Helper()
	ctx := context.Background()
	out := map[string]int{}
	var walk func(p string)
	walk = func(p string) {
		keys, err := w.vc.List(ctx, p)
		if err != nil {
			w.t.Fatal(err)
		}
		for _, k := range keys {
			if strings.HasSuffix(k, "/") {
				walk(p + "/" + strings.TrimSuffix(k, "/"))
				continue
			}
			md, err := w.vc.Metadata(ctx, p+"/"+k)
			if err != nil {
				w.t.Fatal(err)
			}
			out[p+"/"+k] = md.CurrentVersion
		}
	}
	walk(prefix)
	return out
}

// assertNoSecrets fails when any of the values appears in text.
func assertNoSecrets(t testing.TB, where, text string, vals ...secret.Value) {
	t.Helper()
	for _, v := range vals {
		if !v.IsZero() && strings.Contains(text, v.Reveal()) {
			t.Errorf("a secret value appears in %s", where)
			return
		}
	}
}

func pgxpoolNew(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 8
	return pgxpool.NewWithConfig(ctx, cfg)
}

// newGatewaySetFrom finds the hosts of a gateway set made by another
// process.
func newGatewaySetFrom(dir string) []*inventory.Host {
	ents, _ := os.ReadDir(dir)
	var hosts []*inventory.Host
	for _, e := range ents {
		if e.IsDir() {
			hosts = append(hosts, &inventory.Host{Name: e.Name(), Address: "127.0.0.1", Groups: []string{"gateways"}, Transport: "local"})
		}
	}
	return hosts
}
