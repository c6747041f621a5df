package bench_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
)

// Profile is the top of one CPU profile taken during a timed run: the
// runner's (RUNBOOK_CPUPROFILE, see cmd/runbook) or the Vault server's
// (its sys/pprof/profile endpoint, asked with the lab's root token).
type Profile struct {
	Process string `json:"process"`
	Run     string `json:"run"`
	// Header is pprof's line with the profile's duration and samples.
	Header string `json:"header"`
	// GCPercent is the share of samples in the garbage collector (its
	// background workers and the allocation assists).
	GCPercent float64 `json:"gc_percent"`
	// Top are the functions with the most samples under them, leaving out
	// the runtime, the standard library's plumbing and wrappers.
	Top   []ProfileLine `json:"top"`
	Error string        `json:"error,omitempty"`
}

// ProfileLine is one function of a profile's top.
type ProfileLine struct {
	Func    string  `json:"func"`
	FlatPct float64 `json:"flat_percent"`
	CumPct  float64 `json:"cum_percent"`
}

type profiling struct {
	dir, runner, vault string
	vaultDone          chan error
}

// startProfiles makes c write the runner's CPU profile and starts taking
// Vault's for secs seconds (what the run is expected to take).
func startProfiles(ctx context.Context, t *testing.T, l *lab.Lab, c *exec.Cmd, secs int) *profiling {
	dir := t.TempDir()
	p := &profiling{dir: dir, runner: filepath.Join(dir, "runbook.pprof"), vault: filepath.Join(dir, "vault.pprof"), vaultDone: make(chan error, 1)}
	c.Env = append(c.Env, "RUNBOOK_CPUPROFILE="+p.runner)
	go func() { p.vaultDone <- vaultProfile(ctx, l, secs, p.vault) }()
	return p
}

// vaultProfile writes Vault's CPU profile over the next secs seconds to
// path. The root token goes in a request header, to loopback only.
func vaultProfile(ctx context.Context, l *lab.Lab, secs int, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.Vault.Addr+"/v1/sys/pprof/profile?seconds="+strconv.Itoa(secs), nil)
	if err != nil {
		return fmt.Errorf("vault profile: %w", err)
	}
	req.Header.Set("X-Vault-Token", l.Vault.RootToken.Reveal())
	c := &http.Client{Timeout: time.Duration(secs+30) * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("vault profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("vault profile: status %d", resp.StatusCode)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("vault profile: %w", err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("vault profile: %w", err)
	}
	return f.Close()
}

// finish waits for Vault's profile and reads the top of both. A profile
// that could not be taken is reported, not fatal: the figures stand
// without it.
func (p *profiling) finish(t *testing.T, run string) []*Profile {
	verr := <-p.vaultDone
	var out []*Profile
	for _, x := range []struct {
		process, path string
		err           error
	}{{"runbook", p.runner, nil}, {"vault", p.vault, verr}} {
		pr := &Profile{Process: x.process, Run: run}
		if x.err != nil {
			pr.Error = x.err.Error()
		} else if err := pr.read(x.path); err != nil {
			pr.Error = err.Error()
		}
		if pr.Error != "" {
			t.Logf("profile of %s: %s", x.process, pr.Error)
		}
		out = append(out, pr)
	}
	return out
}

// skipped are the frames left out of a profile's top: the runtime, the
// standard library's plumbing, and wrappers every request passes through.
var skipped = []string{
	"runtime.", "internal/", "syscall.", "net/http.", "net.", "bufio.", "sync.", "io.", "context.", "os.", "main.",
	"github.com/spf13/cobra.", "github.com/sethvargo/go-retry.", "github.com/hashicorp/go-retryablehttp.",
	"github.com/hashicorp/vault/http.", "github.com/runbook-dev/runbook/internal/cli.",
}

const profileTop = 12

// read runs `go tool pprof -top -cum` on the profile at path.
func (pr *Profile) read(path string) error {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=500", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go tool pprof: %w: %s", err, lastLines(string(out), 5))
	}
	pr.Header, pr.GCPercent, pr.Top = parseTop(string(out))
	if pr.Header == "" {
		return fmt.Errorf("go tool pprof: no samples: %s", lastLines(string(out), 5))
	}
	return nil
}

// parseTop reads `go tool pprof -top -cum` output.
func parseTop(out string) (header string, gc float64, top []ProfileLine) {
	table := false
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "Duration:") {
			header = strings.TrimSpace(line)
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 5 && f[0] == "flat" && f[1] == "flat%" {
			table = true
			continue
		}
		if !table || len(f) < 6 {
			continue
		}
		flat, err1 := strconv.ParseFloat(strings.TrimSuffix(f[1], "%"), 64)
		cum, err2 := strconv.ParseFloat(strings.TrimSuffix(f[4], "%"), 64)
		if err1 != nil || err2 != nil {
			continue
		}
		name := strings.Join(f[5:], " ")
		switch name {
		case "runtime.gcBgMarkWorker", "runtime.gcAssistAlloc":
			gc += cum
		}
		if len(top) >= profileTop || hasAnyPrefix(name, skipped) {
			continue
		}
		top = append(top, ProfileLine{Func: name, FlatPct: flat, CumPct: cum})
	}
	return header, gc, top
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
