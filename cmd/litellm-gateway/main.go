// Command litellm-gateway is the lab's stand-in for a LiteLLM proxy. It
// behaves as LiteLLM does wherever a rotation runner depends on it: where
// the master key comes from and which values it refuses, how virtual keys
// are looked up by hash (with blocked, expiry, grace rows and a
// per-instance cache that only a restart clears), the spend log written for
// each request, the health endpoints, the key management calls, and the
// decryption of values at rest with the salt key or the master key at start.
// It answers chat requests with a canned reply; no upstream is called.
//
// Usage:
//
//	litellm-gateway [--config config.yaml] [--host 0.0.0.0] [--port 4000]
//
// Environment: LITELLM_MASTER_KEY, DATABASE_URL, LITELLM_SALT_KEY,
// DISABLE_SCHEMA_UPDATE.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/litellm"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(context.Background(), os.Args[1:], os.LookupEnv, log); err != nil {
		log.Error("litellm-gateway: " + err.Error())
		os.Exit(1)
	}
}

type options struct {
	config        string
	host          string
	port          int
	shutdownDelay time.Duration
	drainTimeout  time.Duration
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("litellm-gateway", flag.ContinueOnError)
	o := &options{}
	fs.StringVar(&o.config, "config", "", "LiteLLM proxy config file (YAML)")
	fs.StringVar(&o.host, "host", "0.0.0.0", "address to listen on")
	fs.IntVar(&o.port, "port", 4000, "port to listen on")
	// By default, as uvicorn under LiteLLM, close the listener at once on
	// SIGTERM and finish the requests in flight. A rolling restart behind
	// a balancer that does not retry a POST needs a drain first (the lab's
	// `runbook-lab drain`); a delay is for balancers that watch a health
	// check instead.
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 0,
		"on SIGTERM, keep serving (liveliness answers 503) this long before closing the listener")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, wait this long for in-flight requests")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return o, nil
}

// schemaLock serialises schema creation among gateways sharing a database.
const schemaLock = 0x4c4954454c4c4d // "LITELLM"

func run(ctx context.Context, args []string, getenv func(string) (string, bool), log *slog.Logger) error {
	opts, err := parseFlags(args)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(opts.config, getenv)
	if err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var pool *pgxpool.Pool
	if !cfg.DatabaseURL.IsZero() {
		if pool, err = connectDB(ctx, cfg); err != nil {
			return err
		}
		defer pool.Close()
	} else {
		log.Warn("no DATABASE_URL: only the master key is accepted")
	}

	s := newServer(cfg, pool, log)
	if pool != nil {
		if err := s.decryptAtRest(ctx, cfg.encryptionKey()); err != nil {
			return fmt.Errorf("decrypt values at rest: %w", err)
		}
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(opts.host, strconv.Itoa(opts.port)))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	log.Info("LiteLLM: Proxy initialized", "addr", ln.Addr().String(), "master_key", cfg.MasterKey.Fingerprint(),
		"db", pool != nil, "at_rest_key", s.atRest.KeySource)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	stop() // a second signal kills the process the default way

	log.Info("shutting down: liveliness now answers 503", "delay", opts.shutdownDelay)
	s.shuttingDown.Store(true)
	time.Sleep(opts.shutdownDelay)
	dctx, cancel := context.WithTimeout(context.Background(), opts.drainTimeout)
	defer cancel()
	if err := hs.Shutdown(dctx); err != nil {
		return fmt.Errorf("drain in-flight requests: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("shutdown complete")
	return nil
}

// connectDB opens the pool, waits briefly for the database and creates
// LiteLLM's tables unless DISABLE_SCHEMA_UPDATE is set, as the proxy runs
// its migrations at start. A database that does not answer stops the
// start, as it stops LiteLLM's.
func connectDB(ctx context.Context, cfg *config) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL.Reveal())
	if err != nil {
		return nil, errors.New("parse DATABASE_URL: invalid connection string") // the URL may hold a password
	}
	pcfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = pool.Ping(pctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			pool.Close()
			return nil, fmt.Errorf("connect to database: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !cfg.SkipSchemaUpdate {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("create schema: %w", err)
		}
		_, err = conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, schemaLock)
		if err == nil {
			_, err = conn.Exec(ctx, litellm.SchemaSQL)
			_, _ = conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, schemaLock)
		}
		conn.Release()
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("create schema: %w", err)
		}
	}
	return pool, nil
}
