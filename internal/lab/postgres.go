package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoPostgres means the PostgreSQL server binaries (or, when running as
// root, the postgres system user) are not on this machine.
var ErrNoPostgres = errors.New("postgresql server binaries not found")

// PostgresBinDirs are the places StartPostgres looks for initdb and pg_ctl,
// in order. Debian installs each major version under its own directory.
var PostgresBinDirs = []string{"/usr/lib/postgresql/15/bin"}

// Postgres is a PostgreSQL cluster run by the lab: data in Dir/data, the log
// in Dir/postgres.log, the unix socket in Dir, TCP on 127.0.0.1:Port.
type Postgres struct {
	Dir     string
	Port    int
	DataDir string
	LogFile string
	// SocketDir is where the unix socket lives, empty when the path would be
	// too long for a socket address and only TCP is served.
	SocketDir string

	bin   string
	asPG  bool // run the binaries as the postgres user (when we are root)
	owner *user.User
}

// maxSocketPath is the usable length of sun_path on Linux, less a margin.
const maxSocketPath = 100

// findPostgresBin returns the directory holding initdb and pg_ctl.
func findPostgresBin() (string, error) {
	dirs := append([]string(nil), PostgresBinDirs...)
	// Any other Debian major version, newest first, as a fallback.
	if more, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(more) > 0 {
		sort.Slice(more, func(i, j int) bool {
			return pgMajor(more[i]) > pgMajor(more[j])
		})
		dirs = append(dirs, more...)
	}
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", fmt.Errorf("look in %s: %w", strings.Join(PostgresBinDirs, ", "), ErrNoPostgres)
}

func pgMajor(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// PostgresAvailable reports whether StartPostgres can run on this machine,
// and if not, why.
func PostgresAvailable() error {
	if _, err := findPostgresBin(); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			return fmt.Errorf("look up user postgres: %w", ErrNoPostgres)
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			return fmt.Errorf("look up runuser: %w", ErrNoPostgres)
		}
	}
	return nil
}

// StartPostgres starts (or reuses, if one already runs from dir) a PostgreSQL
// cluster in dir on 127.0.0.1:port, with fsync off and trust authentication
// for the superuser postgres. When the caller is root the server runs as the
// postgres user: dir is chowned to it, and any ancestor of dir that others
// cannot traverse gets the search (x) bit for others so the server can reach
// its data. It is idempotent: an existing cluster is not initialised again,
// and a running one is reused when it listens on port.
func StartPostgres(ctx context.Context, dir string, port int) (*Postgres, error) {
	if err := PostgresAvailable(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	bin, _ := findPostgresBin()
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	p := &Postgres{
		Dir:     abs,
		Port:    port,
		DataDir: filepath.Join(abs, "data"),
		LogFile: filepath.Join(abs, "postgres.log"),
		bin:     bin,
		asPG:    os.Geteuid() == 0,
	}
	if len(filepath.Join(abs, ".s.PGSQL."+strconv.Itoa(port))) <= maxSocketPath {
		p.SocketDir = abs
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	if p.asPG {
		if p.owner, err = user.Lookup("postgres"); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		if err := p.prepareDirForPostgres(); err != nil {
			return nil, fmt.Errorf("start postgres in %s: %w", abs, err)
		}
	}

	running, runPort, err := p.running(ctx)
	if err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", abs, err)
	}
	if running {
		if runPort != port {
			return nil, fmt.Errorf("start postgres in %s: already running on port %d, not %d", abs, runPort, port)
		}
		if err := p.waitReady(ctx); err != nil {
			return nil, fmt.Errorf("start postgres in %s: %w", abs, err)
		}
		return p, nil
	}

	if _, err := os.Stat(filepath.Join(p.DataDir, "PG_VERSION")); err != nil {
		// Collation C: bytewise comparison makes the text primary keys of
		// LiteLLM's tables (hex hashes, UUIDs) much faster to index, and
		// orders them the same as any other collation would.
		out, err := p.run(ctx, "initdb", "-D", p.DataDir, "-U", "postgres", "-A", "trust",
			"--no-sync", "-E", "UTF8", "--locale=C.UTF-8", "--lc-collate=C")
		if err != nil {
			return nil, fmt.Errorf("initdb in %s: %w: %s", abs, err, tail(out))
		}
	}

	opts := []string{
		"-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		// A throwaway cluster: no WAL beyond crash safety, so COPY into a
		// table truncated in the same transaction skips WAL entirely.
		"-c", "wal_level=minimal",
		"-c", "max_wal_senders=0",
		"-c", "shared_buffers=32MB",
		"-c", "max_connections=200",
	}
	if p.SocketDir != "" {
		opts = append(opts, "-k", p.SocketDir)
	} else {
		opts = append(opts, "-c", "unix_socket_directories=")
	}
	out, err := p.run(ctx, "pg_ctl", "-D", p.DataDir, "-l", p.LogFile, "-w", "-t", "60",
		"-o", strings.Join(opts, " "), "start")
	if err != nil {
		return nil, fmt.Errorf("pg_ctl start in %s on port %d: %w: %s%s", abs, port, err, tail(out), p.logTail())
	}
	if err := p.waitReady(ctx); err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w%s", abs, err, p.logTail())
	}
	return p, nil
}

