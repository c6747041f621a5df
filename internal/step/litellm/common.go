// Package litellm holds the step kinds that change LiteLLM's database after
// a master key compromise: re-issuing virtual keys, re-encrypting values at
// rest, and the exposure report from the spend logs.
package litellm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/vault"
)

// RunMarker is what the kinds write to updated_by, deleted_by and
// litellm_changed_by: it names the run, so a resumed run knows which rows
// it already changed and responders can find them.
func RunMarker(runID string) string { return "runbook:" + runID }

// TokenFingerprint is the fingerprint (secret.Value.Fingerprint) of the key
// whose token hash is h: "sha256:" and the hash's first 16 hex digits. It
// names a key in notes and errors the way the rest of the record does,
// without its value.
func TokenFingerprint(h string) string {
	if len(h) > 16 {
		h = h[:16]
	}
	return "sha256:" + h
}

func hostsDep(env *step.Env) (step.HostsDep, error) {
	d, ok := env.Deps.(step.HostsDep)
	if !ok {
		return nil, errors.New("this run cannot look at inventory hosts")
	}
	return d, nil
}

func dbPool(ctx context.Context, env *step.Env) (*pgxpool.Pool, error) {
	d, ok := env.Deps.(step.DBDep)
	if !ok {
		return nil, errors.New("this run has no litellm database (set database.url in the inventory)")
	}
	p, err := d.DB(ctx)
	if err != nil {
		return nil, fmt.Errorf("litellm database: %w", err)
	}
	return p, nil
}

// dbError names the database in an error from a transaction on it, so
// that a server restarted or gone under a step is named in the step's
// error.
func dbError(pool *pgxpool.Pool, err error) error {
	if err == nil {
		return nil
	}
	cc := pool.Config().ConnConfig
	return fmt.Errorf("litellm database %s: %w", net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))), err)
}

func vaultClient(ctx context.Context, env *step.Env) (*vault.Client, error) {
	d, ok := env.Deps.(step.VaultDep)
	if !ok {
		return nil, errors.New("this run has no vault client (set vault in the inventory)")
	}
	c, err := d.Vault(ctx)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	return c, nil
}

// unrecorded reports whether an earlier attempt of this run may have
// landed the step's side effect without journaling its note of kind: it
// journaled the step's intent (acted, when asked) and no such note is in
// the journal. A run that cannot tell says no.
func unrecorded(env *step.Env, kind string, acted bool) bool {
	d, ok := env.Deps.(step.JournalDep)
	if !ok || d == nil || env.DryRun {
		return false
	}
	if acted && !d.Acted(env.StepID, env.Host) {
		return false
	}
	return !d.Noted(env.StepID, kind)
}

func note(ctx context.Context, env *step.Env, n journal.Note) error {
	d, ok := env.Deps.(step.NoteDep)
	if !ok {
		return errors.New("this run cannot record notes")
	}
	if err := d.Note(ctx, env.StepID, env.Host, n); err != nil {
		return fmt.Errorf("record %s note: %w", n.Kind, err)
	}
	return nil
}

// gatewayParams are the parameters that name the gateways.
var gatewayParams = []step.Param{
	{Name: "gateways", Type: step.String, Default: "gateways", Doc: "inventory group (or host) of the LiteLLM gateways"},
}

var unitParam = step.Param{Name: "unit", Type: step.String, Default: "litellm", Doc: "systemd unit of the proxy on each gateway", Validate: validUnit}

var unitRE = regexp.MustCompile(`^[A-Za-z0-9@._:\\-]+$`)

func validUnit(v any) error {
	s, _ := v.(string)
	if !unitRE.MatchString(s) || strings.HasPrefix(s, "-") {
		return fmt.Errorf("%q is not a systemd unit name", s)
	}
	return nil
}

func validAbsPath(v any) error {
	s, _ := v.(string)
	if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, "\x00\n") {
		return fmt.Errorf("%q is not an absolute path", s)
	}
	return nil
}

// gatewayHost is one gateway with its transport.
type gatewayHost struct {
	host *inventory.Host
	tr   transport.Transport
}

