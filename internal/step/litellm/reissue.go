package litellm

import (
	"context"
	"errors"
	"fmt"
	stepvault "github.com/runbook-dev/runbook/internal/step/vault"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/journal"
	ll "github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/vault"
)

// ReissueSpec is the `litellm.reissue_virtual_keys` kind.
var ReissueSpec = &step.Spec{
	Name:    "litellm.reissue_virtual_keys",
	Summary: "replace virtual keys with new ones stored in Vault, while every gateway is stopped",
	Target:  step.Once,
	Params: append(append([]step.Param(nil), gatewayParams...), unitParam,
		step.Param{Name: "all", Type: step.Bool, Default: false, Doc: "re-issue every virtual key (required when no filter is given)"},
		step.Param{Name: "teams", Type: step.List, Doc: "only keys of these team_ids"},
		step.Param{Name: "aliases", Type: step.List, Doc: "only keys with these key_aliases"},
		step.Param{Name: "older_than", Type: step.Duration, Doc: "only keys last rotated (or, never rotated, created) longer ago than this"},
		step.Param{Name: "rotated_before", Type: step.String, Doc: "only keys last rotated (or created) before this time (RFC 3339)"},
		step.Param{Name: "vault_prefix", Type: step.String, Default: "litellm/virtual-keys", Doc: "Vault KV path under which each new key is stored, at PREFIX/ALIAS or PREFIX/OLD_TOKEN_HASH", Validate: validVaultPrefix},
		step.Param{Name: "grace", Type: step.Duration, Default: time.Duration(0), Doc: "keep each old value valid this long (routine rotation only; after a compromise leave it 0 so no old value stays valid)"},
		step.Param{Name: "vault_parallel", Type: step.Int, Default: 8, Doc: "Vault writes in flight at once"},
	),
	Outputs: []string{"count", "with_grace", "vault_prefix"},
	New:     newReissue,
}

// VaultKeyField is the field of a re-issued key's Vault record that holds
// the key. The record's other fields are plain (see vaultPlainFields).
const VaultKeyField = "key"

// vaultPlainFields are the fields of a re-issued key's Vault record that
// hold no secret.
var vaultPlainFields = []string{"token_hash", "key_name", "old_token_hash", "run_id", "key_alias", "team_id", "user_id", "rotated_at", "kind"}

const vaultRecordKind = "litellm_virtual_key"

// Reissue re-issues the selected virtual keys. The new key is written to
// Vault first, then every changed row is committed in one transaction.
type Reissue struct {
	Gateways, Unit string
	Selection      ll.KeySelection
	OlderThan      time.Duration
	VaultPrefix    string
	Grace          time.Duration
	VaultParallel  int

	// Test hooks: afterVaultWrite runs after each key's Vault record is in
	// place (n counts them), beforeCommit before the database commit. An
	// error from either stops Apply there, as a crash would.
	afterVaultWrite func(ctx context.Context, n int) error
	// stored: an Apply of this step has begun storing keys in Vault.
	stored       bool
	beforeCommit func(ctx context.Context) error
	// now, when set, replaces time.Now.
	now func() time.Time
}

var (
	_ step.Step = (*Reissue)(nil)
)

// validVaultPrefix takes the KV paths vault.master_key's path takes
// (leading and trailing slashes aside).
func validVaultPrefix(v any) error {
	s, _ := v.(string)
	t := strings.Trim(s, "/")
	if t == "" {
		return errors.New("empty vault path")
	}
	return stepvault.ValidatePath(t)
}

