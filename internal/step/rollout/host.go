package rollout

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/step/service"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/transport/local"
)

// hostObs is what the rollout saw of one host, and what it would do there.
type hostObs struct {
	t *target
	// file is the environment file as read; before is the master key in it.
	file    *litellm.EnvFile
	before  secret.Value
	salt    secret.Value // empty when unset
	unit    service.State
	accepts bool // the proxy serves and accepts the key rolled out
	// want is the file to write; write says it differs from file.
	want    *litellm.EnvFile
	write   bool
	pin     bool // write sets LITELLM_SALT_KEY
	restart bool
	lift    *firewall.Lift
	lifting bool // firewall rules to lift
	// refusal says why the rollout must not touch this host; err is a
	// failure to observe it.
	refusal string
	err     error
}

// needed reports whether the host needs any change.
func (o *hostObs) needed() bool { return o.write || o.restart || o.lifting }

func (o *hostObs) change(k *keys) string {
	var parts []string
	switch {
	case o.write && !o.before.Equal(k.targetKey):
		parts = append(parts, fmt.Sprintf("%s → %s", k.shortName(o.before), k.shortName(k.targetKey)))
	case o.write && o.pin:
		parts = append(parts, "pin "+litellm.EnvSaltKey)
	case o.write:
		parts = append(parts, "rewrite the environment file")
	case o.restart && !o.unit.Running():
		parts = append(parts, "start ("+o.unit.Active+")")
	case o.restart:
		parts = append(parts, "restart (the proxy does not accept the key yet)")
	}
	if o.write && o.pin && !o.before.Equal(k.targetKey) {
		parts = append(parts, "pin "+litellm.EnvSaltKey)
	}
	if o.write {
		parts = append(parts, "restart")
	}
	if o.lifting {
		parts = append(parts, "lift the firewall rules")
	}
	return strings.Join(parts, ", ")
}

func (k *keys) shortName(v secret.Value) string {
	if n := k.version(v); n != "" {
		return "version " + n
	}
	if v.IsZero() {
		return "no key"
	}
	return v.Fingerprint()
}

// hostEnv is env as a per-host step on t would see it.
func hostEnv(env *step.Env, t *target) *step.Env {
	e := *env
	e.Host, e.Vars, e.Transport = t.name, t.vars, t.tr
	if env.Log != nil {
		e.Log = env.Log.With("host", t.name)
	}
	return &e
}

func (r *Rollout) observeAll(ctx context.Context, env *step.Env, k *keys, ts []*target) []*hostObs {
	out := make([]*hostObs, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Add(1)
		go func(i int, t *target) {
			defer wg.Done()
			out[i] = r.observe(ctx, env, k, t)
		}(i, t)
	}
	wg.Wait()
	return out
}

// observe reads t's environment file and unit state and asks the proxy
// whether it accepts the key rolled out. It changes nothing.
func (r *Rollout) observe(ctx context.Context, env *step.Env, k *keys, t *target) *hostObs {
	o := &hostObs{t: t}
	file, err := r.readEnvFile(ctx, env, t)
	if err != nil {
		o.err = err
		return o
	}
	o.file = file
	o.before, _ = file.Lookup(r.KeyVar)
	o.salt, _ = file.Lookup(litellm.EnvSaltKey)
	if db, ok := file.Lookup(litellm.EnvDatabaseURL); ok {
		r.remember(env, db)
	}
	r.remember(env, o.before, o.salt)

	if o.unit, err = r.manager(env).State(ctx, t.tr, t.unit); err != nil {
		o.err = fmt.Errorf("%s: %w", t.name, err)
		return o
	}
	if o.unit.Running() {
		h := r.probe(ctx, env, t, []secret.Value{k.targetKey})
		o.accepts = h.Serving() && h.Models[0] == http.StatusOK
	}

	o.want = file.Clone()
	if err := o.want.Set(r.KeyVar, k.targetKey); err != nil {
		o.err = fmt.Errorf("%s: %w", t.name, err)
		return o
	}
	changes := !o.before.Equal(k.targetKey)
	switch {
	case r.Salt == SaltPin && o.salt.IsZero():
		if changes {
			o.refusal = fmt.Sprintf("%s: cannot pin %s to %s: the host runs %s, which encrypts its stored credentials; roll that key out first, or pin the salt key to the key the host runs",
				t.name, litellm.EnvSaltKey, k.describe(k.targetKey), k.describe(o.before))
			return o
		}
		if err := o.want.Set(litellm.EnvSaltKey, k.targetKey); err != nil {
			o.err = fmt.Errorf("%s: %w", t.name, err)
			return o
		}
		o.pin = true
	case r.Salt == SaltRequire && o.salt.IsZero() && changes:
		o.refusal = fmt.Sprintf("%s: %s is not set, so the master key also encrypts the stored credentials: instances on %s and on %s could not read each other's rows. Pin the salt key first (salt: pin), or after a compromise re-encrypt the rows and use salt: ignore",
			t.name, litellm.EnvSaltKey, k.shortName(o.before), k.shortName(k.targetKey))
		return o
	}
	// Compared by fingerprint: the observation never holds more of a key
	// than its hash.
	o.write = o.want.Fingerprint() != file.Fingerprint()
	o.restart = o.write || o.unit.Active != "active" || !o.accepts

	if r.lifts() {
		p := step.Params{}
		if r.LiftRunID != "" {
			p["run_id"] = r.LiftRunID
		}
		if r.LiftTag != "" {
			p["tag"] = r.LiftTag
		}
		st, err := firewall.LiftSpec.New(p)
		if err != nil {
			o.err = fmt.Errorf("%s: firewall lift: %w", t.name, err)
			return o
		}
		l, ok := st.(*firewall.Lift)
		if !ok {
			o.err = fmt.Errorf("%s: firewall lift: unexpected step type %T", t.name, st)
			return o
		}
		obs, err := l.Check(ctx, hostEnv(env, t))
		if err != nil {
			o.err = fmt.Errorf("%s: firewall lift: %w", t.name, err)
			return o
		}
		o.lift, o.lifting = l, !obs.OK()
	}
	return o
}

