package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ModulePath is the project's Go module.
const ModulePath = "github.com/runbook-dev/runbook"

// ErrNoSource means the project's source tree, which the lab builds its
// programs from, was not found.
var ErrNoSource = errors.New("project source tree not found")

// SourceRoot finds the project's source tree: the nearest directory at or
// above the working directory whose go.mod declares ModulePath, else the
// tree this package was compiled from.
func SourceRoot() (string, error) {
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if isProjectRoot(d) {
				return d, nil
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		d := filepath.Dir(filepath.Dir(filepath.Dir(file)))
		if isProjectRoot(d) {
			return d, nil
		}
	}
	return "", ErrNoSource
}

func isProjectRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "module ") {
			return strings.TrimSpace(strings.TrimPrefix(line, "module ")) == ModulePath
		}
	}
	return false
}

// CacheDir is where the lab keeps built programs: $XDG_CACHE_HOME/runbook-lab,
// else ~/.cache/runbook-lab.
func CacheDir() (string, error) {
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find cache directory: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	dir := filepath.Join(base, "runbook-lab")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create cache directory: %w", err)
	}
	return dir, nil
}

// withFileLock runs fn while holding an exclusive flock on path.
func withFileLock(path string, fn func() error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("open lock %s: %w", path, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing unlocks too
	return fn()
}

// goBuild builds the package pkg of the module in dir into out. The go
// command leaves out untouched when it is up to date, so calling it again is
// cheap. Builds into one cache are serialised by a lock file.
func goBuild(ctx context.Context, dir, pkg, out string, env ...string) error {
	return withFileLock(out+".lock", func() error {
		cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", out, pkg)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %w: %s", pkg, err, tail(b))
		}
		return nil
	})
}

var gatewayBuild struct {
	sync.Mutex
	path string
}

// GatewayBinary builds cmd/litellm-gateway from the source tree (or finds it
// up to date) and returns its path. A process builds it once: the labs of
// one test binary share it.
func GatewayBinary(ctx context.Context) (string, error) {
	gatewayBuild.Lock()
	defer gatewayBuild.Unlock()
	if gatewayBuild.path != "" && isExec(gatewayBuild.path) {
		return gatewayBuild.path, nil
	}
	path, err := buildGateway(ctx)
	if err != nil {
		return "", err
	}
	gatewayBuild.path = path
	return path, nil
}

func buildGateway(ctx context.Context) (string, error) {
	root, err := SourceRoot()
	if err != nil {
		return "", fmt.Errorf("build litellm-gateway: %w", err)
	}
	cache, err := CacheDir()
	if err != nil {
		return "", fmt.Errorf("build litellm-gateway: %w", err)
	}
	// One binary per source tree, so two checkouts do not overwrite each
	// other's build.
	sum := sha256.Sum256([]byte(root))
	out := filepath.Join(cache, "litellm-gateway-"+hex.EncodeToString(sum[:])[:12])
	if err := goBuild(ctx, root, "./cmd/litellm-gateway", out); err != nil {
		return "", err
	}
	return out, nil
}

// VaultBinary returns the Vault server built from testdata/vaultserver,
// building it first unless a binary for the module's current go.sum and
// source is already cached. A cold build takes minutes.
func VaultBinary(ctx context.Context) (string, error) {
	path, src, err := vaultBinaryPath()
	if err != nil {
		return "", err
	}
	if isExec(path) {
		return path, nil
	}
	err = withFileLock(path+".lock", func() error {
		if isExec(path) {
			return nil
		}
		tmp := fmt.Sprintf("%s.tmp%d", path, os.Getpid())
		start := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", tmp, ".")
		cmd.Dir = src
		// The machine's own Go (GOTOOLCHAIN=local), whatever toolchain
		// runs the project: the server only serves the lab on loopback and
		// is never shipped, and its cold build (minutes) stays in the
		// build cache when the project's toolchain changes.
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOTOOLCHAIN=local")
		b, err := cmd.CombinedOutput()
		if err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("build vault server (%s): %w: %s", time.Since(start).Round(time.Second), err, tail(b))
		}
		if err := os.Rename(tmp, path); err != nil {
			return fmt.Errorf("build vault server: %w", err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return path, nil
}

// VaultBinaryCached reports whether the Vault server is built for the
// module's current go.sum, and where it is (or would be).
func VaultBinaryCached() (string, bool, error) {
	path, _, err := vaultBinaryPath()
	if err != nil {
		return "", false, err
	}
	return path, isExec(path), nil
}

func vaultBinaryPath() (path, src string, err error) {
	root, err := SourceRoot()
	if err != nil {
		return "", "", fmt.Errorf("find vault server: %w", err)
	}
	src = filepath.Join(root, "testdata", "vaultserver")
	// The key is go.sum (which pins every module the server is built
	// from) and the server's own source.
	h := sha256.New()
	files, _ := filepath.Glob(filepath.Join(src, "*.go"))
	for _, f := range append([]string{filepath.Join(src, "go.mod"), filepath.Join(src, "go.sum")}, files...) {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", "", fmt.Errorf("find vault server: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(f), len(b))
		h.Write(b)
	}
	cache, err := CacheDir()
	if err != nil {
		return "", "", fmt.Errorf("find vault server: %w", err)
	}
	return filepath.Join(cache, "vaultserver-"+hex.EncodeToString(h.Sum(nil))[:16]), src, nil
}