func newReissue(p step.Params) (step.Step, error) {
	r := &Reissue{
		Gateways:      p.String("gateways"),
		Unit:          p.String("unit"),
		VaultPrefix:   strings.Trim(p.String("vault_prefix"), "/"),
		Grace:         p.Duration("grace"),
		OlderThan:     p.Duration("older_than"),
		VaultParallel: p.Int("vault_parallel"),
		Selection: ll.KeySelection{
			Teams:   p.Strings("teams"),
			Aliases: p.Strings("aliases"),
		},
	}
	if r.Gateways == "" {
		r.Gateways = "gateways"
	}
	if r.Unit == "" {
		r.Unit = "litellm"
	}
	if r.VaultPrefix == "" {
		r.VaultPrefix = "litellm/virtual-keys"
	}
	if r.VaultParallel <= 0 {
		r.VaultParallel = 8
	}
	if r.VaultParallel > 64 {
		return nil, &step.ParamError{Param: "vault_parallel", Err: errors.New("at most 64")}
	}
	if s := p.String("rotated_before"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return nil, &step.ParamError{Param: "rotated_before", Err: fmt.Errorf("want an RFC 3339 time: %w", err)}
		}
		r.Selection.RotatedBefore = t.UTC()
	}
	filtered := len(r.Selection.Teams) > 0 || len(r.Selection.Aliases) > 0 || r.OlderThan > 0 || !r.Selection.RotatedBefore.IsZero()
	switch {
	case p.Bool("all") && filtered:
		return nil, &step.ParamError{Param: "all", Err: errors.New("all: true takes no teams, aliases, older_than or rotated_before")}
	case !p.Bool("all") && !filtered:
		return nil, &step.ParamError{Param: "all", Err: errors.New("say all: true, or select keys with teams, aliases, older_than or rotated_before")}
	}
	return r, nil
}

func (r *Reissue) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

// selection is the key selection for this run at time now: keys this run
// already re-issued are left out.
func (r *Reissue) selection(env *step.Env, now time.Time) ll.KeySelection {
	sel := r.Selection
	sel.Exclude = RunMarker(env.RunID)
	if r.OlderThan > 0 {
		t := now.Add(-r.OlderThan)
		if sel.RotatedBefore.IsZero() || t.Before(sel.RotatedBefore) {
			sel.RotatedBefore = t
		}
	}
	return sel
}

// doneCount counts the keys this run has re-issued.
func doneCount(ctx context.Context, q ll.Querier, env *step.Env) (int, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM "LiteLLM_VerificationToken" WHERE "updated_by" = $1`, RunMarker(env.RunID)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count re-issued keys: %w", err)
	}
	return n, nil
}

// Check implements step.Step. It refuses (an error) while any gateway runs
// the proxy, and otherwise counts the selected keys this run has not yet
// re-issued. It only reads.
func (r *Reissue) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	if err := requireStopped(ctx, env, r.Gateways, r.Unit); err != nil {
		return step.Observation{}, err
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return step.Observation{}, err
	}
	keys, err := ll.SelectKeys(ctx, pool, r.selection(env, r.clock()))
	if err != nil {
		return step.Observation{}, step.Retryable(err)
	}
	if len(keys) == 0 {
		done, err := doneCount(ctx, pool, env)
		if err != nil {
			return step.Observation{}, step.Retryable(err)
		}
		if done > 0 && unrecorded(env, ReissueNoteKind, false) {
			return step.Observation{Change: fmt.Sprintf("record the %d virtual keys this run re-issued (the attempt that re-issued them could not record them)", done)}, nil
		}
		return step.Observation{Outputs: step.Outputs{"count": strconv.Itoa(done), "with_grace": "0", "vault_prefix": r.VaultPrefix}}, nil
	}
	// Fail the plan, not the run, on a Vault that cannot be reached.
	if _, err := vaultClient(ctx, env); err != nil {
		return step.Observation{}, err
	}
	withGrace := 0
	for _, k := range keys {
		if k.GraceRows > 0 {
			withGrace++
		}
	}
	change := fmt.Sprintf("re-issue %d virtual keys (%d with grace rows)", len(keys), withGrace)
	if r.Grace > 0 {
		change += fmt.Sprintf("; old values stay valid for %s", r.Grace)
	}
	return step.Observation{Change: change}, nil
}

// keyPathRE is what an alias must look like to name a Vault path.
var keyPathRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._@+=,-]{0,199}$`)

