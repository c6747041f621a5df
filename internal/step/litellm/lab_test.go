package litellm

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	sshtr "github.com/runbook-dev/runbook/internal/transport/ssh"
	"github.com/runbook-dev/runbook/internal/vault"
)

// labDeps reaches the lab's gateways over SSH, as a run does.
type labDeps struct {
	testDeps
	inv    *inventory.Inventory
	dialer *sshtr.Dialer
	mu     sync.Mutex
	trs    map[string]transport.Transport
}

func (d *labDeps) Hosts(targets []string) ([]*inventory.Host, error) { return d.inv.Resolve(targets) }
func (d *labDeps) HostVars(h *inventory.Host) map[string]string      { return d.inv.HostVars(h) }
func (d *labDeps) Transport(ctx context.Context, h *inventory.Host) (transport.Transport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if tr, ok := d.trs[h.Name]; ok {
		return tr, nil
	}
	tr, err := d.dialer.Dial(ctx, h)
	if err != nil {
		return nil, err
	}
	d.trs[h.Name] = tr
	return tr, nil
}

// systemctl runs a systemctl verb on every gateway.
func (d *labDeps) systemctl(t *testing.T, verb string) {
	t.Helper()
	hosts, err := d.Hosts([]string{"gateways"})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		tr, err := d.Transport(context.Background(), h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := transport.Check(context.Background(), tr, transport.Command{Args: []string{"systemctl", verb, "litellm"}, Sudo: h.Sudo}); err != nil {
			t.Fatalf("systemctl %s litellm on %s: %v", verb, h.Name, err)
		}
	}
}

// status asks a gateway for its models with key.
func status(t *testing.T, g *lab.Gateway, key secret.Value) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, g.URL()+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+key.Reveal())
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", g.Name, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReissueOnLab re-issues every key of the lab's database while its
// gateways are stopped, then starts them: each new key is accepted, each
// old value and each grace value rejected.
func TestReissueOnLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up a lab")
	}
	l := labtest.Up(t, lab.Config{Gateways: 2, Postgres: true, Vault: true, Keys: 40})
	ctx := context.Background()
	inv, err := inventory.LoadFile(l.InventoryPath)
	if err != nil {
		t.Fatal(err)
	}
	dialer, err := sshtr.NewDialer(sshtr.Config{KnownHosts: l.KnownHosts, Identity: l.ClientKey, User: "root", ConnectTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dialer.Close() })
	pool, err := pgxpoolNew(ctx, l.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	vc, err := vault.New(ctx, vault.Config{Address: l.Vault.Addr, Token: l.Vault.RunnerToken})
	if err != nil {
		t.Fatal(err)
	}
	d := &labDeps{testDeps: testDeps{pool: pool, vc: vc}, inv: inv, dialer: dialer, trs: map[string]transport.Transport{}}
	w := &world{t: t, pool: pool, vc: vc, masker: &secret.Masker{}, logs: &bytes.Buffer{}}
	env := w.env("run-lab")
	env.Deps = d

	s := newStep(t, ReissueSpec, map[string]any{"all": true})
	var ae *ActiveGatewaysError
	if _, err := s.Check(ctx, env); !errors.As(err, &ae) || len(ae.Hosts) != 2 {
		t.Fatalf("check with running gateways: %v", err)
	}
	d.systemctl(t, "stop")
	rows := allRows(t, w)
	before := w.keyStates()
	obs, err := s.Check(ctx, env)
	if err != nil || obs.OK() {
		t.Fatalf("check: %+v %v", obs, err)
	}
	if _, err := s.Apply(ctx, env); err != nil {
		t.Fatal(err)
	}
	newKeys := w.checkReissued(before, rows, "run-lab", "litellm/virtual-keys")
	d.systemctl(t, "start")

	byHash := map[string]lab.SeededKey{}
	for _, k := range l.Seed.Keys {
		byHash[k.Hash] = k
	}
	now := time.Now()
	for _, g := range l.Gateways {
		for old, nk := range newKeys {
			sk := byHash[old]
			// A blocked or expired key stays so under its new value.
			if got := status(t, g, nk); (got == http.StatusOK) != sk.Valid(now) {
				t.Errorf("%s: new key for %s: %d, valid %v", g.Name, secret.Fingerprint(old), got, sk.Valid(now))
			}
			if got := status(t, g, sk.Key); got != http.StatusUnauthorized {
				t.Errorf("%s: old key %s: %d, want 401", g.Name, secret.Fingerprint(old), got)
			}
			if !sk.GraceKey.IsZero() {
				if got := status(t, g, sk.GraceKey); got != http.StatusUnauthorized {
					t.Errorf("%s: grace key of %s: %d, want 401", g.Name, secret.Fingerprint(old), got)
				}
			}
		}
	}
}
