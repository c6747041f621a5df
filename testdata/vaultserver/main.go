// Command vaultserver runs HashiCorp Vault's real server core in memory for
// the runbook lab: in-memory storage, initialised and unsealed with a single
// Shamir share, a known root token, KV version 2 mounted at secret/, and
// Vault's own HTTP API on a loopback address.
//
// It lives in its own module so that Vault's requirements stay out of the
// project's go.mod. It is a test server: nothing it stores survives it.
//
// Usage:
//
//	vaultserver -addr 127.0.0.1:8200 -root-token-file PATH -ready-file PATH [-unseal-key-file PATH]
//
// The root token is read from the file named by -root-token-file (or from
// the environment variable VAULT_DEV_ROOT_TOKEN_ID), never from argv. With
// -unseal-key-file, the server writes its one unseal key share there,
// hex-encoded (as the "keys" of Vault's sys/init answer) with a newline,
// in a file that is mode 0600 from its creation; nothing else keeps it.
// The server can then be sealed and unsealed through Vault's own HTTP API
// (PUT /v1/sys/seal with the root token, PUT /v1/sys/unseal with the key),
// and its in-memory storage, tokens included, outlives the seal. When the
// server listens, it writes "ready http://ADDR\n" to -ready-file (and to
// standard output), after the unseal key file.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	kv "github.com/hashicorp/vault-plugin-secrets-kv"
	"github.com/hashicorp/vault/helper/namespace"
	"github.com/hashicorp/vault/helper/testhelpers/corehelpers"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/internalshared/configutil"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/physical/inmem"
	"github.com/hashicorp/vault/vault"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "vaultserver: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:8200", "loopback address to listen on")
	tokenFile := flag.String("root-token-file", "", "file holding the root token to create (default: $VAULT_DEV_ROOT_TOKEN_ID)")
	readyFile := flag.String("ready-file", "", "file to write the ready marker to once listening")
	unsealKeyFile := flag.String("unseal-key-file", "", "file to write the unseal key share to, hex-encoded, mode 0600 (default: the key is discarded)")
	logLevel := flag.String("log-level", "warn", "log level: trace, debug, info, warn, error")
	flag.Parse()

	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return fmt.Errorf("parse -addr: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("parse -addr: %s is not a loopback address", host)
	}

	rootToken := os.Getenv("VAULT_DEV_ROOT_TOKEN_ID")
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("read root token: %w", err)
		}
		rootToken = strings.TrimSpace(string(b))
	}
	if rootToken == "" {
		return errors.New("no root token: set -root-token-file or VAULT_DEV_ROOT_TOKEN_ID")
	}
	if strings.Contains(rootToken, ".") {
		// Vault refuses custom token IDs with a '.' (hvs., s. prefixes).
		return errors.New("the root token must not contain '.'")
	}

	logger := hclog.New(&hclog.LoggerOptions{
		Name:   "vaultserver",
		Level:  hclog.LevelFromString(*logLevel),
		Output: os.Stderr,
	})

	storage, err := inmem.NewInmem(nil, logger)
	if err != nil {
		return fmt.Errorf("create in-memory storage: %w", err)
	}
	core, err := vault.NewCore(&vault.CoreConfig{
		Physical:           storage,
		LogicalBackends:    map[string]logical.Factory{"kv": kv.Factory},
		BuiltinRegistry:    corehelpers.NewMockBuiltinRegistry(),
		DisableMlock:       true,
		Logger:             logger,
		NumRollbackWorkers: 2,
	})
	if err != nil {
		return fmt.Errorf("create core: %w", err)
	}

	ctx := namespace.ContextWithNamespace(context.Background(), namespace.RootNamespace)
	unsealKey, err := bootstrap(ctx, core, rootToken)
	if err != nil {
		return err
	}
	if *unsealKeyFile != "" {
		if err := writePrivate(*unsealKeyFile, []byte(hex.EncodeToString(unsealKey)+"\n")); err != nil {
			return fmt.Errorf("write unseal key file: %w", err)
		}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler: vaulthttp.Handler.Handler(&vault.HandlerProperties{
			Core:           core,
			ListenerConfig: &configutil.Listener{Type: "tcp", Address: ln.Addr().String()},
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          logger.StandardLogger(nil),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	marker := "ready http://" + ln.Addr().String() + "\n"
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte(marker), 0o644); err != nil {
			return fmt.Errorf("write ready file: %w", err)
		}
	}
	_, _ = io.WriteString(os.Stdout, marker)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-sigs:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	_ = core.Shutdown()
	return nil
}

// writePrivate writes data to path through a file that is mode 0600 from
// its creation (os.CreateTemp), renamed over path once complete, so the
// key is never in a file others may read, nor in a half-written one.
func writePrivate(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) //nolint:errcheck // gone after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// bootstrap initialises and unseals the core with one share, replaces the
// generated root token with rootToken, and mounts KV version 2 at secret/,
// as Vault's dev mode does. It returns the unseal key share.
func bootstrap(ctx context.Context, core *vault.Core, rootToken string) ([]byte, error) {
	init, err := core.Initialize(ctx, &vault.InitParams{
		BarrierConfig: &vault.SealConfig{SecretShares: 1, SecretThreshold: 1, Name: "shamir"},
	})
	if err != nil {
		return nil, fmt.Errorf("initialize: %w", err)
	}
	unsealed, err := core.Unseal(init.SecretShares[0])
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	if !unsealed {
		return nil, errors.New("unseal: core is still sealed")
	}
	for i := 0; ; i++ {
		if core.Sealed() {
			return nil, errors.New("unseal: core sealed again")
		}
		if standby, _ := core.Standby(); !standby {
			break
		}
		if i == 100 {
			return nil, errors.New("unseal: core did not become active")
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := handle(ctx, core, &logical.Request{
		Operation:   logical.UpdateOperation,
		ClientToken: init.RootToken,
		Path:        "auth/token/create",
		Data: map[string]any{
			"id":                rootToken,
			"policies":          []string{"root"},
			"no_parent":         true,
			"no_default_policy": true,
		},
	}); err != nil {
		return nil, fmt.Errorf("create root token: %w", err)
	}
	if err := handle(ctx, core, &logical.Request{
		Operation:   logical.UpdateOperation,
		ClientToken: init.RootToken,
		Path:        "auth/token/revoke-self",
	}); err != nil {
		return nil, fmt.Errorf("revoke generated root token: %w", err)
	}
	if err := handle(ctx, core, &logical.Request{
		Operation:   logical.UpdateOperation,
		ClientToken: rootToken,
		Path:        "sys/mounts/secret",
		Data: map[string]any{
			"type":        "kv",
			"path":        "secret/",
			"description": "key/value secret storage",
			"options":     map[string]string{"version": "2"},
		},
	}); err != nil {
		return nil, fmt.Errorf("mount kv v2 at secret/: %w", err)
	}
	return init.SecretShares[0], nil
}

func handle(ctx context.Context, core *vault.Core, req *logical.Request) error {
	resp, err := core.HandleRequest(ctx, req)
	if resp != nil && resp.IsError() {
		return resp.Error()
	}
	return err
}