func (r *Rollout) readEnvFile(ctx context.Context, env *step.Env, t *target) (*litellm.EnvFile, error) {
	cmd := transport.Command{Args: []string{"cat", "--", t.envFile}, Sudo: true}
	res, err := t.tr.Run(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", t.name, t.envFile, err)
	}
	if res.ExitCode != 0 {
		return nil, &transport.ExitError{Host: t.name, Cmd: cmd.String(), Code: res.ExitCode, Stderr: env.Secrets.MaskString(string(res.Stderr))}
	}
	f, err := litellm.ParseEnvFile(res.Stdout)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", t.name, t.envFile, err)
	}
	return f, nil
}

// writeScript replaces a file atomically with its standard input: a
// temporary file in the same directory, created 0600 by mktemp, given the
// owner of the file it replaces, fsynced, renamed over it; then the
// directory is fsynced. With "keep", the replaced text is first kept beside
// it as FILE.prev, written the same way. Paths arrive as arguments, never
// pasted into the script; the content arrives on standard input, never in
// an argument. The text's length arrives as an argument too: standard
// input ends early, without an error, when the runner's connection is lost
// (sshd closes the session once the dead connection is reset, maybe long
// after the runner gave up), and a cut text must replace nothing. It needs
// coreutils (mktemp, stat, chown, chmod, sync with file arguments, mv, wc):
// sync FILE fsyncs that file since coreutils 8.24.
const writeScript = `set -eu
f=$1
d=$(dirname -- "$f")
b=$(basename -- "$f")
if [ ! -f "$f" ]; then echo "$f is not a regular file" >&2; exit 3; fi
own=$(stat -c %u:%g -- "$f")
umask 077
new=$(mktemp -- "$d/.$b.XXXXXXXX")
prev=
trap 'rm -f -- ${new:+"$new"} ${prev:+"$prev"}' EXIT
cat >"$new"
n=$(($(wc -c <"$new")))
if [ "$n" -ne "$3" ]; then echo "received $n of $3 bytes (the connection was lost?); $f is unchanged" >&2; exit 4; fi
chown -- "$own" "$new"
chmod 0600 -- "$new"
sync -- "$new"
if [ "$2" = keep ]; then
	prev=$(mktemp -- "$d/.$b.prev.XXXXXXXX")
	cat -- "$f" >"$prev"
	chown -- "$own" "$prev"
	chmod 0600 -- "$prev"
	sync -- "$prev"
	mv -f -- "$prev" "$f.prev"
	prev=
fi
mv -f -- "$new" "$f"
new=
sync -- "$d"
`

// write puts content in t's environment file (see writeScript).
func (r *Rollout) write(ctx context.Context, env *step.Env, t *target, content secret.Value, keep bool) error {
	mode := "replace"
	if keep {
		mode = "keep"
	}
	size := strconv.Itoa(len(content.Reveal()))
	cmd := transport.Command{Args: []string{"sh", "-c", writeScript, "rollout-write", t.envFile, mode, size}, Stdin: &content, Sudo: true}
	res, err := t.tr.Run(ctx, cmd)
	if err != nil {
		return fmt.Errorf("write %s on %s: %w", t.envFile, t.name, err)
	}
	if res.ExitCode != 0 {
		return &transport.ExitError{Host: t.name, Cmd: "write " + t.envFile, Code: res.ExitCode, Stderr: env.Secrets.MaskString(string(res.Stderr))}
	}
	return nil
}

// probeLimit bounds one round of probes through SSH.
const probeLimit = 10 * time.Second

