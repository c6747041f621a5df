// Package vault holds the step kinds that write keys to HashiCorp Vault.
package vault

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/vault"
)

// MasterKeySpec is the `vault.master_key` kind.
var MasterKeySpec = &step.Spec{
	Name:    "vault.master_key",
	Summary: "write a new LiteLLM master key to Vault KV v2 with check-and-set, or make it current",
	Target:  step.Once,
	Params: []step.Param{
		{Name: "path", Type: step.String, Default: "litellm/master", Doc: "KV v2 path under the mount", Validate: ValidatePath},
		{Name: "field", Type: step.String, Default: "key", Doc: "data field holding the key", Validate: validateField},
		{Name: "mode", Type: step.String, Default: "new", Allowed: []string{"new", "promote"},
			Doc: "new: write a new key as a pending version; promote: make the version this run wrote current"},
		{Name: "version", Type: step.Int, Doc: "promote: the version to make current (default: the one this run wrote)"},
	},
	Outputs: []string{"version", "previous_version", "fingerprint", "previous_fingerprint"},
	New:     newMasterKey,
}

// MasterKey makes and promotes master keys. A new key is written as the next
// version with check-and-set against the version it read, with the run's id
// in its data: a concurrent writer makes the write fail rather than be
// overwritten, and a resumed run finds its own version instead of writing a
// second key.
type MasterKey struct {
	Path    string
	Field   string
	Promote bool
	Version int
}

var (
	_ step.Step     = (*MasterKey)(nil)
	_ step.Verifier = (*MasterKey)(nil)
)

// testHookBeforeWrite lets a test slip a concurrent writer in between the
// observation and the write.
var testHookBeforeWrite func()

// scanBack bounds how many versions back a run looks for its own write.
const scanBack = 10

var pathRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$`)

// ValidatePath accepts a KV path under the mount: segments of letters,
// digits, '_', '.', '-', no "." or ".." segment.
func ValidatePath(v any) error {
	s, _ := v.(string)
	if !pathRE.MatchString(s) {
		return fmt.Errorf("%q is not a KV path (segments of letters, digits, _ . -)", s)
	}
	for _, seg := range strings.Split(s, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("%q has a %q segment", s, seg)
		}
	}
	return nil
}

func validateField(v any) error {
	s, _ := v.(string)
	if s == "" || strings.ContainsAny(s, "/# \t\n") {
		return fmt.Errorf("%q is not a field name", s)
	}
	for _, f := range vault.PlainFields {
		if s == f {
			return fmt.Errorf("%q is reserved for the run's bookkeeping", s)
		}
	}
	return nil
}

func newMasterKey(p step.Params) (step.Step, error) {
	m := &MasterKey{Path: p.String("path"), Field: p.String("field"), Promote: p.String("mode") == "promote", Version: p.Int("version")}
	if m.Path == "" {
		m.Path = "litellm/master"
	}
	if m.Field == "" {
		m.Field = "key"
	}
	if err := ValidatePath(m.Path); err != nil {
		return nil, &step.ParamError{Param: "path", Err: err}
	}
	if err := validateField(m.Field); err != nil {
		return nil, &step.ParamError{Param: "field", Err: err}
	}
	if m.Version < 0 {
		return nil, &step.ParamError{Param: "version", Err: errors.New("must be positive")}
	}
	if m.Version != 0 && !m.Promote {
		return nil, &step.ParamError{Param: "version", Err: errors.New("only for mode promote")}
	}
	return m, nil
}

// Client returns the run's Vault client from env.
func Client(ctx context.Context, env *step.Env) (*vault.Client, error) {
	d, ok := env.Deps.(step.VaultDep)
	if !ok || d == nil {
		return nil, errors.New("this run has no vault client (configure vault in the inventory)")
	}
	c, err := d.Vault(ctx)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// state is what Check and Apply observe.
type state struct {
	md *vault.Metadata // nil: the path has never been written
	// own is the newest version this run wrote, nil when none.
	own *vault.Entry
	// latest is the latest version (nil when deleted or absent).
	latest *vault.Entry
	// current is the version in use before this run's key (nil: none).
	current *vault.Entry
}

func (m *MasterKey) observe(ctx context.Context, env *step.Env, c *vault.Client) (*state, error) {
	st := &state{}
	md, err := c.Metadata(ctx, m.Path)
	if errors.Is(err, vault.ErrNotFound) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	st.md = md
	// Walk back from the latest version looking for this run's write.
	for i, v := 0, md.CurrentVersion; i < scanBack && v >= md.OldestVersion && v > 0; i, v = i+1, v-1 {
		if info, ok := md.Version(v); ok && info.Deleted() {
			continue
		}
		e, err := c.ReadVersion(ctx, m.Path, v, vault.PlainFields...)
		if errors.Is(err, vault.ErrDeleted) || errors.Is(err, vault.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m.remember(env, e)
		if v == md.CurrentVersion {
			st.latest = e
		}
		if env.RunID != "" && e.Plain[vault.FieldRunID] == env.RunID {
			st.own = e
			break
		}
	}
	if st.own != nil && st.own.Version != md.CurrentVersion {
		return nil, fmt.Errorf("%s: version %d written by this run was followed by version %d from another writer (run %q); refusing to guess which key is right",
			c.Display(m.Path), st.own.Version, md.CurrentVersion, runOf(st.latest))
	}
	cur, err := m.currentBefore(ctx, c, st)
	if err != nil {
		return nil, err
	}
	st.current = cur
	return st, nil
}

func runOf(e *vault.Entry) string {
	if e == nil {
		return ""
	}
	return e.Plain[vault.FieldRunID]
}

// currentBefore finds the version in use before this run's key: the
// previous version recorded in this run's write, else what custom metadata
// says, else the latest unless it is pending.
func (m *MasterKey) currentBefore(ctx context.Context, c *vault.Client, st *state) (*vault.Entry, error) {
	n := 0
	switch {
	case st.own != nil:
		n, _ = strconv.Atoi(st.own.Plain[vault.FieldPreviousVersion])
	case st.md.CustomMetadata[vault.MetaCurrentVersion] != "":
		n, _ = strconv.Atoi(st.md.CustomMetadata[vault.MetaCurrentVersion])
	case st.latest != nil && st.latest.Plain[vault.FieldState] != vault.StatePending:
		return st.latest, nil
	case st.latest != nil:
		n, _ = strconv.Atoi(st.latest.Plain[vault.FieldPreviousVersion])
	}
	if n <= 0 {
		return nil, nil
	}
	if st.latest != nil && st.latest.Version == n {
		return st.latest, nil
	}
	e, err := c.ReadVersion(ctx, m.Path, n, vault.PlainFields...)
	if errors.Is(err, vault.ErrDeleted) || errors.Is(err, vault.ErrNotFound) {
		return nil, nil
	}
	return e, err
}

// remember adds the key of e to the run's masker.
func (m *MasterKey) remember(env *step.Env, e *vault.Entry) {
	if env.Secrets != nil {
		if k := e.Secret(m.Field); !k.IsZero() {
			env.Secrets.Add(k)
		}
	}
}

func (m *MasterKey) outputs(own, cur *vault.Entry) step.Outputs {
	out := step.Outputs{
		"version":     strconv.Itoa(own.Version),
		"fingerprint": own.Secret(m.Field).Fingerprint(),
	}
	out["previous_version"] = own.Plain[vault.FieldPreviousVersion]
	if out["previous_version"] == "" {
		out["previous_version"] = "0"
	}
	if cur != nil {
		out["previous_fingerprint"] = cur.Secret(m.Field).Fingerprint()
	} else {
		out["previous_fingerprint"] = ""
	}
	return out
}

// recorded reports whether custom metadata records this run's write of own.
func recorded(md *vault.Metadata, env *step.Env, own *vault.Entry) bool {
	return md.CustomMetadata[vault.MetaRotatedByRun] == env.RunID &&
		md.CustomMetadata[vault.MetaPendingVersion] == strconv.Itoa(own.Version) ||
		md.CustomMetadata[vault.MetaCurrentVersion] == strconv.Itoa(own.Version)
}

// Check implements step.Step. It only reads Vault.
func (m *MasterKey) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	c, err := Client(ctx, env)
	if err != nil {
		return step.Observation{}, fmt.Errorf("vault.master_key: %w", err)
	}
	st, err := m.observe(ctx, env, c)
	if err != nil {
		return step.Observation{}, fmt.Errorf("vault.master_key: %w", err)
	}
	where := c.Display(m.Path)
	if m.Promote {
		return m.checkPromote(ctx, env, c, st)
	}
	if st.own != nil {
		if !recorded(st.md, env, st.own) {
			return step.Observation{Change: fmt.Sprintf("record the rotation to version %d of %s in its metadata", st.own.Version, where)}, nil
		}
		return step.Observation{Outputs: m.outputs(st.own, st.current)}, nil
	}
	if st.md == nil {
		return step.Observation{Change: fmt.Sprintf("write a new master key to %s as version 1 (pending)", where)}, nil
	}
	change := fmt.Sprintf("write a new master key to %s as version %d (pending)", where, st.md.CurrentVersion+1)
	if st.current != nil {
		change += fmt.Sprintf("; version %d (%s) stays for rollback", st.current.Version, st.current.Secret(m.Field).Fingerprint())
	}
	return step.Observation{Change: change}, nil
}

// Apply implements step.Step. It re-reads Vault first, so that a retry or a
// resume never writes a second key.
func (m *MasterKey) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	c, err := Client(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("vault.master_key: %w", err)
	}
	st, err := m.observe(ctx, env, c)
	if err != nil {
		return nil, fmt.Errorf("vault.master_key: %w", err)
	}
	if m.Promote {
		return m.applyPromote(ctx, env, c, st)
	}
	if env.RunID == "" {
		return nil, errors.New("vault.master_key: the run has no id to record")
	}
	own := st.own
	if own == nil {
		own, err = m.write(ctx, env, c, st)
		if err != nil {
			return nil, fmt.Errorf("vault.master_key: %w", err)
		}
		m.log(env, "wrote a new master key", "path", c.Display(m.Path), "version", own.Version, "fingerprint", own.Secret(m.Field).Fingerprint())
	}
	// Notes first, then the metadata that marks the rotation complete: a
	// crash in between repeats the notes, never loses them.
	if err := m.note(ctx, env, st.current, own); err != nil {
		return nil, fmt.Errorf("vault.master_key: %w", err)
	}
	cm := copyMeta(st.md)
	cm[vault.MetaRotatedAt] = time.Now().UTC().Format(time.RFC3339)
	cm[vault.MetaRotatedByRun] = env.RunID
	cm[vault.MetaPendingVersion] = strconv.Itoa(own.Version)
	if st.current != nil {
		cm[vault.MetaCurrentVersion] = strconv.Itoa(st.current.Version)
	}
	if err := c.WriteCustomMetadata(ctx, m.Path, cm); err != nil {
		return nil, fmt.Errorf("vault.master_key: %w", err)
	}
	return m.outputs(own, st.current), nil
}

func copyMeta(md *vault.Metadata) map[string]string {
	out := map[string]string{}
	if md != nil {
		for k, v := range md.CustomMetadata {
			out[k] = v
		}
	}
	return out
}

// write makes the key and writes it with check-and-set against the version
// observed. When the write fails with a conflict, it reads again: if the
// version there is this run's (a retried request whose first attempt
// landed), that is the write.
func (m *MasterKey) write(ctx context.Context, env *step.Env, c *vault.Client, st *state) (*vault.Entry, error) {
	key, err := litellm.NewMasterKey()
	if err != nil {
		return nil, err
	}
	if env.Secrets != nil {
		env.Secrets.Add(key)
	}
	cas := 0
	if st.md != nil {
		cas = st.md.CurrentVersion
	}
	prev := "0"
	if st.current != nil {
		prev = strconv.Itoa(st.current.Version)
	}
	data := vault.Data{
		Secrets: map[string]secret.Value{m.Field: key},
		Plain: map[string]string{
			vault.FieldRunID:           env.RunID,
			vault.FieldState:           vault.StatePending,
			vault.FieldPreviousVersion: prev,
		},
	}
	if testHookBeforeWrite != nil {
		testHookBeforeWrite()
	}
	v, err := c.Write(ctx, m.Path, data, cas)
	var ce *vault.CASError
	if errors.As(err, &ce) {
		again, rerr := m.observe(ctx, env, c)
		if rerr == nil && again.own != nil && again.own.Secret(m.Field).Equal(key) {
			return again.own, nil
		}
		return nil, fmt.Errorf("another writer changed %s; nothing was overwritten: %w", c.Display(m.Path), err)
	}
	if err != nil {
		return nil, err
	}
	return &vault.Entry{
		Path:    m.Path,
		Version: v,
		Secrets: data.Secrets,
		Plain:   data.Plain,
	}, nil
}

func (m *MasterKey) note(ctx context.Context, env *step.Env, old, own *vault.Entry) error {
	nd, ok := env.Deps.(step.NoteDep)
	if !ok || nd == nil {
		return nil
	}
	if old != nil {
		if err := nd.Note(ctx, env.StepID, "", journal.Note{Kind: "key_fingerprint", Fields: map[string]string{
			"name":        fmt.Sprintf("master key (old, version %d)", old.Version),
			"fingerprint": old.Secret(m.Field).Fingerprint(),
		}}); err != nil {
			return fmt.Errorf("note: %w", err)
		}
	}
	if err := nd.Note(ctx, env.StepID, "", journal.Note{Kind: "key_fingerprint", Fields: map[string]string{
		"name":        fmt.Sprintf("master key (new, version %d)", own.Version),
		"fingerprint": own.Secret(m.Field).Fingerprint(),
	}}); err != nil {
		return fmt.Errorf("note: %w", err)
	}
	return nil
}

// target is the version promote makes current: the one named, else the one
// this run wrote.
func (m *MasterKey) target(ctx context.Context, env *step.Env, c *vault.Client, st *state) (*vault.Entry, error) {
	if m.Version > 0 {
		if st.own != nil && st.own.Version == m.Version {
			return st.own, nil
		}
		e, err := c.ReadVersion(ctx, m.Path, m.Version, vault.PlainFields...)
		if err != nil {
			return nil, err
		}
		m.remember(env, e)
		return e, nil
	}
	return st.own, nil
}

func (m *MasterKey) checkPromote(ctx context.Context, env *step.Env, c *vault.Client, st *state) (step.Observation, error) {
	t, err := m.target(ctx, env, c, st)
	if err != nil {
		return step.Observation{}, fmt.Errorf("vault.master_key: %w", err)
	}
	where := c.Display(m.Path)
	if t == nil {
		if env.DryRun {
			return step.Observation{Change: fmt.Sprintf("make the master key this run writes current at %s", where)}, nil
		}
		return step.Observation{}, fmt.Errorf("vault.master_key: no version of %s was written by this run; nothing to promote", where)
	}
	if st.md != nil && st.md.CustomMetadata[vault.MetaCurrentVersion] == strconv.Itoa(t.Version) {
		return step.Observation{Outputs: m.promoteOutputs(ctx, env, c, st, t)}, nil
	}
	from := "none"
	if st.md != nil && st.md.CustomMetadata[vault.MetaCurrentVersion] != "" {
		from = "version " + st.md.CustomMetadata[vault.MetaCurrentVersion]
	}
	return step.Observation{Change: fmt.Sprintf("make version %d of %s current (was %s; it stays for rollback)", t.Version, where, from)}, nil
}

func (m *MasterKey) promoteOutputs(ctx context.Context, env *step.Env, c *vault.Client, st *state, t *vault.Entry) step.Outputs {
	prev := st.current
	if t != st.own {
		prev = nil
		if n, _ := strconv.Atoi(t.Plain[vault.FieldPreviousVersion]); n > 0 {
			if e, err := c.ReadVersion(ctx, m.Path, n, vault.PlainFields...); err == nil {
				m.remember(env, e)
				prev = e
			}
		}
	}
	return m.outputs(t, prev)
}

func (m *MasterKey) applyPromote(ctx context.Context, env *step.Env, c *vault.Client, st *state) (step.Outputs, error) {
	t, err := m.target(ctx, env, c, st)
	if err != nil {
		return nil, fmt.Errorf("vault.master_key: %w", err)
	}
	if t == nil {
		return nil, fmt.Errorf("vault.master_key: no version of %s was written by this run; nothing to promote", c.Display(m.Path))
	}
	cm := copyMeta(st.md)
	if cm[vault.MetaCurrentVersion] != strconv.Itoa(t.Version) {
		cm[vault.MetaCurrentVersion] = strconv.Itoa(t.Version)
		cm[vault.MetaPromotedAt] = time.Now().UTC().Format(time.RFC3339)
		cm[vault.MetaPromotedByRun] = env.RunID
		if cm[vault.MetaPendingVersion] == strconv.Itoa(t.Version) {
			delete(cm, vault.MetaPendingVersion)
		}
		if err := c.WriteCustomMetadata(ctx, m.Path, cm); err != nil {
			return nil, fmt.Errorf("vault.master_key: %w", err)
		}
		m.log(env, "made the master key current", "path", c.Display(m.Path), "version", t.Version)
	}
	return m.promoteOutputs(ctx, env, c, st, t), nil
}

// Verify implements step.Verifier: a fresh look must find the change made.
func (m *MasterKey) Verify(ctx context.Context, env *step.Env) error {
	obs, err := m.Check(ctx, env)
	if err != nil {
		return err
	}
	if !obs.OK() {
		return fmt.Errorf("vault.master_key: verify: still to do: %s", obs.Change)
	}
	return nil
}

func (m *MasterKey) log(env *step.Env, msg string, args ...any) {
	if env.Log != nil {
		env.Log.Info(msg, args...)
	}
}
