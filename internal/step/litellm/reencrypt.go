package litellm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/runbook-dev/runbook/internal/journal"
	ll "github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/vault"
)

// SaltKeyVar is the environment variable that, when set, encrypts LiteLLM's
// stored values in place of the master key.
const SaltKeyVar = "LITELLM_SALT_KEY"

// ReencryptSpec is the `litellm.reencrypt_at_rest` kind.
var ReencryptSpec = &step.Spec{
	Name:    "litellm.reencrypt_at_rest",
	Summary: "re-encrypt LiteLLM's stored credentials from the old master key to the new one (only without a salt key)",
	Target:  step.Once,
	Params: append(append([]step.Param(nil), gatewayParams...),
		step.Param{Name: "env_file", Type: step.String, Default: "/etc/litellm/litellm.env", Doc: "the proxy's environment file on each gateway, searched for " + SaltKeyVar + " (its name only)", Validate: validAbsPath},
		step.Param{Name: "master_key_path", Type: step.String, Required: true, Doc: "Vault KV path of the master key"},
		step.Param{Name: "key_field", Type: step.String, Default: "key", Doc: "field of the Vault record holding the master key"},
		step.Param{Name: "old_version", Type: step.Int, Required: true, Doc: "Vault version of the old (leaked) master key, as ${{ steps.ID.outputs.previous_version }}"},
		step.Param{Name: "new_version", Type: step.Int, Required: true, Doc: "Vault version of the new master key, as ${{ steps.ID.outputs.version }}"},
		step.Param{Name: "format", Type: step.String, Default: "own", Allowed: []string{"own", "v3"}, Doc: "own: write each value back in its format; v3: write every value as v3:gcm:"},
		step.Param{Name: "allow_undecryptable", Type: step.Bool, Default: false, Doc: "leave values neither key opens as they are instead of failing"},
	),
	Outputs: []string{"salt_key", "rewritten", "undecryptable", "reason"},
	New:     newReencrypt,
}

// Reencrypt re-encrypts values at rest when the gateways run without a salt
// key.
type Reencrypt struct {
	Gateways           string
	EnvFile            string
	MasterKeyPath      string
	KeyField           string
	OldVersion         int
	NewVersion         int
	Format             ll.Format
	AllowUndecryptable bool
}

var _ step.Step = (*Reencrypt)(nil)

func newReencrypt(p step.Params) (step.Step, error) {
	r := &Reencrypt{
		Gateways:           p.String("gateways"),
		EnvFile:            p.String("env_file"),
		MasterKeyPath:      p.String("master_key_path"),
		KeyField:           p.String("key_field"),
		OldVersion:         p.Int("old_version"),
		NewVersion:         p.Int("new_version"),
		AllowUndecryptable: p.Bool("allow_undecryptable"),
	}
	if r.Gateways == "" {
		r.Gateways = "gateways"
	}
	if r.EnvFile == "" {
		r.EnvFile = "/etc/litellm/litellm.env"
	}
	if r.KeyField == "" {
		r.KeyField = "key"
	}
	if p.String("format") == "v3" {
		r.Format = ll.FormatV3GCM
	}
	if err := validVaultPrefix(r.MasterKeyPath); err != nil {
		return nil, &step.ParamError{Param: "master_key_path", Err: err}
	}
	if r.OldVersion <= 0 {
		return nil, &step.ParamError{Param: "old_version", Err: fmt.Errorf("want a vault version (1 or more), got %d", r.OldVersion)}
	}
	if r.NewVersion <= 0 {
		return nil, &step.ParamError{Param: "new_version", Err: fmt.Errorf("want a vault version (1 or more), got %d", r.NewVersion)}
	}
	if r.OldVersion == r.NewVersion {
		return nil, &step.ParamError{Param: "new_version", Err: fmt.Errorf("old and new versions are both %d", r.NewVersion)}
	}
	return r, nil
}

// saltKeyReason is why nothing is re-encrypted when the gateways have a salt
// key.
const saltKeyReason = "gateways run with " + SaltKeyVar + ": stored values are encrypted with the salt key, not the master key; " +
	"re-encrypting them under the new master key would make them unreadable, so nothing changes"

