package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/vault"
)

// deps gives a kind the run's Vault client and collects its notes, as the
// engine does.
type deps struct {
	c     *vault.Client
	mu    sync.Mutex
	notes []journal.Note
}

func (d *deps) Vault(context.Context) (*vault.Client, error) { return d.c, nil }

func (d *deps) Note(_ context.Context, stepID, host string, n journal.Note) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.notes = append(d.notes, n)
	return nil
}

type fixture struct {
	v    *lab.Vault
	c    *vault.Client // the runner's least-privilege token
	root *vault.Client
	log  bytes.Buffer
}

func setup(t *testing.T) *fixture {
	t.Helper()
	l := labtest.Up(t, lab.Config{Vault: true})
	ctx := context.Background()
	f := &fixture{v: l.Vault}
	var err error
	if f.c, err = vault.New(ctx, vault.Config{Address: l.Vault.Addr, Token: l.Vault.RunnerToken}); err != nil {
		t.Fatal(err)
	}
	if f.root, err = vault.New(ctx, vault.Config{Address: l.Vault.Addr, Token: l.Vault.RootToken}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) env(runID string, d *deps, dry bool) *step.Env {
	return &step.Env{
		RunID: runID, StepID: "newkey", DryRun: dry, Deps: d, Secrets: &secret.Masker{},
		Log: slog.New(slog.NewTextHandler(&f.log, nil)), Started: time.Now(),
	}
}

func newStep(t *testing.T, p step.Params) *MasterKey {
	t.Helper()
	s, err := newMasterKey(p)
	if err != nil {
		t.Fatal(err)
	}
	return s.(*MasterKey)
}

// versions returns how many versions path has.
func (f *fixture) versions(t *testing.T, path string) int {
	t.Helper()
	md, err := f.root.Metadata(context.Background(), path)
	if errors.Is(err, vault.ErrNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return md.CurrentVersion
}

// scan fails when any text holds a key value.
func scan(t *testing.T, keys []secret.Value, texts ...string) {
	t.Helper()
	for _, k := range keys {
		for _, s := range texts {
			if strings.Contains(s, k.Reveal()) {
				t.Fatalf("a key value leaked into %q", s)
			}
		}
	}
}

func TestMasterKey(t *testing.T) {
	f := setup(t)
	t.Run("NewThenPromote", func(t *testing.T) { testNewThenPromote(t, f) })
	t.Run("FirstKey", func(t *testing.T) { testFirstKey(t, f) })
	t.Run("CASConflict", func(t *testing.T) { testCASConflict(t, f) })
	t.Run("ResumeAfterWrite", func(t *testing.T) { testResumeAfterWrite(t, f) })
	t.Run("Superseded", func(t *testing.T) { testSuperseded(t, f) })
}

func testNewThenPromote(t *testing.T, f *fixture) {
	ctx := context.Background()
	path := "litellm/master" // seeded by the lab with the gateways' key
	before, err := f.root.ReadCurrent(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	oldKey := before.Secret("key")
	n0 := f.versions(t, path)

	d := &deps{c: f.c}
	s := newStep(t, step.Params{})

	// The dry run changes nothing.
	md0, _ := f.root.Metadata(ctx, path)
	obs, err := s.Check(ctx, f.env("run-a", d, true))
	if err != nil || obs.OK() {
		t.Fatalf("plan: %+v %v", obs, err)
	}
	if !strings.Contains(obs.Change, fmt.Sprintf("version %d (pending)", n0+1)) {
		t.Errorf("plan says %q", obs.Change)
	}
	md1, _ := f.root.Metadata(ctx, path)
	if fmt.Sprint(md0) != fmt.Sprint(md1) {
		t.Fatal("the dry run changed Vault")
	}

	env := f.env("run-a", d, false)
	out, err := s.Apply(ctx, env)
	if err != nil {
		t.Fatal(err)
	}
	if out["version"] != strconv.Itoa(n0+1) || out["previous_version"] != strconv.Itoa(before.Version) ||
		out["previous_fingerprint"] != oldKey.Fingerprint() || out["fingerprint"] == out["previous_fingerprint"] {
		t.Fatalf("outputs %v", out)
	}
	e, err := f.root.ReadVersion(ctx, path, n0+1, vault.PlainFields...)
	if err != nil {
		t.Fatal(err)
	}
	newKey := e.Secret("key")
	if k := newKey.Reveal(); !strings.HasPrefix(k, "sk-") || len(k) != 67 || strings.Trim(k[3:], "0123456789abcdef") != "" {
		t.Fatalf("key format: %d characters", len(k))
	}
	if e.Plain[vault.FieldRunID] != "run-a" || e.Plain[vault.FieldState] != vault.StatePending || out["fingerprint"] != newKey.Fingerprint() {
		t.Fatalf("data %v", e.Plain)
	}
	md, _ := f.root.Metadata(ctx, path)
	if md.CustomMetadata[vault.MetaRotatedByRun] != "run-a" || md.CustomMetadata[vault.MetaRotatedAt] == "" ||
		md.CustomMetadata[vault.MetaPendingVersion] != out["version"] || md.CustomMetadata[vault.MetaCurrentVersion] != strconv.Itoa(before.Version) {
		t.Fatalf("custom metadata %v", md.CustomMetadata)
	}
	// Pending is not current: readers still get the old key.
	if cur, err := f.root.ReadCurrent(ctx, path); err != nil || !cur.Secret("key").Equal(oldKey) {
		t.Fatalf("current while pending: %v", err)
	}
	if len(d.notes) != 2 || d.notes[0].Fields["fingerprint"] != oldKey.Fingerprint() || d.notes[1].Fields["fingerprint"] != newKey.Fingerprint() ||
		d.notes[0].Kind != "key_fingerprint" {
		t.Fatalf("notes %+v", d.notes)
	}
	// Checked again, it is done, with the same outputs.
	obs, err = s.Check(ctx, f.env("run-a", d, false))
	if err != nil || !obs.OK() || fmt.Sprint(obs.Outputs) != fmt.Sprint(out) {
		t.Fatalf("check after apply: %+v %v", obs, err)
	}
	if err := s.Verify(ctx, f.env("run-a", d, false)); err != nil {
		t.Fatal(err)
	}

	// Promote.
	p := newStep(t, step.Params{"mode": "promote"})
	obs, err = p.Check(ctx, f.env("run-a", d, false))
	if err != nil || obs.OK() {
		t.Fatalf("promote check: %+v %v", obs, err)
	}
	pout, err := p.Apply(ctx, f.env("run-a", d, false))
	if err != nil || pout["version"] != out["version"] || pout["previous_version"] != out["previous_version"] {
		t.Fatalf("promote: %v %v", pout, err)
	}
	if cur, err := f.root.ReadCurrent(ctx, path); err != nil || !cur.Secret("key").Equal(newKey) {
		t.Fatalf("current after promote: %v", err)
	}
	if obs, err := p.Check(ctx, f.env("run-a", d, false)); err != nil || !obs.OK() {
		t.Fatalf("promote again: %+v %v", obs, err)
	}
	// The old version stays for rollback.
	if old, err := f.root.ReadVersion(ctx, path, before.Version); err != nil || !old.Secret("key").Equal(oldKey) {
		t.Fatalf("old version: %v", err)
	}
	if got := f.versions(t, path); got != n0+1 {
		t.Fatalf("%d versions, want %d: promotion must not write a version", got, n0+1)
	}

	// A later run rotates again from the promoted key.
	out2, err := newStep(t, step.Params{}).Apply(ctx, f.env("run-b", &deps{c: f.c}, false))
	if err != nil || out2["previous_version"] != out["version"] || out2["previous_fingerprint"] != newKey.Fingerprint() {
		t.Fatalf("second rotation: %v %v", out2, err)
	}
	scan(t, []secret.Value{oldKey, newKey}, f.log.String(), fmt.Sprint(out), fmt.Sprint(pout), fmt.Sprint(out2), fmt.Sprint(d.notes))
}

func testFirstKey(t *testing.T, f *fixture) {
	ctx := context.Background()
	d := &deps{c: f.c}
	s := newStep(t, step.Params{"path": "litellm/fresh/master"})
	obs, err := s.Check(ctx, f.env("run-f", d, true))
	if err != nil || !strings.Contains(obs.Change, "version 1") {
		t.Fatalf("check: %+v %v", obs, err)
	}
	out, err := s.Apply(ctx, f.env("run-f", d, false))
	if err != nil || out["version"] != "1" || out["previous_version"] != "0" || out["previous_fingerprint"] != "" {
		t.Fatalf("apply: %v %v", out, err)
	}
	if len(d.notes) != 1 {
		t.Fatalf("notes %+v", d.notes)
	}
	// Nothing is current until it is promoted.
	if _, err := f.root.ReadCurrent(ctx, "litellm/fresh/master"); !errors.Is(err, vault.ErrNoCurrent) {
		t.Fatalf("current of a first pending key: %v", err)
	}
}

// testCASConflict: another writer slips in between the runner's read and
// its write. The write fails; the other writer's version stands.
func testCASConflict(t *testing.T, f *fixture) {
	ctx := context.Background()
	path := "litellm/cas/master"
	other := secret.New("sk-from-another-writer-000000")
	if _, err := f.root.Write(ctx, path, vault.Data{Secrets: map[string]secret.Value{"key": secret.New("sk-original-0000000000")}}, 0); err != nil {
		t.Fatal(err)
	}
	testHookBeforeWrite = func() {
		if _, err := f.root.Write(ctx, path, vault.Data{Secrets: map[string]secret.Value{"key": other}, Plain: map[string]string{"run_id": "someone-else"}}, 1); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookBeforeWrite = nil }()
	s := newStep(t, step.Params{"path": path})
	_, err := s.Apply(ctx, f.env("run-c", &deps{c: f.c}, false))
	var ce *vault.CASError
	if !errors.As(err, &ce) || ce.Expected != 1 || ce.Current != 2 {
		t.Fatalf("apply with a concurrent writer: %v", err)
	}
	if step.IsRetryable(err) {
		t.Error("a conflict must not be retried blindly")
	}
	e, err := f.root.Read(ctx, path)
	if err != nil || e.Version != 2 || !e.Secret("key").Equal(other) {
		t.Fatalf("the other writer's version was overwritten: %v", err)
	}
}

// testResumeAfterWrite: the runner dies after Vault took the key but
// before anything else (metadata, notes, journal). A resumed run finds and
// reuses that version: Vault ends with exactly one new version.
func testResumeAfterWrite(t *testing.T, f *fixture) {
	ctx := context.Background()
	path := "litellm/resume/master"
	if _, err := f.root.Write(ctx, path, vault.Data{Secrets: map[string]secret.Value{"key": secret.New("sk-original-0000000000")}}, 0); err != nil {
		t.Fatal(err)
	}
	s := newStep(t, step.Params{"path": path})
	env := f.env("run-r", &deps{c: f.c}, false)
	st, err := s.observe(ctx, env, f.c)
	if err != nil {
		t.Fatal(err)
	}
	written, err := s.write(ctx, env, f.c, st) // the crash comes right after
	if err != nil {
		t.Fatal(err)
	}

	// The resumed run: a new process, a new step value, the same run id.
	d := &deps{c: f.c}
	s2 := newStep(t, step.Params{"path": path})
	obs, err := s2.Check(ctx, f.env("run-r", d, false))
	if err != nil || obs.OK() || !strings.Contains(obs.Change, "record the rotation") {
		t.Fatalf("check on resume: %+v %v", obs, err)
	}
	out, err := s2.Apply(ctx, f.env("run-r", d, false))
	if err != nil || out["version"] != strconv.Itoa(written.Version) || out["fingerprint"] != written.Secret("key").Fingerprint() {
		t.Fatalf("apply on resume: %v %v", out, err)
	}
	if n := f.versions(t, path); n != 2 {
		t.Fatalf("%d versions after resume, want 2 (one new)", n)
	}
	if len(d.notes) != 2 {
		t.Fatalf("notes on resume: %+v", d.notes)
	}
	// And a resume after the journal lost the outcome: ok, same outputs.
	obs, err = newStep(t, step.Params{"path": path}).Check(ctx, f.env("run-r", &deps{c: f.c}, false))
	if err != nil || !obs.OK() || obs.Outputs["version"] != out["version"] {
		t.Fatalf("check after resume: %+v %v", obs, err)
	}
	if n := f.versions(t, path); n != 2 {
		t.Fatalf("%d versions, want 2", n)
	}
}

// testSuperseded: this run's key was followed by another writer's. The
// run refuses to guess rather than write a third key.
func testSuperseded(t *testing.T, f *fixture) {
	ctx := context.Background()
	path := "litellm/superseded/master"
	s := newStep(t, step.Params{"path": path})
	if _, err := s.Apply(ctx, f.env("run-s", &deps{c: f.c}, false)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.root.Write(ctx, path, vault.Data{Secrets: map[string]secret.Value{"key": secret.New("sk-later-000000000000")}, Plain: map[string]string{"run_id": "other"}}, 1); err != nil {
		t.Fatal(err)
	}
	_, err := s.Check(ctx, f.env("run-s", &deps{c: f.c}, false))
	if err == nil || !strings.Contains(err.Error(), "another writer") {
		t.Fatalf("check: %v", err)
	}
	if n := f.versions(t, path); n != 2 {
		t.Fatalf("%d versions", n)
	}
}

func TestParams(t *testing.T) {
	for _, p := range []step.Params{
		{"path": "../etc"}, {"path": "/abs"}, {"path": "a//b"}, {"field": "run_id"}, {"version": 3},
		{"mode": "promote", "version": -1},
	} {
		if _, err := newMasterKey(p); err == nil {
			t.Errorf("%v accepted", p)
		}
	}
	if _, err := newMasterKey(step.Params{"mode": "promote", "version": 3}); err != nil {
		t.Error(err)
	}
}
