package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/term"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/transport/local"
	sshtransport "github.com/runbook-dev/runbook/internal/transport/ssh"
	"github.com/runbook-dev/runbook/internal/vault"
)

// deps are the run's shared resources: transports to hosts, the Vault
// client and LiteLLM's database. Each is built on first use, once, so a
// runbook that needs no Vault never touches one.
type deps struct {
	inv      *inventory.Inventory
	masker   *secret.Masker
	journal  *engine.Journal // nil in a dry run: notes are not written
	stdin    any             // for a passphrase prompt
	acceptHK bool

	mu       sync.Mutex
	hosts    map[string]*hostConn
	dialer   *sshtransport.Dialer
	dialErr  error
	dialOnce sync.Once

	vaultOnce sync.Once
	vault     *vault.Client
	vaultErr  error

	dbOnce sync.Once
	db     *pgxpool.Pool
	dbErr  error

	// What the journal holds (see step.JournalDep): notes by step and
	// kind, and the intents of earlier attempts by step and host.
	journalMu sync.Mutex
	noted     map[[2]string]bool
	acted     map[[2]string]bool
}

type hostConn struct {
	mu sync.Mutex
	tr transport.Transport
}

var (
	_ engine.Transports = (*deps)(nil)
	_ step.VaultDep     = (*deps)(nil)
	_ step.DBDep        = (*deps)(nil)
	_ step.HostsDep     = (*deps)(nil)
	_ step.NoteDep      = (*deps)(nil)
	_ step.JournalDep   = (*deps)(nil)
)

func newDeps(inv *inventory.Inventory, masker *secret.Masker, jr *engine.Journal, stdin any, acceptNewHostKeys bool) *deps {
	return &deps{inv: inv, masker: masker, journal: jr, stdin: stdin, acceptHK: acceptNewHostKeys, hosts: map[string]*hostConn{},
		noted: map[[2]string]bool{}, acted: map[[2]string]bool{}}
}

// replayed records what the journal of a resumed run already holds.
func (d *deps) replayed(st *journal.State) {
	d.journalMu.Lock()
	defer d.journalMu.Unlock()
	for _, rec := range st.Notes {
		if rec.Note != nil {
			d.noted[[2]string{rec.Step, rec.Note.Kind}] = true
		}
	}
	for _, w := range st.Work {
		if w.Intents > 0 {
			d.acted[[2]string{w.Step, w.Host}] = true
		}
	}
}

// Noted implements step.JournalDep.
func (d *deps) Noted(stepID, kind string) bool {
	d.journalMu.Lock()
	defer d.journalMu.Unlock()
	return d.noted[[2]string{stepID, kind}]
}

// Acted implements step.JournalDep.
func (d *deps) Acted(stepID, host string) bool {
	d.journalMu.Lock()
	defer d.journalMu.Unlock()
	return d.acted[[2]string{stepID, host}]
}

// For implements engine.Transports: one transport per host per run, dialed
// on first use (hosts dial in parallel) and reused by every step.
func (d *deps) For(ctx context.Context, h *inventory.Host) (transport.Transport, error) {
	key := ""
	if h != nil {
		key = h.Name
	}
	d.mu.Lock()
	hc := d.hosts[key]
	if hc == nil {
		hc = &hostConn{}
		d.hosts[key] = hc
	}
	d.mu.Unlock()
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.tr != nil {
		return hc.tr, nil
	}
	switch {
	case h == nil:
		hc.tr = local.New("localhost")
	case h.Transport == "local":
		l := local.New(h.Name)
		l.Sudo = h.Sudo
		hc.tr = l
	default:
		dl, err := d.sshDialer(ctx)
		if err != nil {
			return nil, err
		}
		tr, err := dl.Dial(ctx, h)
		if err != nil {
			return nil, err // a *transport.ConnError is retried by the engine
		}
		hc.tr = tr
	}
	return hc.tr, nil
}