// gateways resolves the group and opens each host's transport.
func gateways(ctx context.Context, env *step.Env, group string) ([]gatewayHost, error) {
	d, err := hostsDep(env)
	if err != nil {
		return nil, err
	}
	hs, err := d.Hosts([]string{group})
	if err != nil {
		return nil, fmt.Errorf("gateways %s: %w", group, err)
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("gateways %s: no host in the inventory", group)
	}
	out := make([]gatewayHost, len(hs))
	for i, h := range hs {
		tr, err := d.Transport(ctx, h)
		if err != nil {
			return nil, fmt.Errorf("gateway %s: %w", h.Name, err)
		}
		out[i] = gatewayHost{host: h, tr: tr}
	}
	return out, nil
}

// onEach runs fn on every gateway at once (bounded) and returns the first
// error by host order.
func onEach(ctx context.Context, gws []gatewayHost, fn func(context.Context, gatewayHost) error) error {
	errs := make([]error, len(gws))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range gws {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(ctx, gws[i])
		}(i)
	}
	wg.Wait()
	return errors.Join(errs...)
}

// activeStates are systemctl is-active answers of a unit that is, or may
// soon be, serving.
var activeStates = map[string]bool{"active": true, "activating": true, "deactivating": true, "reloading": true, "refreshing": true}

// stoppedStates are answers of a unit that serves nothing.
var stoppedStates = map[string]bool{"inactive": true, "failed": true, "unknown": true, "dead": true}

// activeGateways asks systemctl on every gateway whether unit is active and
// returns the hosts where it is (or may be). An answer it cannot read is an
// error: a gateway of unknown state is not known to be stopped.
func activeGateways(ctx context.Context, env *step.Env, group, unit string) ([]string, error) {
	gws, err := gateways(ctx, env, group)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var active []string
	err = onEach(ctx, gws, func(ctx context.Context, g gatewayHost) error {
		cmd := transport.Command{Args: []string{"systemctl", "is-active", unit}}
		res, err := g.tr.Run(ctx, cmd)
		if err != nil {
			return fmt.Errorf("ask %s on %s: %w", unit, g.host.Name, err)
		}
		state := strings.TrimSpace(string(res.Stdout))
		if i := strings.IndexByte(state, '\n'); i >= 0 {
			state = state[:i]
		}
		switch {
		case res.ExitCode == 0 || activeStates[state]:
			mu.Lock()
			active = append(active, g.host.Name)
			mu.Unlock()
		case stoppedStates[state]:
		default:
			return fmt.Errorf("ask %s on %s: %w", unit, g.host.Name, &transport.ExitError{
				Host: g.host.Name, Cmd: cmd.String(), Code: res.ExitCode, Stderr: env.Secrets.MaskString(string(res.Stderr)),
			})
		}
		return nil
	})
	sort.Strings(active)
	return active, err
}

// ActiveGatewaysError refuses a change to keys while proxies run: each
// LiteLLM instance caches key lookups in memory.
type ActiveGatewaysError struct {
	Unit  string
	Hosts []string
}

func (e *ActiveGatewaysError) Error() string {
	return fmt.Sprintf("%s is active on %s: stop every gateway before changing keys (each instance caches keys in memory)",
		e.Unit, strings.Join(e.Hosts, ", "))
}

func requireStopped(ctx context.Context, env *step.Env, group, unit string) error {
	active, err := activeGateways(ctx, env, group, unit)
	if err != nil {
		return err
	}
	if len(active) > 0 {
		return &ActiveGatewaysError{Unit: unit, Hosts: active}
	}
	return nil
}

// parseSince reads a window start: an RFC 3339 time, a date, or a duration
// back from now ("72h", "7d", "1d12h").
func parseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, errors.New("empty")
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	d, err := parseDays(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a time (RFC 3339) nor a duration", s)
	}
	return now.Add(-d).UTC(), nil
}

// parseDays is time.ParseDuration with a "d" (24h) unit in front.
func parseDays(s string) (time.Duration, error) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad days in %q", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration %q", s)
	}
	return days + d, nil
}
