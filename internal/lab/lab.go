// Package lab starts, on one machine, the servers the runner works
// against: gateway hosts (network namespaces with OpenSSH, their own
// iptables and a LiteLLM-compatible gateway), an nginx load balancer in
// front of them, PostgreSQL with LiteLLM's schema and seeded keys, and a
// Vault server core. Tests, benchmarks and the demo all use it.
//
// Several labs can run at once (tests of several packages run in
// parallel): each takes its own address block in 198.18.0.0/15 and names
// its namespaces and veths with its own prefix. Nothing in a lab talks to
// an address outside loopback and its own namespaces.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

// Config says what Up brings up.
type Config struct {
	// Dir is the lab's directory (created if missing). Everything the lab
	// writes goes there, except its address allocation under RunDir.
	Dir string `json:"-"`
	// Gateways is the number of gateway hosts, gw1 to gwN (at most
	// MaxGateways). Zero means none.
	Gateways int `json:"gateways"`
	// Keys is the number of seeded virtual keys (default 50).
	Keys int `json:"keys"`
	// SaltKey sets LITELLM_SALT_KEY on the gateways (and seeds the
	// at-rest rows under it); otherwise they are under the master key.
	SaltKey bool `json:"salt_key"`
	// Nginx, Postgres and Vault say which servers to start. Without
	// Postgres the gateway hosts run sshd but no gateway process.
	Nginx    bool `json:"nginx"`
	Postgres bool `json:"postgres"`
	Vault    bool `json:"vault"`
	// Owner, when not zero, is the process whose end makes the lab
	// disposable: another lab may then reclaim its addresses and tear
	// down what is left of it (tests set it to their own PID).
	Owner int `json:"owner,omitempty"`
	// GatewayBinary is the LiteLLM-compatible gateway to run; empty builds
	// cmd/litellm-gateway from the source tree.
	GatewayBinary string `json:"gateway_binary,omitempty"`
}

// Full is the configuration of `runbook-lab up`: n gateways with nginx,
// PostgreSQL and Vault.
func Full(dir string, n int) Config {
	return Config{Dir: dir, Gateways: n, Keys: 50, Nginx: true, Postgres: true, Vault: true}
}

func (c Config) same(o Config) bool {
	return c.Gateways == o.Gateways && c.Keys == o.Keys && c.SaltKey == o.SaltKey &&
		c.Nginx == o.Nginx && c.Postgres == o.Postgres && c.Vault == o.Vault &&
		(o.GatewayBinary == "" || c.GatewayBinary == o.GatewayBinary)
}

// The lab directory's files.
const (
	stateFile     = "lab.json"
	InventoryFile = "inventory.yaml"
	EnvFile       = "env"
	SeedFile      = "seed.json"
)

// Lab is a running lab.
type Lab struct {
	Dir    string
	Config Config
	// Block is the lab's address block; Prefix starts the names of its
	// namespaces and veths.
	Block  int
	Prefix string

	Gateways []*Gateway

	// Postgres is nil without Config.Postgres. DatabaseURL reaches the
	// LiteLLM database over TCP from the root namespace; GatewayDatabaseURL
	// is what the gateways use (the server's unix socket, which reaches
	// across network namespaces).
	Postgres           *PostgresInfo
	DatabaseURL        string
	GatewayDatabaseURL string
	Seed               *SeedResult

	// Vault is nil without Config.Vault.
	Vault *Vault
	// Nginx is nil without Config.Nginx.
	Nginx *Nginx

	// MasterKey is the gateways' LITELLM_MASTER_KEY (also in Vault at
	// secret/litellm/master, field key); SaltKey is LITELLM_SALT_KEY, zero
	// unless Config.SaltKey.
	MasterKey secret.Value
	SaltKey   secret.Value

	// Paths for the runner: its SSH identity and known_hosts, the
	// inventory and the environment file to source.
	ClientKey     string
	KnownHosts    string
	InventoryPath string
	EnvPath       string
	GatewayBinary string
}