// probe asks t's proxy for its health and for /v1/models with each key.
func (r *Rollout) probe(ctx context.Context, env *step.Env, t *target, keys []secret.Value) litellm.Health {
	if r.Probe != ProbeSSH {
		return litellm.ProbeHTTP(ctx, r.client(), t.base, keys)
	}
	h := litellm.Health{Models: make([]int, len(keys))}
	in, err := litellm.ProbeStdin(keys)
	if err != nil {
		h.Err = err.Error()
		return h
	}
	res, err := t.tr.Run(ctx, transport.Command{Args: litellm.ProbeArgs(t.port, probeLimit), Stdin: &in})
	if err != nil {
		h.Err = env.Secrets.MaskString(err.Error())
		return h
	}
	switch res.ExitCode {
	case 0:
	case 124:
		h.Err = "the probes through SSH hit their time limit"
	case 126, 127:
		h.Err = "bash or timeout is missing on the gateway: " + strings.TrimSpace(env.Secrets.MaskString(string(res.Stderr)))
		return h
	default:
		h.Err = fmt.Sprintf("the probe script exited %d: %s", res.ExitCode, strings.TrimSpace(env.Secrets.MaskString(string(res.Stderr))))
	}
	got, perr := litellm.ParseProbeOutput(res.Stdout, len(keys))
	if perr != nil {
		h.Err = perr.Error()
		return h
	}
	if got.Err == "" {
		got.Err = h.Err
	}
	return got
}

// gate is what a host must show: the proxy serves with its database, the
// key it should run is accepted, the key it should no longer run is
// refused, and the sample virtual key is accepted.
type gate struct {
	want, refuse, sample secret.Value
}

// GateError is a host that did not pass its gate within the deadline.
type GateError struct {
	Host     string
	Deadline time.Duration
	Last     string // the last probes, described (no key)
}

func (e *GateError) Error() string {
	return fmt.Sprintf("%s did not pass its health gate within %s: %s", e.Host, e.Deadline, e.Last)
}

// ErrGate is wrapped by every GateError.
var ErrGate = errors.New("health gate not passed")

func (e *GateError) Unwrap() error { return ErrGate }

// passGate probes t until it passes g or the deadline passes.
func (r *Rollout) passGate(ctx context.Context, env *step.Env, t *target, g gate) error {
	keys := []secret.Value{g.want}
	names := []string{"the key it should run"}
	want := []int{http.StatusOK}
	if !g.refuse.IsZero() && !g.refuse.Equal(g.want) {
		keys, names, want = append(keys, g.refuse), append(names, "the key it replaced"), append(want, http.StatusUnauthorized)
	}
	if !g.sample.IsZero() {
		keys, names, want = append(keys, g.sample), append(names, "the sample virtual key"), append(want, http.StatusOK)
	}
	dctx, cancel := context.WithTimeout(ctx, r.Deadline)
	defer cancel()
	last := "no probe answered"
	for {
		h := r.probe(dctx, env, t, keys)
		ok, desc := judge(h, names, want)
		if ok {
			return nil
		}
		last = desc
		select {
		case <-dctx.Done():
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("%s: health gate: %w (last: %s)", t.name, err, last)
			}
			return &GateError{Host: t.name, Deadline: r.Deadline, Last: last}
		case <-time.After(r.interval()):
		}
	}
}

func judge(h litellm.Health, names []string, want []int) (bool, string) {
	ok := h.Serving()
	var b strings.Builder
	fmt.Fprintf(&b, "liveliness %s, readiness %s", status(h.Liveliness), status(h.Readiness))
	if h.Readiness == http.StatusOK {
		db := h.DB
		if db == "" {
			db = "not reported"
		}
		fmt.Fprintf(&b, " with db %s", db)
	}
	for i, n := range names {
		got := 0
		if i < len(h.Models) {
			got = h.Models[i]
		}
		fmt.Fprintf(&b, ", %s: /v1/models %s", n, status(got))
		if got != want[i] {
			ok = false
			fmt.Fprintf(&b, " (want %d)", want[i])
		}
	}
	if h.Err != "" {
		b.WriteString("; " + h.Err)
	}
	return ok, b.String()
}

func status(c int) string {
	if c == 0 {
		return "no answer"
	}
	return fmt.Sprint(c)
}

// runnerCommand runs a drain or undrain command on the runner, with
// {host} and {address} replaced.
func (r *Rollout) runnerCommand(ctx context.Context, env *step.Env, what string, argv []string, t *target) error {
	if len(argv) == 0 {
		return nil
	}
	rep := strings.NewReplacer("{host}", t.name, "{address}", t.host.Address)
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = rep.Replace(a)
	}
	cmd := transport.Command{Args: args}
	res, err := local.New("runner").Run(ctx, cmd)
	if err != nil {
		return fmt.Errorf("%s %s: %s: %w", what, t.name, cmd.String(), err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("%s %s: %w", what, t.name, &transport.ExitError{Host: "runner", Cmd: cmd.String(), Code: res.ExitCode, Stderr: env.Secrets.MaskString(string(res.Stderr))})
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