func (d *deps) sshDialer(ctx context.Context) (*sshtransport.Dialer, error) {
	d.dialOnce.Do(func() {
		cfg, err := sshtransport.ConfigFrom(d.inv.SSH)
		if err != nil {
			d.dialErr = err
			return
		}
		if !d.inv.SSH.Passphrase.IsZero() {
			v, err := vault.ResolveSecretRef(ctx, d.inv.SSH.Passphrase, nil)
			if err != nil {
				d.dialErr = fmt.Errorf("ssh passphrase: %w", err)
				return
			}
			d.masker.Add(v)
			cfg.Passphrase = v
		} else if f, ok := d.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			cfg.PassphraseFunc = func() (secret.Value, error) {
				fmt.Fprint(os.Stderr, "Passphrase for the SSH key: ")
				b, err := term.ReadPassword(int(f.Fd()))
				fmt.Fprintln(os.Stderr)
				return secret.FromBytes(b), err
			}
		}
		cfg.Lookup = func(name string) *inventory.Host {
			for _, h := range d.inv.Hosts {
				if h.Name == name {
					return h
				}
			}
			return nil
		}
		cfg.AcceptNewHostKeys = d.acceptHK
		cfg.OnAccept = func(a sshtransport.HostKeyAcceptance) {
			_ = d.Note(context.WithoutCancel(ctx), "", a.Host, journal.Note{Kind: "host_key_accepted", Text: fmt.Sprintf("accepted the new host key of %s: %s %s", a.Host, a.KeyType, a.Fingerprint)})
		}
		d.dialer, d.dialErr = sshtransport.NewDialer(cfg)
	})
	return d.dialer, d.dialErr
}

// Vault implements step.VaultDep.
func (d *deps) Vault(ctx context.Context) (*vault.Client, error) {
	d.vaultOnce.Do(func() {
		d.vault, d.vaultErr = vault.FromInventory(ctx, d.inv.Vault, func(ref inventory.SecretRef) (secret.Value, error) {
			v, err := vault.ResolveSecretRef(ctx, ref, nil)
			d.masker.Add(v)
			return v, err
		})
	})
	return d.vault, d.vaultErr
}

// DB implements step.DBDep: a pool on LiteLLM's database, whose URL (it may
// hold a password) comes from the inventory's secret reference.
func (d *deps) DB(ctx context.Context) (*pgxpool.Pool, error) {
	d.dbOnce.Do(func() {
		ref := d.inv.Database.URL
		if ref.IsZero() {
			d.dbErr = errors.New("the inventory names no database (database.url)")
			return
		}
		var vc *vault.Client
		if ref.Vault != "" {
			if vc, d.dbErr = d.Vault(ctx); d.dbErr != nil {
				return
			}
		}
		url, err := vault.ResolveSecretRef(ctx, ref, vc)
		if err != nil {
			d.dbErr = fmt.Errorf("database url: %w", err)
			return
		}
		d.masker.Add(url)
		pool, err := pgxpool.New(ctx, url.Reveal())
		if err != nil {
			// pgx errors can quote the connection string: say only where it came from.
			d.dbErr = fmt.Errorf("database url from %s: %s", ref, d.masker.MaskString(err.Error()))
			return
		}
		d.db = pool
	})
	return d.db, d.dbErr
}

// Hosts implements step.HostsDep.
func (d *deps) Hosts(targets []string) ([]*inventory.Host, error) { return d.inv.Resolve(targets) }

// HostVars implements step.HostsDep.
func (d *deps) HostVars(h *inventory.Host) map[string]string { return d.inv.HostVars(h) }

// Transport implements step.HostsDep.
func (d *deps) Transport(ctx context.Context, h *inventory.Host) (transport.Transport, error) {
	return d.For(ctx, h)
}

// Note implements step.NoteDep. In a dry run nothing is written.
func (d *deps) Note(ctx context.Context, stepID, host string, n journal.Note) error {
	if d.journal == nil {
		return nil
	}
	if err := d.journal.Write(ctx, journal.Record{Type: journal.TNote, Step: stepID, Host: host, Note: &n}); err != nil {
		return err
	}
	d.journalMu.Lock()
	d.noted[[2]string{stepID, n.Kind}] = true
	d.journalMu.Unlock()
	return nil
}

// Close closes every connection.
func (d *deps) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	keys := make([]string, 0, len(d.hosts))
	for k := range d.hosts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		if tr := d.hosts[k].tr; tr != nil {
			errs = append(errs, tr.Close())
		}
	}
	if d.dialer != nil {
		errs = append(errs, d.dialer.Close())
	}
	if d.db != nil {
		d.db.Close()
	}
	return errors.Join(errs...)
}