// VaultPath is where the new value of key k is stored: PREFIX/ALIAS, or
// PREFIX/OLD_TOKEN_HASH when the key has no alias, shares it with another
// key, or has one that is not a plain path segment.
func VaultPath(prefix string, k ll.KeyRow) string {
	if k.Alias != "" && !k.AliasShared && keyPathRE.MatchString(k.Alias) && !ll.IsHashedToken(k.Alias) {
		return prefix + "/" + k.Alias
	}
	return prefix + "/" + k.Token
}

// issued is one key's new value, in Vault.
type issued struct {
	row    ll.KeyRow
	path   string
	key    secret.Value
	reused bool // written to Vault by an earlier attempt of this run
	fresh  bool // the path had no version when listed
	// again: an earlier attempt of this run may have stored a key at the
	// path, so it is read first.
	again bool
}

// Apply implements step.Step.
//
// Crash safety: each new key is in Vault, with the old hash and the run id
// beside it, before the database names it. A crash before the commit leaves
// every row old; the next attempt finds the Vault record this run wrote for
// that old hash and reuses its key rather than making a second one. A crash
// after the commit leaves every row new, and Check finds nothing left.
func (r *Reissue) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	if err := requireStopped(ctx, env, r.Gateways, r.Unit); err != nil {
		return nil, err
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return nil, err
	}
	vc, err := vaultClient(ctx, env)
	if err != nil {
		return nil, err
	}
	start := r.clock()
	keys, err := ll.SelectKeys(ctx, pool, r.selection(env, start))
	if err != nil {
		return nil, step.Retryable(err)
	}
	if len(keys) == 0 {
		done, err := doneCount(ctx, pool, env)
		if err != nil {
			return nil, step.Retryable(err)
		}
		if done > 0 && unrecorded(env, ReissueNoteKind, false) {
			if err := r.noteAgain(ctx, env, pool); err != nil {
				return nil, err
			}
		}
		return step.Outputs{"count": strconv.Itoa(done), "with_grace": "0", "vault_prefix": r.VaultPrefix}, nil
	}
	tVault := time.Now()
	out, err := r.storeInVault(ctx, env, vc, keys)
	if err != nil {
		return nil, err
	}
	vaultElapsed := time.Since(tVault)
	reused := 0
	vals := make([]secret.Value, 0, len(out))
	batch := make([]ll.Reissue, len(out))
	for i, is := range out {
		raw := is.key.Reveal()
		batch[i] = ll.Reissue{OldToken: is.row.Token, NewToken: ll.HashToken(raw), KeyName: ll.KeyName(raw)}
		vals = append(vals, is.key)
		if is.reused {
			reused++
		}
	}
	env.Secrets.Add(vals...)
	if env.Log != nil && reused > 0 {
		env.Log.Info("reusing keys stored in vault by an earlier attempt of this run", "keys", reused)
	}

	tDB := time.Now()
	res, err := r.commit(ctx, env, pool, batch)
	if err != nil {
		return nil, dbError(pool, err)
	}
	dbElapsed := time.Since(tDB)
	done, err := doneCount(ctx, pool, env)
	if err != nil {
		return nil, err
	}
	withGrace := 0
	for _, is := range out {
		if is.row.GraceRows > 0 {
			withGrace++
		}
	}
	missing := map[string]bool{}
	for _, m := range res.Missing {
		missing[m] = true
	}
	if err := note(ctx, env, reissueNote(env, r, out, missing, res)); err != nil {
		return nil, err
	}
	if env.Log != nil {
		env.Log.Info("re-issued virtual keys", "count", res.Updated, "grace_rows_removed", res.GraceRemoved,
			"jwt_mappings", res.JWTUpdated, "missing", len(res.Missing), "reused", reused,
			"vault", vaultElapsed.Round(time.Millisecond).String(), "database", dbElapsed.Round(time.Millisecond).String(),
			"elapsed", time.Since(tVault).Round(time.Millisecond).String())
	}
	return step.Outputs{"count": strconv.Itoa(done), "with_grace": strconv.Itoa(withGrace), "vault_prefix": r.VaultPrefix}, nil
}