// prepareDirForPostgres hands dir to the postgres user and makes sure the
// user can reach it through its ancestors.
func (p *Postgres) prepareDirForPostgres() error {
	uid, _ := strconv.Atoi(p.owner.Uid)
	gid, _ := strconv.Atoi(p.owner.Gid)
	if err := os.Chown(p.Dir, uid, gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := os.Chmod(p.Dir, 0o700); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	for d := filepath.Dir(p.Dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("stat %s: %w", d, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("let postgres traverse %s: %w", d, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// running reports whether a server runs from the data directory and on which
// port.
func (p *Postgres) running(ctx context.Context) (bool, int, error) {
	if _, err := os.Stat(filepath.Join(p.DataDir, "PG_VERSION")); err != nil {
		return false, 0, nil
	}
	out, err := p.run(ctx, "pg_ctl", "-D", p.DataDir, "status")
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 3 {
			return false, 0, nil
		}
		return false, 0, fmt.Errorf("pg_ctl status: %w: %s", err, tail(out))
	}
	// postmaster.pid: pid, data dir, start time, port, socket dir, ...
	b, err := os.ReadFile(filepath.Join(p.DataDir, "postmaster.pid"))
	if err != nil {
		return false, 0, fmt.Errorf("read postmaster.pid: %w", err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return false, 0, fmt.Errorf("read postmaster.pid: too short")
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil {
		return false, 0, fmt.Errorf("read postmaster.pid port: %w", err)
	}
	return true, port, nil
}

// waitReady waits until the server accepts a TCP connection and a query.
func (p *Postgres) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, p.URL("postgres"))
		if err == nil {
			_, err = conn.Exec(cctx, "SELECT 1")
			_ = conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("wait for postgres on port %d: %w", p.Port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a server binary, as the postgres user when we are root.
func (p *Postgres) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	path := filepath.Join(p.bin, name)
	var cmd *exec.Cmd
	if p.asPG {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = p.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "PGTZ=UTC", "TZ=UTC")
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	// pg_ctl start leaves the server running; it must not hold our pipes
	// open, and pg_ctl redirects the server's output to the log file, so
	// waiting for the command alone is enough.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return buf.Bytes(), err
}

// URL is the connection URL for database db over TCP.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, db)
}

// CreateDatabase creates database name unless it exists.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: made meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Stop stops the server with pg_ctl stop -m fast. Stopping a stopped
// cluster is not an error.
func (p *Postgres) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	running, _, err := p.running(ctx)
	if err != nil {
		return fmt.Errorf("stop postgres in %s: %w", p.Dir, err)
	}
	if !running {
		return nil
	}
	out, err := p.run(ctx, "pg_ctl", "-D", p.DataDir, "-m", "fast", "-w", "-t", "60", "stop")
	if err != nil {
		// Stopped by someone else between status and stop.
		if again, _, _ := p.running(ctx); !again {
			return nil
		}
		return fmt.Errorf("stop postgres in %s: %w: %s", p.Dir, err, tail(out))
	}
	return nil
}

func (p *Postgres) logTail() string {
	b, err := os.ReadFile(p.LogFile)
	if err != nil || len(b) == 0 {
		return ""
	}
	return "; log: " + tail(b)
}

// tail returns the last few hundred bytes of command output, on one line.
func tail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 600 {
		s = "..." + s[len(s)-600:]
	}
	return strings.ReplaceAll(s, "\n", " | ")
}

// FreePort returns a TCP port on 127.0.0.1 that was free when asked.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