// PostgresInfo is where the lab's PostgreSQL cluster runs.
type PostgresInfo struct {
	Dir       string `json:"dir"`
	Port      int    `json:"port"`
	SocketDir string `json:"socket_dir"`
	Database  string `json:"database"`
}

// state is lab.json: what Load and Down need to find everything again.
type state struct {
	Version       int           `json:"version"`
	Partial       bool          `json:"partial,omitempty"`
	Config        Config        `json:"config"`
	Block         int           `json:"block"`
	Prefix        string        `json:"prefix"`
	Owner         int           `json:"owner,omitempty"`
	Created       time.Time     `json:"created"`
	Gateways      []*Gateway    `json:"gateways"`
	Postgres      *PostgresInfo `json:"postgres,omitempty"`
	VaultAddr     string        `json:"vault_addr,omitempty"`
	VaultPID      int           `json:"vault_pid,omitempty"`
	Nginx         *Nginx        `json:"nginx,omitempty"`
	GatewayBinary string        `json:"gateway_binary,omitempty"`

	dir string
}

func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w", stateFile, err)
	}
	st.dir = dir
	return &st, nil
}

func (st *state) write() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(st.dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(st.dir, stateFile))
}

// Up brings up a lab in cfg.Dir, or returns the one running there when it
// is healthy and has the same configuration. A lab that is there but
// unhealthy or different is torn down first.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Dir == "" {
		return nil, errors.New("lab up: no directory")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	cfg.Dir = dir
	if cfg.Gateways < 0 || cfg.Gateways > MaxGateways {
		return nil, fmt.Errorf("lab up: %d gateways: between 0 and %d", cfg.Gateways, MaxGateways)
	}
	if cfg.Keys <= 0 {
		cfg.Keys = 50
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lab up: %w", err)
	}
	var l *Lab
	err = withFileLock(filepath.Join(dir, ".lock"), func() error {
		if st, err := readState(dir); err == nil {
			if !st.Partial && st.Config.same(cfg) && st.healthy() {
				l, err = load(st)
				return err
			}
			if err := down(dir); err != nil {
				return err
			}
		}
		var err error
		l, err = up(ctx, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lab up in %s: %w", dir, err)
	}
	return l, nil
}

// traceUp prints the time each phase of Up takes to standard error when
// RUNBOOK_LAB_TRACE is set.
func traceUp(start time.Time, what string) {
	if os.Getenv("RUNBOOK_LAB_TRACE") != "" {
		fmt.Fprintf(os.Stderr, "lab: %7.3fs %s\n", time.Since(start).Seconds(), what)
	}
}

func up(ctx context.Context, cfg Config) (l *Lab, err error) {
	t0 := time.Now()
	if cfg.Gateways > 0 {
		if err := hostsAvailable(); err != nil {
			return nil, err
		}
	}
	if cfg.Postgres {
		if err := PostgresAvailable(); err != nil {
			return nil, err
		}
	}
	if cfg.Nginx && !isExec(NginxBin) {
		return nil, fmt.Errorf("%w at %s", ErrNoNginx, NginxBin)
	}
	dir := cfg.Dir
	block, err := allocateBlock(dir, cfg.Owner)
	if err != nil {
		return nil, err
	}
	traceUp(t0, "address block allocated")
	st := &state{Version: 1, Partial: true, Config: cfg, Block: block, Prefix: blockPrefix(block),
		Owner: cfg.Owner, Created: time.Now().UTC(), dir: dir}
	defer func() {
		if err != nil {
			st.stopProcesses()
			cleanupPrefix(st.Prefix)
			_ = os.Remove(filepath.Join(dir, stateFile))
			_ = releaseBlock(block, dir)
		}
	}()
	if err := st.write(); err != nil {
		return nil, err
	}
	l = &Lab{
		Dir: dir, Config: cfg, Block: block, Prefix: st.Prefix,
		ClientKey:     filepath.Join(dir, "ssh", "id_ed25519"),
		KnownHosts:    filepath.Join(dir, "ssh", "known_hosts"),
		InventoryPath: filepath.Join(dir, InventoryFile),
		EnvPath:       filepath.Join(dir, EnvFile),
	}

	// Fresh files: what an earlier lab left is stale.
	for _, d := range []string{"ssh", "home", "bin", "secrets", "nginx", "vault", "postgres"} {
		if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= MaxGateways; i++ {
		p := filepath.Join(dir, "gw"+strconv.Itoa(i))
		if _, err := os.Stat(p); err != nil {
			break
		}
		if err := os.RemoveAll(p); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"ssh", "home", "bin", "secrets"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	// Gateways must reach their own files through the lab directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	for _, d := range []string{"home", "bin"} {
		if err := os.Chmod(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}

	if l.MasterKey, err = litellm.NewMasterKey(); err != nil {
		return nil, err
	}
	if cfg.SaltKey {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("generate salt key: %w", err)
		}
		l.SaltKey = secret.New(hex.EncodeToString(b[:]))
	}
	if err := writeSecret(filepath.Join(dir, "secrets", "master-key"), l.MasterKey); err != nil {
		return nil, err
	}
	if !l.SaltKey.IsZero() {
		if err := writeSecret(filepath.Join(dir, "secrets", "salt-key"), l.SaltKey); err != nil {
			return nil, err
		}
	}

	if cfg.Postgres {
		l.Postgres = &PostgresInfo{Dir: filepath.Join(dir, "postgres"), Database: TemplateDatabase}
		l.Postgres.SocketDir = l.Postgres.Dir
		if len(filepath.Join(l.Postgres.Dir, ".s.PGSQL.65535")) > maxSocketPath {
			return nil, fmt.Errorf("lab directory %s is too long for PostgreSQL's unix socket, which the gateways use; choose a shorter one", dir)
		}
		st.Postgres = l.Postgres
	}
	for i := 1; i <= cfg.Gateways; i++ {
		host, gw := gatewayAddrs(block, i)
		name := "gw" + strconv.Itoa(i)
		g := &Gateway{
			Name: name, Namespace: st.Prefix + name, Veth: st.Prefix + name,
			Address: gw.String(), HostAddress: host.String(), SSHPort: 22, User: "root",
			Dir:    filepath.Join(dir, name, "litellm"),
			RunDir: filepath.Join(dir, name, "run"),
		}
		if name == SudoGateway {
			g.User, g.Sudo = SudoUser, true
		}
		l.Gateways = append(l.Gateways, g)
	}
	st.Gateways = l.Gateways
	if err := l.writeHostFiles(); err != nil {
		return nil, err
	}
	if err := st.write(); err != nil {
		return nil, err
	}
	traceUp(t0, "files written")

	var (
		mu                   sync.Mutex
		gatewayBin, vaultBin string
		hostsErr, pgErr      error
		vaultErr, binErr     error
		nginxErr             error
	)
	var wg sync.WaitGroup
	spawn := func(fn func()) {
		wg.Add(1)
		go func() { defer wg.Done(); fn() }()
	}
	if cfg.Gateways > 0 {
		spawn(func() {
			if hostsErr = setupNetwork(ctx, l.Gateways); hostsErr != nil {
				return
			}
			traceUp(t0, "namespaces and veths")
			hostsErr = errors.Join(parallel(len(l.Gateways), func(i int) error {
				g := l.Gateways[i]
				err := l.bootHost(ctx, g, func(boot, sshd int) {
					mu.Lock()
					defer mu.Unlock()
					g.BootPID, g.SSHDPID = boot, sshd
					if sshd != 0 {
						_ = st.write()
					}
				})
				return err
			})...)
			traceUp(t0, "sshd listening on every host")
		})
		if cfg.Postgres {
			spawn(func() {
				gatewayBin = cfg.GatewayBinary
				if gatewayBin == "" {
					gatewayBin, binErr = GatewayBinary(ctx)
				}
				traceUp(t0, "gateway binary")
			})
		}
	}
	if cfg.Postgres {
		spawn(func() {
			if err := copyPostgresTemplate(ctx, l.Postgres.Dir); err != nil {
				traceUp(t0, "no postgres template, initdb instead: "+err.Error())
			}
			// A port found free can be taken before the server binds it.
			var pg *Postgres
			pgErr = retryPort(func(port int) error {
				var err error
				pg, err = StartPostgres(ctx, l.Postgres.Dir, port)
				return err
			})
			if pgErr != nil {
				return
			}
			mu.Lock()
			l.Postgres.Port = pg.Port
			_ = st.write()
			mu.Unlock()
			l.setDatabaseURLs()
			traceUp(t0, "postgres started")
			if pgErr = pg.CreateDatabase(ctx, l.Postgres.Database); pgErr != nil {
				return
			}
			l.Seed, pgErr = Seed(ctx, l.DatabaseURL, SeedConfig{Keys: cfg.Keys, MasterKey: l.MasterKey, SaltKey: l.SaltKey})
			if pgErr == nil {
				pgErr = l.Seed.Save(filepath.Join(dir, SeedFile))
			}
			traceUp(t0, "postgres seeded")
		})
	}
	if cfg.Vault {
		spawn(func() {
			if vaultBin, vaultErr = VaultBinary(ctx); vaultErr != nil {
				return
			}
			var v *Vault
			vaultErr = retryPort(func(port int) error {
				var err error
				v, err = StartVault(ctx, vaultBin, filepath.Join(dir, "vault"), port)
				if v != nil {
					mu.Lock()
					st.VaultAddr, st.VaultPID = v.Addr, v.PID
					_ = st.write()
					mu.Unlock()
				}
				if err != nil && v != nil {
					_ = v.Stop()
				}
				return err
			})
			if vaultErr != nil {
				return
			}
			l.Vault = v
			fields := map[string]map[string]secret.Value{"litellm/master": {"key": l.MasterKey}}
			if !l.SaltKey.IsZero() {
				fields["litellm/salt"] = map[string]secret.Value{"key": l.SaltKey}
			}
			for path, f := range fields {
				if vaultErr = v.PutKV(ctx, path, f); vaultErr != nil {
					return
				}
			}
			traceUp(t0, "vault ready")
		})
	}
	if cfg.Nginx && cfg.Gateways > 0 {
		spawn(func() {
			var servers []string
			for _, g := range l.Gateways {
				servers = append(servers, g.Address)
			}
			var n *Nginx
			err := retryPort(func(port int) error {
				var err error
				n, err = StartNginx(ctx, filepath.Join(dir, "nginx"), port, servers)
				if n != nil {
					mu.Lock()
					st.Nginx = n
					_ = st.write()
					mu.Unlock()
				}
				if err != nil && n != nil {
					_ = n.Stop()
				}
				return err
			})
			nginxErr = err
			l.Nginx = n
			traceUp(t0, "nginx listening")
		})
	}
	wg.Wait()
	if err := errors.Join(hostsErr, pgErr, vaultErr, binErr, nginxErr); err != nil {
		return nil, err
	}
	// The database's port is known now.
	for _, g := range l.Gateways {
		if err := l.writeGatewayConfig(g); err != nil {
			return nil, fmt.Errorf("files of %s: %w", g.Name, err)
		}
	}

	if cfg.Postgres && cfg.Gateways > 0 {
		l.GatewayBinary = gatewayBin
		st.GatewayBinary = gatewayBin
		if err := l.writeStandIn(); err != nil {
			return nil, err
		}
		errs := parallel(len(l.Gateways), func(i int) error { return startGateway(ctx, l.Gateways[i]) })
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		traceUp(t0, "gateways active")
	}

	if err := l.writeInventory(); err != nil {
		return nil, err
	}
	if err := l.writeEnv(); err != nil {
		return nil, err
	}
	st.Partial = false
	if err := st.write(); err != nil {
		return nil, err
	}
	return l, nil
}

// setDatabaseURLs sets the URLs of the LiteLLM database: over TCP for the
// root namespace, over the unix socket for the gateways.
func (l *Lab) setDatabaseURLs() {
	p := l.Postgres
	l.DatabaseURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, p.Database)
	l.GatewayDatabaseURL = fmt.Sprintf("postgres://postgres@localhost/%s?host=%s&port=%d&sslmode=disable",
		p.Database, url.QueryEscape(p.SocketDir), p.Port)
}

// retryPort runs start with a free loopback port, and again with another
// (three tries in all) when it fails: a port found free can be taken by
// another process before the server binds it.
func retryPort(start func(port int) error) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		port, perr := FreePort()
		if perr != nil {
			return perr
		}
		if err = start(port); err == nil || IsMissing(err) {
			return err
		}
	}
	return err
}