func (r *Reissue) commit(ctx context.Context, env *step.Env, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}, batch []ll.Reissue) (ll.ReissueResult, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return ll.ReissueResult{}, step.Retryable(fmt.Errorf("re-issue virtual keys: %w", err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	res, err := ll.ApplyReissue(ctx, tx, batch, ll.ReissueOptions{Now: r.clock(), By: RunMarker(env.RunID), Grace: r.Grace})
	if err != nil {
		return res, err
	}
	if r.beforeCommit != nil {
		if err := r.beforeCommit(ctx); err != nil {
			return res, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return res, fmt.Errorf("re-issue virtual keys: commit: %w", err)
	}
	return res, nil
}

// storeInVault makes (or finds again) each key's new value and stores it in
// Vault, several at once.
func (r *Reissue) storeInVault(ctx context.Context, env *step.Env, vc *vault.Client, keys []ll.KeyRow) ([]issued, error) {
	out := make([]issued, len(keys))
	seen := make(map[string]string, len(keys))
	for i, k := range keys {
		p := VaultPath(r.VaultPrefix, k)
		if other, dup := seen[p]; dup {
			return nil, fmt.Errorf("re-issue virtual keys: keys %s and %s would share vault path %s",
				TokenFingerprint(other), TokenFingerprint(k.Token), vc.Display(p))
		}
		seen[p] = k.Token
		out[i] = issued{row: k, path: p}
	}
	// Paths missing from the listing hold no record of any run, this one's
	// included: they are written (check-and-set: must not exist) without
	// reading them first, which halves the requests for new paths.
	names, err := vc.List(ctx, r.VaultPrefix)
	if err != nil {
		return nil, fmt.Errorf("re-issue virtual keys: %w", err)
	}
	exists := make(map[string]bool, len(names))
	for _, n := range names {
		exists[r.VaultPrefix+"/"+n] = true
	}
	// Only an earlier attempt of this run (journaled as an intent before it
	// stored anything, or an earlier Apply in this process) can have left
	// a record of this run: without one, a listed path is written over
	// without reading it first, which halves the requests for it.
	again := r.stored || acted(env)
	r.stored = true
	for i := range out {
		out[i].fresh = !exists[out[i].path]
		out[i].again = again
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu      sync.Mutex
		firstEr error
		written int
	)
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < r.VaultParallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				err := r.storeOne(ctx, env, vc, &out[i])
				mu.Lock()
				if err == nil {
					written++
					if r.afterVaultWrite != nil {
						err = r.afterVaultWrite(ctx, written)
					}
				}
				if err != nil && firstEr == nil {
					firstEr = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for i := range out {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstEr != nil {
		return nil, fmt.Errorf("re-issue virtual keys: store new keys in vault (%d of %d stored): %w", written, len(out), firstEr)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("re-issue virtual keys: %w", err)
	}
	return out, nil
}

// storeOne stores a new key at the key's Vault path. A path that was not
// listed is written with check-and-set "must not exist". A listed path is
// written over whatever version is current, unless an earlier attempt of
// this run may have stored a key there (or the mount requires
// check-and-set): then it is read first, a record this run wrote for the
// same old hash gives back its key, and otherwise the new key is written
// over the version read (check-and-set), so a concurrent writer is
// detected.
func (r *Reissue) storeOne(ctx context.Context, env *step.Env, vc *vault.Client, is *issued) error {
	if !is.fresh && !is.again {
		key, data, err := r.newRecord(env, is)
		if err != nil {
			return err
		}
		_, err = vc.Write(ctx, is.path, data, vault.AnyVersion)
		if err == nil {
			is.key = key
			return nil
		}
		if !errors.Is(err, vault.ErrCASRequired) {
			return err
		}
		is.again = true
	}
	cas := 0
	var (
		e   *vault.Entry
		err error
	)
	if !is.fresh {
		e, err = vc.Read(ctx, is.path, vaultPlainFields...)
	} else {
		err = vault.ErrNotFound
	}
	switch {
	case err == nil:
		k := e.Secret(VaultKeyField)
		if e.Plain["run_id"] == env.RunID && e.Plain["old_token_hash"] == is.row.Token &&
			!k.IsZero() && ll.HashToken(k.Reveal()) == e.Plain["token_hash"] {
			is.key, is.reused = k, true
			return nil
		}
		cas = e.Version
	case errors.Is(err, vault.ErrNotFound):
	case errors.Is(err, vault.ErrDeleted):
		md, err := vc.Metadata(ctx, is.path)
		if err != nil {
			return err
		}
		cas = md.CurrentVersion
	default:
		return err
	}
	key, data, err := r.newRecord(env, is)
	if err != nil {
		return err
	}
	if _, err := vc.Write(ctx, is.path, data, cas); err != nil {
		var ce *vault.CASError
		if errors.As(err, &ce) {
			return step.Retryable(err)
		}
		return err
	}
	is.key = key
	return nil
}

// acted reports whether an earlier attempt of this run journaled an intent
// of the step (it may have stored keys); true when the journal cannot say.
func acted(env *step.Env) bool {
	d, ok := env.Deps.(step.JournalDep)
	if !ok || d == nil {
		return true
	}
	return d.Acted(env.StepID, env.Host)
}

// newRecord makes a new key for is and its Vault record.
func (r *Reissue) newRecord(env *step.Env, is *issued) (secret.Value, vault.Data, error) {
	key, err := ll.NewVirtualKey()
	if err != nil {
		return secret.Value{}, vault.Data{}, err
	}
	raw := key.Reveal()
	data := vault.Data{
		Secrets: map[string]secret.Value{VaultKeyField: key},
		Plain: map[string]string{
			"kind":           vaultRecordKind,
			"token_hash":     ll.HashToken(raw),
			"key_name":       ll.KeyName(raw),
			"old_token_hash": is.row.Token,
			"run_id":         env.RunID,
			"key_alias":      is.row.Alias,
			"team_id":        is.row.TeamID,
			"user_id":        is.row.UserID,
			"rotated_at":     r.clock().UTC().Format(time.RFC3339),
		},
	}
	return key, data, nil
}

// ReissueNoteKind is the kind of the note that lists the re-issued keys.
const ReissueNoteKind = "reissued_virtual_keys"

// noteAgain records the keys an earlier attempt of this run re-issued
// without recording them (it committed, then crashed or could not write
// the note), from the rows that carry the run's marker. Grace rows and JWT
// mappings that attempt changed are no longer known; keys without an
// alias are named by their new value.
func (r *Reissue) noteAgain(ctx context.Context, env *step.Env, q ll.Querier) error {
	rows, err := q.Query(ctx, `SELECT token, coalesce(key_alias, ''), coalesce(team_id, ''), coalesce(user_id, '')
        FROM "LiteLLM_VerificationToken" WHERE "updated_by" = $1 ORDER BY token`, RunMarker(env.RunID))
	if err != nil {
		return fmt.Errorf("list re-issued keys: %w", err)
	}
	var out []issued
	for rows.Next() {
		var k ll.KeyRow
		if err := rows.Scan(&k.Token, &k.Alias, &k.TeamID, &k.UserID); err != nil {
			rows.Close()
			return fmt.Errorf("list re-issued keys: %w", err)
		}
		out = append(out, issued{row: k})
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list re-issued keys: %w", err)
	}
	res := ll.ReissueResult{Updated: len(out)}
	if r.Grace > 0 {
		res.GraceAdded = len(out) // for the text: old values stay valid
	}
	n := reissueNote(env, r, out, nil, res)
	for _, f := range []string{"grace_removed", "grace_added", "jwt_mappings"} {
		n.Fields[f] = "unknown"
	}
	n.Fields["recorded_later"] = "true"
	n.Text = "Recorded by a later attempt of this run: the attempt that re-issued these keys could not record them. " +
		"Grace rows and JWT mappings it changed were not counted; keys without an alias are named by their new value.\n" +
		strings.Replace(n.Text, "No old value stays valid (0 grace rows removed).", "No old value stays valid.", 1)
	return note(ctx, env, n)
}

// maxNoteAliases bounds the aliases listed one by one in the note.
const maxNoteAliases = 2000

// reissueNote lists, for the owners to notify, the teams and aliases whose
// keys were re-issued. It holds no key value: keys without an alias are
// named by their old value's fingerprint (the prefix of its hash).
func reissueNote(env *step.Env, r *Reissue, out []issued, missing map[string]bool, res ll.ReissueResult) journal.Note {
	byTeam := map[string][]string{}
	for _, is := range out {
		if missing[is.row.Token] {
			continue
		}
		team := is.row.TeamID
		if team == "" {
			team = "(no team)"
		}
		name := is.row.Alias
		if name == "" {
			name = "(no alias) " + TokenFingerprint(is.row.Token)
			if is.row.UserID != "" {
				name += " user " + is.row.UserID
			}
		}
		byTeam[team] = append(byTeam[team], name)
	}
	teams := make([]string, 0, len(byTeam))
	for t := range byTeam {
		teams = append(teams, t)
	}
	sort.Strings(teams)
	var tl []string
	var b strings.Builder
	fmt.Fprintf(&b, "Re-issued %d virtual keys; new values are in Vault under %s/ (by alias, or by old token hash).\n",
		res.Updated, r.VaultPrefix)
	if res.GraceAdded > 0 {
		fmt.Fprintf(&b, "Old values stay valid for %s.\n", r.Grace)
	} else {
		fmt.Fprintf(&b, "No old value stays valid (%d grace rows removed).\n", res.GraceRemoved)
	}
	if len(res.Missing) > 0 {
		fmt.Fprintf(&b, "%d selected keys were gone before the commit and were left alone.\n", len(res.Missing))
	}
	b.WriteString("\nOwners to notify, by team:\n")
	listed := 0
	for _, t := range teams {
		names := byTeam[t]
		sort.Strings(names)
		tl = append(tl, fmt.Sprintf("%s (%d)", t, len(names)))
		fmt.Fprintf(&b, "\n%s: %d keys\n", t, len(names))
		for _, n := range names {
			if listed == maxNoteAliases {
				break
			}
			fmt.Fprintf(&b, "  - %s\n", n)
			listed++
		}
	}
	if rest := res.Updated - listed; rest > 0 && listed == maxNoteAliases {
		fmt.Fprintf(&b, "\n%d more keys are not listed here; every re-issued key has updated_by = '%s' in \"LiteLLM_VerificationToken\".\n",
			rest, RunMarker(env.RunID))
	}
	return journal.Note{
		Kind: ReissueNoteKind,
		Fields: map[string]string{
			"count":         strconv.Itoa(res.Updated),
			"teams":         strings.Join(tl, ", "),
			"grace_removed": strconv.Itoa(res.GraceRemoved),
			"grace_added":   strconv.Itoa(res.GraceAdded),
			"jwt_mappings":  strconv.Itoa(res.JWTUpdated),
			"vault_prefix":  r.VaultPrefix,
			"marker":        RunMarker(env.RunID),
		},
		Text: b.String(),
	}
}