// saltKeySet reports whether every gateway's environment file sets the salt
// key. It greps for the variable's name and reads no value: grep -q prints
// nothing. Gateways that disagree are an error.
func saltKeySet(ctx context.Context, env *step.Env, group, file string) (bool, error) {
	gws, err := gateways(ctx, env, group)
	if err != nil {
		return false, err
	}
	var mu sync.Mutex
	var with, without []string
	err = onEach(ctx, gws, func(ctx context.Context, g gatewayHost) error {
		cmd := transport.Command{
			Args: []string{"grep", "-q", "-E", `^[[:space:]]*(export[[:space:]]+)?` + SaltKeyVar + `=`, file},
			Sudo: g.host.Sudo,
		}
		res, err := g.tr.Run(ctx, cmd)
		if err != nil {
			return fmt.Errorf("look for %s on %s: %w", SaltKeyVar, g.host.Name, err)
		}
		mu.Lock()
		defer mu.Unlock()
		switch res.ExitCode {
		case 0:
			with = append(with, g.host.Name)
		case 1:
			without = append(without, g.host.Name)
		default:
			return fmt.Errorf("look for %s on %s: %w", SaltKeyVar, g.host.Name, &transport.ExitError{
				Host: g.host.Name, Cmd: cmd.String(), Code: res.ExitCode, Stderr: env.Secrets.MaskString(string(res.Stderr)),
			})
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if len(with) > 0 && len(without) > 0 {
		sort.Strings(with)
		sort.Strings(without)
		return false, fmt.Errorf("%s is set in %s on %s but not on %s: gateways that disagree cannot share one database",
			SaltKeyVar, file, strings.Join(with, ", "), strings.Join(without, ", "))
	}
	return len(with) > 0, nil
}

// keys reads the old and new master keys from Vault.
func (r *Reencrypt) keys(ctx context.Context, env *step.Env) (ll.ReencryptKeys, error) {
	vc, err := vaultClient(ctx, env)
	if err != nil {
		return ll.ReencryptKeys{}, err
	}
	read := func(v int) (secret.Value, error) {
		e, err := vc.ReadVersion(ctx, r.MasterKeyPath, v, readPlain...)
		if err != nil {
			return secret.Value{}, err
		}
		k := e.Secret(r.KeyField)
		if k.IsZero() {
			return secret.Value{}, fmt.Errorf("vault %s (version %d) has no field %q", vc.Display(r.MasterKeyPath), v, r.KeyField)
		}
		env.Secrets.Add(k)
		return k, nil
	}
	old, err := read(r.OldVersion)
	if err != nil {
		return ll.ReencryptKeys{}, fmt.Errorf("read old master key: %w", err)
	}
	nk, err := read(r.NewVersion)
	if err != nil {
		return ll.ReencryptKeys{}, fmt.Errorf("read new master key: %w", err)
	}
	if old.Equal(nk) {
		return ll.ReencryptKeys{}, fmt.Errorf("vault %s versions %d and %d hold the same master key", vc.Display(r.MasterKeyPath), r.OldVersion, r.NewVersion)
	}
	return ll.ReencryptKeys{Old: old, New: nk, To: r.Format}, nil
}

// readPlain names the fields of a master key record that are read as plain
// text; every other field is a secret.
var readPlain = vault.PlainFields

func countsByTable(m map[string]int) string {
	names := make([]string, 0, len(m))
	for t := range m {
		names = append(names, t)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, t := range names {
		parts[i] = fmt.Sprintf("%s %d", t, m[t])
	}
	return strings.Join(parts, ", ")
}

// Check implements step.Step. With a salt key it is ok and says why; without
// one it counts the values still under the old master key. It only reads.
func (r *Reencrypt) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	salt, err := saltKeySet(ctx, env, r.Gateways, r.EnvFile)
	if err != nil {
		return step.Observation{}, err
	}
	if salt {
		if env.Log != nil {
			env.Log.Info(saltKeyReason)
		}
		return step.Observation{Outputs: step.Outputs{"salt_key": "set", "rewritten": "0", "undecryptable": "0", "reason": saltKeyReason}}, nil
	}
	keys, err := r.keys(ctx, env)
	if err != nil {
		return step.Observation{}, err
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return step.Observation{}, err
	}
	scan, err := ll.ScanAtRest(ctx, pool, keys)
	if err != nil {
		return step.Observation{}, step.Retryable(err)
	}
	bad := scan.Undecryptable()
	if len(bad) > 0 && !r.AllowUndecryptable {
		return step.Observation{}, fmt.Errorf("%w (set allow_undecryptable: true to leave them as they are)", &ll.UndecryptableError{Values: bad})
	}
	outputs := step.Outputs{"salt_key": "unset", "rewritten": "0", "undecryptable": strconv.Itoa(len(bad))}
	pending := scan.Pending()
	if pending == 0 {
		encrypted := len(scan.Values) - len(bad)
		if scan.Count(ll.StateNew) > 0 && (unrecorded(env, ReencryptNoteKind, true) || encrypted > 0 && unrecorded(env, "follow_up", true)) {
			return step.Observation{Change: fmt.Sprintf("record the re-encryption of the values at rest to master key version %d (an earlier attempt of this run rewrote them and could not record it)", r.NewVersion)}, nil
		}
		return step.Observation{Outputs: outputs}, nil
	}
	byTable := scan.ByTable(ll.StateOld)
	for t, n := range scan.ByTable(ll.StateNewFormat) {
		byTable[t] += n
	}
	change := fmt.Sprintf("re-encrypt %d values at rest from master key version %d to %d (%s)",
		pending, r.OldVersion, r.NewVersion, countsByTable(byTable))
	if r.Format == ll.FormatV3GCM {
		change += " as v3:gcm"
	}
	if len(bad) > 0 {
		change += fmt.Sprintf("; %d undecryptable values left as they are", len(bad))
	}
	return step.Observation{Change: change}, nil
}

// Apply implements step.Step: every value moves to the new key in one
// transaction, so the gateways see all of it or none.
func (r *Reencrypt) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	salt, err := saltKeySet(ctx, env, r.Gateways, r.EnvFile)
	if err != nil {
		return nil, err
	}
	if salt {
		return step.Outputs{"salt_key": "set", "rewritten": "0", "undecryptable": "0", "reason": saltKeyReason}, nil
	}
	keys, err := r.keys(ctx, env)
	if err != nil {
		return nil, err
	}
	pool, err := dbPool(ctx, env)
	if err != nil {
		return nil, err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, step.Retryable(dbError(pool, fmt.Errorf("re-encrypt values at rest: %w", err)))
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	scan, err := ll.ReencryptAtRest(ctx, tx, keys, r.AllowUndecryptable)
	if err != nil {
		var ue *ll.UndecryptableError
		if errors.As(err, &ue) {
			return nil, fmt.Errorf("%w (set allow_undecryptable: true to leave them as they are)", err)
		}
		return nil, dbError(pool, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, dbError(pool, fmt.Errorf("re-encrypt values at rest: commit: %w", err))
	}
	bad := scan.Undecryptable()
	encrypted := len(scan.Values) - len(bad)
	fields := map[string]string{
		"rewritten":     strconv.Itoa(scan.Rewritten),
		"rows":          strconv.Itoa(scan.Rows),
		"undecryptable": strconv.Itoa(len(bad)),
		"old_version":   strconv.Itoa(r.OldVersion),
		"new_version":   strconv.Itoa(r.NewVersion),
		"tables":        strings.Join(ll.AtRestTables(), ", "),
	}
	var text strings.Builder
	// later: an earlier attempt of this run rewrote the values and could
	// not record it (it crashed, or the journal could not be written):
	// record what is known now, and only what is not in the journal.
	jd, _ := env.Deps.(step.JournalDep)
	later := scan.Rewritten == 0 && jd != nil && jd.Acted(env.StepID, env.Host)
	if later {
		fields["rewritten"], fields["rows"], fields["recorded_later"] = "unknown", "unknown", "true"
		fmt.Fprintf(&text, "Recorded by a later attempt of this run: an earlier attempt re-encrypted the stored values from master key version %d to %d and could not record it; %d values are under version %d now (%s).\n",
			r.OldVersion, r.NewVersion, scan.Count(ll.StateNew), r.NewVersion, countsByTable(scan.ByTable(ll.StateNew)))
	} else {
		fmt.Fprintf(&text, "Re-encrypted %d stored values in %d rows from master key version %d to %d.\n", scan.Rewritten, scan.Rows, r.OldVersion, r.NewVersion)
	}
	for _, v := range bad {
		fmt.Fprintf(&text, "Left as it was (opens under neither key): %s\n", v)
	}
	if !later || !jd.Noted(env.StepID, ReencryptNoteKind) {
		if err := note(ctx, env, journal.Note{Kind: ReencryptNoteKind, Fields: fields, Text: text.String()}); err != nil {
			return nil, err
		}
	}
	if encrypted > 0 && (!later || !jd.Noted(env.StepID, "follow_up")) {
		fu := fmt.Sprintf("The gateways run without %s, so LiteLLM encrypted its %d stored values with the master key (%s). "+
			"Upstream provider keys are among them, and anyone holding the leaked master key and a copy of the database could "+
			"read them: rotate those upstream keys at their providers, and consider setting %s.",
			SaltKeyVar, encrypted, countsByTable(encryptedByTable(scan)), SaltKeyVar)
		if err := note(ctx, env, journal.Note{Kind: "follow_up", Text: fu}); err != nil {
			return nil, err
		}
	}
	return step.Outputs{"salt_key": "unset", "rewritten": strconv.Itoa(scan.Rewritten), "undecryptable": strconv.Itoa(len(bad))}, nil
}

// ReencryptNoteKind is the kind of the note that records a re-encryption.
const ReencryptNoteKind = "reencrypted_at_rest"

func encryptedByTable(s *ll.AtRestScan) map[string]int {
	out := map[string]int{}
	for _, v := range s.Values {
		if v.State != ll.StateUndecryptable {
			out[v.Table]++
		}
	}
	return out
}