// writeHostFiles writes the runner's key, known_hosts, the empty dotfile
// and every gateway's files.
func (l *Lab) writeHostFiles() error {
	if len(l.Gateways) == 0 {
		return nil
	}
	pub, err := clientKey(filepath.Join(l.Dir, "ssh"))
	if err != nil {
		return err
	}
	authorized := []byte(strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " runbook-lab runner\n")
	if err := os.WriteFile(filepath.Join(l.Dir, "home", "empty"), nil, 0o644); err != nil {
		return err
	}
	// The stand-in is written with the gateway binary once it is known;
	// the mount target must exist before the hosts boot.
	if err := os.WriteFile(filepath.Join(l.Dir, "bin", "systemctl"), []byte(standInText(l.Dir, "/nonexistent/litellm-gateway")), 0o755); err != nil {
		return err
	}
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return err
	}
	var sudo *sudoFiles
	var known strings.Builder
	for _, g := range l.Gateways {
		var s *sudoFiles
		if g.Sudo {
			if sudo == nil {
				if sudo, err = newSudoFiles(); err != nil {
					return fmt.Errorf("sudo user for %s: %w", g.Name, err)
				}
			}
			s = sudo
		}
		if err := l.hostFiles(g, authorized, hosts, s); err != nil {
			return fmt.Errorf("files of %s: %w", g.Name, err)
		}
		fmt.Fprintf(&known, "%s %s\n", knownHostsAddr(g.Address, g.SSHPort), g.HostKeyLine)
	}
	return os.WriteFile(l.KnownHosts, []byte(known.String()), 0o644)
}

func knownHostsAddr(host string, port int) string {
	if port == 22 {
		return host
	}
	return "[" + host + "]:" + strconv.Itoa(port)
}

func standInText(labDir, gatewayBin string) string {
	r := strings.NewReplacer("@LAB_DIR@", strings.ReplaceAll(labDir, "'", ""), "@GATEWAY@", strings.ReplaceAll(gatewayBin, "'", ""))
	return r.Replace(systemctlScript)
}

// writeStandIn writes the systemctl stand-in in place (the bind mounts
// follow the file, not its name, so it is rewritten, not replaced).
func (l *Lab) writeStandIn() error {
	if strings.ContainsRune(l.Dir+l.GatewayBinary, '\'') {
		return fmt.Errorf("paths with a single quote are not supported: %s", l.Dir)
	}
	f, err := os.OpenFile(filepath.Join(l.Dir, "bin", "systemctl"), os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(standInText(l.Dir, l.GatewayBinary)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeGatewayConfig writes /etc/litellm/config.yaml and litellm.env.
func (l *Lab) writeGatewayConfig(g *Gateway) error {
	conf := fmt.Sprintf(`# LiteLLM proxy configuration of %s (runbook lab).
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  # Behind the lab's nginx: log the caller's address, not the balancer's.
  use_x_forwarded_for: true
`, g.Name)
	if err := os.WriteFile(g.ConfigPath(), []byte(conf), 0o644); err != nil {
		return err
	}
	return writeEnvFile(g.EnvPath(), l.MasterKey, l.SaltKey, l.GatewayDatabaseURL)
}

// writeEnvFile writes a gateway's EnvironmentFile, 0600.
func writeEnvFile(path string, master, salt secret.Value, dbURL string) error {
	var b strings.Builder
	b.WriteString("# LiteLLM proxy environment (runbook lab). Secrets: keep 0600.\n")
	b.WriteString("LITELLM_MASTER_KEY=" + master.Reveal() + "\n")
	if !salt.IsZero() {
		b.WriteString("LITELLM_SALT_KEY=" + salt.Reveal() + "\n")
	}
	if dbURL != "" {
		b.WriteString("DATABASE_URL=" + dbURL + "\n")
		// The schema is managed outside the proxies (the lab creates it),
		// as in deployments with several instances.
		b.WriteString("DISABLE_SCHEMA_UPDATE=true\n")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeSecret(path string, v secret.Value) error {
	return os.WriteFile(path, []byte(v.Reveal()+"\n"), 0o600)
}

func readSecret(path string) (secret.Value, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return secret.Value{}, err
	}
	return secret.New(strings.TrimSpace(string(b))), nil
}

// Load returns the lab running in dir.
func Load(dir string) (*Lab, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("load lab: %w", err)
	}
	st, err := readState(abs)
	if err != nil {
		return nil, fmt.Errorf("load lab in %s: %w", abs, err)
	}
	if st.Partial {
		return nil, fmt.Errorf("load lab in %s: it did not finish coming up", abs)
	}
	return load(st)
}

func load(st *state) (*Lab, error) {
	dir := st.dir
	cfg := st.Config
	cfg.Dir = dir
	l := &Lab{
		Dir: dir, Config: cfg, Block: st.Block, Prefix: st.Prefix, Gateways: st.Gateways,
		Postgres: st.Postgres, Nginx: st.Nginx, GatewayBinary: st.GatewayBinary,
		ClientKey:     filepath.Join(dir, "ssh", "id_ed25519"),
		KnownHosts:    filepath.Join(dir, "ssh", "known_hosts"),
		InventoryPath: filepath.Join(dir, InventoryFile),
		EnvPath:       filepath.Join(dir, EnvFile),
	}
	var err error
	if l.MasterKey, err = readSecret(filepath.Join(dir, "secrets", "master-key")); err != nil {
		return nil, fmt.Errorf("load lab: %w", err)
	}
	if cfg.SaltKey {
		if l.SaltKey, err = readSecret(filepath.Join(dir, "secrets", "salt-key")); err != nil {
			return nil, fmt.Errorf("load lab: %w", err)
		}
	}
	if st.Postgres != nil {
		l.setDatabaseURLs()
		if l.Seed, err = LoadSeed(filepath.Join(dir, SeedFile)); err != nil {
			return nil, fmt.Errorf("load lab: %w", err)
		}
	}
	if st.VaultAddr != "" {
		if l.Vault, err = loadVault(filepath.Join(dir, "vault"), st.VaultAddr, st.VaultPID); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// healthy reports whether every process of the lab runs.
func (st *state) healthy() bool {
	for _, g := range st.Gateways {
		if !runs(g.SSHDPID, "sshd") {
			return false
		}
		if st.Postgres != nil && !gatewayActive(g) {
			return false
		}
	}
	if st.Postgres != nil && !alive(postmasterPID(st.Postgres.Dir)) {
		return false
	}
	if st.VaultAddr != "" && !(alive(st.VaultPID) && runsProgram(st.VaultPID, "vaultserver")) {
		return false
	}
	if st.Nginx != nil && !st.Nginx.Running() {
		return false
	}
	return true
}

// gatewayActive reports whether gateway g's LiteLLM process runs.
func gatewayActive(g *Gateway) bool { return len(gatewayPIDs(g)) > 0 }

func postmasterPID(pgDir string) int {
	b, err := os.ReadFile(filepath.Join(pgDir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// Down tears down the lab in dir: it ends every process the lab started,
// deletes its namespaces and veths, releases its addresses and removes the
// files it wrote. A directory without a lab is left as it is.
func Down(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("lab down: %w", err)
	}
	if _, err := os.Stat(abs); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	err = withFileLock(filepath.Join(abs, ".lock"), func() error { return down(abs) })
	if err != nil {
		return fmt.Errorf("lab down in %s: %w", abs, err)
	}
	_ = os.Remove(filepath.Join(abs, ".lock"))
	return nil
}

func down(dir string) error {
	st, err := readState(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	t0 := time.Now()
	errs := st.stopProcesses()
	traceUp(t0, "down: processes ended")
	errs = append(errs, cleanupPrefix(st.Prefix)...)
	traceUp(t0, "down: namespaces and veths deleted")
	if err := releaseBlock(st.Block, dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return removeLabFiles(dir, st)
}

// stopProcesses ends every process of the lab: those in its namespaces,
// nginx, Vault and PostgreSQL.
func (st *state) stopProcesses() []error {
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	add := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	if len(st.Gateways) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var names []string
			var pids []int
			for _, g := range st.Gateways {
				names = append(names, g.Namespace)
				if g.SSHDPID > 0 && runs(g.SSHDPID, "sshd") {
					pids = append(pids, g.SSHDPID)
				}
			}
			pids = append(pids, netnsPIDsOf(names...)...)
			if err := terminate(5*time.Second, pids...); err != nil {
				add(fmt.Errorf("stop gateway hosts: %w", err))
			}
		}()
	}
	if st.Nginx != nil {
		wg.Add(1)
		go func() { defer wg.Done(); add(st.Nginx.Stop()) }()
	}
	if st.VaultPID > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if alive(st.VaultPID) && !runsProgram(st.VaultPID, "vaultserver") {
				return
			}
			add((&Vault{PID: st.VaultPID}).Stop())
		}()
	}
	if st.Postgres != nil {
		wg.Add(1)
		go func() { defer wg.Done(); add(stopPostgres(st.Postgres.Dir)) }()
	}
	wg.Wait()
	return errs
}

// runsProgram reports whether pid still runs the named program (so that a
// recycled PID is never signalled).
func runsProgram(pid int, name string) bool {
	argv := cmdline(pid)
	return len(argv) > 0 && strings.Contains(filepath.Base(argv[0]), name)
}

// stopPostgres stops the cluster in pgDir by its postmaster PID: SIGINT is
// PostgreSQL's fast shutdown.
func stopPostgres(pgDir string) error {
	pid := postmasterPID(pgDir)
	if pid == 0 || !alive(pid) {
		return nil
	}
	if argv := cmdline(pid); len(argv) == 0 || !strings.Contains(argv[0], "postgres") {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGINT)
	if waitGone(30*time.Second, pid) {
		return nil
	}
	if err := terminate(5*time.Second, pid); err != nil {
		return fmt.Errorf("stop postgres: %w", err)
	}
	return nil
}

// removeLabFiles removes what Up wrote in dir, and dir itself when that
// leaves it empty.
func removeLabFiles(dir string, st *state) error {
	names := []string{"ssh", "home", "bin", "secrets", "nginx", "vault", "postgres",
		InventoryFile, EnvFile, SeedFile, stateFile + ".tmp"}
	for _, g := range st.Gateways {
		names = append(names, g.Name)
	}
	var errs []error
	for _, n := range names {
		if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(filepath.Join(dir, stateFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
