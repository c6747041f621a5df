// Package rollout holds litellm.rollout: a master key from Vault rolled out
// to LiteLLM gateways in batches, each host behind a health gate, halting
// and rolling back at the first host that fails it.
//
// The kind runs once and walks the gateways itself rather than letting the
// engine fan out per host. Its promises span hosts: at most max_unavailable
// out of service at once, never fewer than min_healthy serving, nothing
// started after a failure, and one account of which host runs which key.
// The engine's fan-out starts the next host as soon as a slot frees, knows
// nothing of the other hosts' health, and lets hosts already in flight run
// on after one fails; a once step that owns the walk can keep the promises.
//
// Per host, in batches of max_unavailable and only while min_healthy other
// hosts serve: drain (a command on the runner), write the environment
// file (its text on standard input, a 0600 temporary file with the old
// file's owner in the same directory, fsync, rename, the old text kept as
// FILE.prev), restart the unit through service.Systemd, and probe until
// the progress deadline: /health/liveliness 200, /health/readiness with
// db "connected", /v1/models 200 with the new key and 401 with the one it
// replaced, 200 with a sample virtual key. Then lift the host's
// containment rules (firewall.Lift), undrain. A host that fails gets its
// previous file back, is restarted and must pass the same gate on its old
// key; the batch finishes and nothing further starts. Every host's key
// (Vault version and fingerprint) goes into a key_version note.
//
// The scheduled rotation, with no request failing:
//
//	steps:
//	- id: pin-salt              # LITELLM_SALT_KEY := the key in use, where unset
//	  kind: litellm.rollout
//	  with: {salt: pin}
//	- id: newkey
//	  kind: vault.master_key    # a pending version
//	- id: rollout
//	  kind: litellm.rollout
//	  with:
//	    version: ${{ steps.newkey.outputs.version }}
//	    drain: [lb-drain, "{host}"]
//	    undrain: [lb-undrain, "{host}"]
//	    settle: 2s
//	- id: promote
//	  kind: vault.master_key
//	  with: {mode: promote}
//
// After a compromise, every gateway is stopped and its port dropped; the
// rows are re-encrypted under the new key (litellm.reencrypt_at_rest), so the
// rollout ignores the salt key, starts each gateway, probes it through SSH
// and lifts its containment only once it passes:
//
//	steps:
//	- id: rollout
//	  kind: litellm.rollout
//	  with:
//	    version: ${{ steps.newkey.outputs.version }}
//	    salt: ignore
//	    probe: ssh
//	    min_healthy: 0
//	    lift_tag: drop-port     # the firewall.drop step of the containment
//
// The SSH probe connects to 127.0.0.1 on the gateway, which firewall.drop
// leaves open.
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

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/step/service"
	stepvault "github.com/runbook-dev/runbook/internal/step/vault"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/vault"
)

// Modes.
const (
	ModeRollout  = "rollout"
	ModeRollback = "rollback"
)

// Salt policies.
const (
	SaltRequire = "require"
	SaltPin     = "pin"
	SaltIgnore  = "ignore"
)

// Probe modes.
const (
	ProbeHTTP = "http"
	ProbeSSH  = "ssh"
)

// Defaults of the per-host settings that host variables may override.
const (
	DefaultEnvFile = "/etc/litellm/litellm.env"
	DefaultUnit    = "litellm"
	DefaultPort    = 4000
)

// Spec is the `litellm.rollout` kind.
var Spec = &step.Spec{
	Name:    "litellm.rollout",
	Summary: "roll a master key from Vault out to the gateways in batches behind a health gate; halt and roll back at the first failure",
	Target:  step.Once,
	Params: []step.Param{
		{Name: "hosts", Type: step.List, Default: []string{"gateways"},
			Doc: "inventory groups or hosts to roll out to, in inventory order"},
		{Name: "path", Type: step.String, Default: "litellm/master", Validate: stepvault.ValidatePath,
			Doc: "KV v2 path of the master key (as vault.master_key writes it)"},
		{Name: "field", Type: step.String, Default: "key", Doc: "data field holding the key"},
		{Name: "version", Type: step.Int, Default: 0,
			Doc: "rollout: the version to roll out (${{ steps.ID.outputs.version }} of vault.master_key); 0 means the current one. rollback: the version rolled out before, whose previous version comes back"},
		{Name: "mode", Type: step.String, Default: ModeRollout, Allowed: []string{ModeRollout, ModeRollback},
			Doc: "rollout: put version on every host; rollback: put back the version that was current when version was written"},
		{Name: "salt", Type: step.String, Default: SaltRequire, Allowed: []string{SaltRequire, SaltPin, SaltIgnore},
			Doc: "require: refuse to change the master key of a host without LITELLM_SALT_KEY (old- and new-key instances could not share encrypted rows); pin: set LITELLM_SALT_KEY to the key rolled out where it is unset (a host must already run that key); ignore: change the key anyway (after a compromise, once the rows are re-encrypted)"},
		{Name: "key_var", Type: step.String, Default: litellm.EnvMasterKey, Validate: validEnvName,
			Doc: "the environment variable that carries the master key"},
		{Name: "env_file", Type: step.String, Validate: validPath,
			Doc: "the proxy's environment file (default: host variable litellm_env_file, else " + DefaultEnvFile + ")"},
		{Name: "unit", Type: step.String, Validate: validUnit,
			Doc: "the proxy's systemd unit (default: host variable litellm_unit, else " + DefaultUnit + ")"},
		{Name: "probe", Type: step.String, Default: ProbeHTTP, Allowed: []string{ProbeHTTP, ProbeSSH},
			Doc: "http: probe from the runner (host variable litellm_url, else http://ADDRESS:litellm_port; the probes carry keys, so use an https URL outside a private network); ssh: probe 127.0.0.1 on the gateway through the SSH connection with bash's /dev/tcp, for a port the runner cannot reach"},
		{Name: "deadline", Type: step.Duration, Default: 60 * time.Second,
			Doc: "progress deadline: how long a host may take to pass its gate (and the others to reach min_healthy)"},
		{Name: "max_unavailable", Type: step.Int, Default: 1, Doc: "hosts out of service at once"},
		{Name: "min_healthy", Type: step.Int,
			Doc: "hosts that must be serving before a batch is taken out (default: the hosts less max_unavailable; 0 for a fleet that is stopped)"},
		{Name: "drain", Type: step.List,
			Doc: "command run on the runner to take a host out of the load balancer before it restarts; {host} and {address} are replaced"},
		{Name: "undrain", Type: step.List, Doc: "command run on the runner to put a host back once it passed its gate"},
		{Name: "settle", Type: step.Duration, Default: time.Duration(0),
			Doc: "wait after drain and after undrain, for the load balancer to see the change"},
		{Name: "sample_key_path", Type: step.String, Validate: validOptionalPath,
			Doc: "KV v2 path of a virtual key the gate must see accepted (a re-issued key, say)"},
		{Name: "sample_key_field", Type: step.String, Default: "key", Doc: "data field of the sample key"},
		{Name: "lift_run_id", Type: step.String,
			Doc: "after a host passes its gate, lift the firewall rules of this run there (as firewall.lift does); hosts that fail stay contained"},
		{Name: "lift_tag", Type: step.String, Doc: "with lift_run_id, or alone: lift only the rules with this tag"},
	},
	Outputs: []string{"version", "fingerprint", "previous_version", "previous_fingerprint", "changed", "hosts"},
	New:     newRollout,
}

// Rollout is one configured litellm.rollout.
type Rollout struct {
	Hosts          []string
	Path, Field    string
	Version        int
	Mode           string
	Salt           string
	KeyVar         string
	EnvFile, Unit  string
	Probe          string
	Deadline       time.Duration
	MaxUnavailable int
	// MinHealthy < 0 means the hosts less MaxUnavailable.
	MinHealthy        int
	Drain, Undrain    []string
	Settle            time.Duration
	SampleKeyPath     string
	SampleKeyField    string
	LiftRunID         string
	LiftTag           string
	ProbeInterval     time.Duration
	Manager           service.Manager // nil: systemd
	HTTPClient        *http.Client    // nil: a client with short timeouts
	testHookAfterGate func(host string)
}

var _ step.Step = (*Rollout)(nil)

func validEnvName(v any) error {
	s, _ := v.(string)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return fmt.Errorf("%q is not an environment variable name", s)
		}
	}
	if s == "" {
		return errors.New("empty environment variable name")
	}
	return nil
}

func validPath(v any) error {
	s, _ := v.(string)
	if s == "" {
		return nil
	}
	if !strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/") || strings.ContainsAny(s, "\x00\n") {
		return fmt.Errorf("%q is not an absolute file path", s)
	}
	return nil
}

func validUnit(v any) error {
	s, _ := v.(string)
	if s == "" {
		return nil
	}
	return service.ValidateUnit(s)
}

func validOptionalPath(v any) error {
	if s, _ := v.(string); s == "" {
		return nil
	}
	return stepvault.ValidatePath(v)
}

func newRollout(p step.Params) (step.Step, error) {
	r := &Rollout{
		Hosts: p.Strings("hosts"), Path: p.String("path"), Field: p.String("field"),
		Version: p.Int("version"), Mode: p.String("mode"), Salt: p.String("salt"), KeyVar: p.String("key_var"),
		EnvFile: p.String("env_file"), Unit: p.String("unit"), Probe: p.String("probe"),
		Deadline: p.Duration("deadline"), MaxUnavailable: p.Int("max_unavailable"), MinHealthy: -1,
		Drain: p.Strings("drain"), Undrain: p.Strings("undrain"), Settle: p.Duration("settle"),
		SampleKeyPath: p.String("sample_key_path"), SampleKeyField: p.String("sample_key_field"),
		LiftRunID: p.String("lift_run_id"), LiftTag: p.String("lift_tag"),
	}
	if p.Has("min_healthy") {
		r.MinHealthy = p.Int("min_healthy")
		if r.MinHealthy < 0 {
			return nil, &step.ParamError{Param: "min_healthy", Err: errors.New("must not be negative")}
		}
	}
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	if len(r.Hosts) == 0 {
		r.Hosts = []string{"gateways"}
	}
	def(&r.Path, "litellm/master")
	def(&r.Field, "key")
	def(&r.Mode, ModeRollout)
	def(&r.Salt, SaltRequire)
	def(&r.KeyVar, litellm.EnvMasterKey)
	def(&r.Probe, ProbeHTTP)
	def(&r.SampleKeyField, "key")
	if r.Deadline <= 0 {
		r.Deadline = 60 * time.Second
	}
	if !p.Has("max_unavailable") {
		r.MaxUnavailable = 1
	}
	checks := []struct {
		name string
		err  error
	}{
		{"path", stepvault.ValidatePath(r.Path)},
		{"key_var", validEnvName(r.KeyVar)},
		{"env_file", validPath(r.EnvFile)},
		{"unit", validUnit(r.Unit)},
		{"sample_key_path", validOptionalPath(r.SampleKeyPath)},
	}
	for _, c := range checks {
		if c.err != nil {
			return nil, &step.ParamError{Param: c.name, Err: c.err}
		}
	}
	if r.Version < 0 {
		return nil, &step.ParamError{Param: "version", Err: errors.New("must not be negative")}
	}
	if r.MaxUnavailable < 1 {
		return nil, &step.ParamError{Param: "max_unavailable", Err: errors.New("must be at least 1")}
	}
	if r.KeyVar == litellm.EnvSaltKey {
		return nil, &step.ParamError{Param: "key_var", Err: errors.New("the salt key is not the master key")}
	}
	if r.Mode == ModeRollback && r.Salt == SaltPin {
		return nil, &step.ParamError{Param: "salt", Err: errors.New("a rollback does not pin the salt key")}
	}
	for _, f := range []struct {
		name string
		args []string
	}{{"drain", r.Drain}, {"undrain", r.Undrain}} {
		if len(f.args) > 0 && f.args[0] == "" {
			return nil, &step.ParamError{Param: f.name, Err: errors.New("the command's first element names the program")}
		}
	}
	if (len(r.Drain) == 0) != (len(r.Undrain) == 0) {
		return nil, &step.ParamError{Param: "undrain", Err: errors.New("give drain and undrain together: a drained host must come back")}
	}
	if r.LiftRunID != "" {
		if err := firewall.ValidateTag("run id", r.LiftRunID); err != nil {
			return nil, &step.ParamError{Param: "lift_run_id", Err: err}
		}
	}
	if r.LiftTag != "" {
		if err := firewall.ValidateTag("tag", r.LiftTag); err != nil {
			return nil, &step.ParamError{Param: "lift_tag", Err: err}
		}
	}
	return r, nil
}

func (r *Rollout) lifts() bool { return r.LiftRunID != "" || r.LiftTag != "" }

func (r *Rollout) manager(env *step.Env) service.Manager {
	if r.Manager != nil {
		return r.Manager
	}
	return service.Systemd{Mask: env.Secrets}
}

func (r *Rollout) client() *http.Client {
	if r.HTTPClient != nil {
		return r.HTTPClient
	}
	return &http.Client{
		Timeout: 5 * time.Second,
		// A probe never follows a redirect: the answer of this host counts.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
}

func (r *Rollout) interval() time.Duration {
	if r.ProbeInterval > 0 {
		return r.ProbeInterval
	}
	return 250 * time.Millisecond
}

// keys is what Vault holds for the rollout: the key to put on the hosts,
// the one it replaces, and the versions that fingerprints name.
type keys struct {
	target    *vault.Entry
	targetKey secret.Value
	previous  *vault.Entry // nil when unknown
	sample    secret.Value
	byPrint   map[string]int // fingerprint -> version
	display   string
	fromVer   int // rollback: the version being undone
}

// scanVersions bounds how many versions back fingerprints are looked up.
const scanVersions = 20

func (r *Rollout) readKeys(ctx context.Context, env *step.Env) (*keys, error) {
	c, err := stepvault.Client(ctx, env)
	if err != nil {
		return nil, err
	}
	k := &keys{byPrint: map[string]int{}, display: c.Display(r.Path)}
	read := func(n int) (*vault.Entry, error) {
		e, err := c.ReadVersion(ctx, r.Path, n, vault.PlainFields...)
		if err != nil {
			return nil, err
		}
		r.remember(env, e.Secret(r.Field))
		return e, nil
	}
	switch {
	case r.Mode == ModeRollback && r.Version > 0:
		from, err := read(r.Version)
		if err != nil {
			return nil, err
		}
		prev, _ := strconv.Atoi(from.Plain[vault.FieldPreviousVersion])
		if prev <= 0 {
			return nil, fmt.Errorf("%s version %d records no previous version to roll back to", k.display, r.Version)
		}
		k.fromVer = r.Version
		if k.target, err = read(prev); err != nil {
			return nil, err
		}
	case r.Version > 0:
		if k.target, err = read(r.Version); err != nil {
			return nil, err
		}
	default:
		if k.target, err = c.ReadCurrent(ctx, r.Path); err != nil {
			return nil, err
		}
		r.remember(env, k.target.Secret(r.Field))
	}
	k.targetKey = k.target.Secret(r.Field)
	if k.targetKey.IsZero() {
		return nil, fmt.Errorf("%s version %d has no field %q", k.display, k.target.Version, r.Field)
	}
	if strings.ContainsAny(k.targetKey.Reveal(), "\r\n\x00") {
		return nil, fmt.Errorf("%s version %d: the key holds a line break", k.display, k.target.Version)
	}
	if n, _ := strconv.Atoi(k.target.Plain[vault.FieldPreviousVersion]); n > 0 {
		if e, err := read(n); err == nil {
			k.previous = e
		}
	}
	k.byPrint[k.targetKey.Fingerprint()] = k.target.Version
	if k.previous != nil {
		k.byPrint[k.previous.Secret(r.Field).Fingerprint()] = k.previous.Version
	}
	md, err := c.Metadata(ctx, r.Path)
	if err != nil {
		return nil, err
	}
	for i, v := 0, md.CurrentVersion; i < scanVersions && v >= md.OldestVersion && v > 0; i, v = i+1, v-1 {
		if info, ok := md.Version(v); ok && info.Deleted() {
			continue
		}
		e, err := read(v)
		if errors.Is(err, vault.ErrDeleted) || errors.Is(err, vault.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if fp := e.Secret(r.Field).Fingerprint(); fp != "" {
			if _, dup := k.byPrint[fp]; !dup {
				k.byPrint[fp] = v
			}
		}
	}
	if r.SampleKeyPath != "" {
		e, err := c.Read(ctx, r.SampleKeyPath, vault.PlainFields...)
		if err != nil {
			return nil, fmt.Errorf("sample key: %w", err)
		}
		k.sample = e.Secret(r.SampleKeyField)
		if k.sample.IsZero() {
			return nil, fmt.Errorf("sample key: %s has no field %q", c.Display(r.SampleKeyPath), r.SampleKeyField)
		}
		r.remember(env, k.sample)
	}
	return k, nil
}

func (r *Rollout) remember(env *step.Env, vs ...secret.Value) {
	if env.Secrets != nil {
		env.Secrets.Add(vs...)
	}
}

// describe names a key by its Vault version, or by its fingerprint when
// Vault does not hold it.
func (k *keys) describe(v secret.Value) string {
	if v.IsZero() {
		return "no key"
	}
	if n, ok := k.byPrint[v.Fingerprint()]; ok {
		return fmt.Sprintf("version %d (%s)", n, v.Fingerprint())
	}
	return "a key Vault does not hold (" + v.Fingerprint() + ")"
}

func (k *keys) version(v secret.Value) string {
	if n, ok := k.byPrint[v.Fingerprint()]; ok {
		return strconv.Itoa(n)
	}
	return ""
}

// Check implements step.Step. It reads Vault, each host's environment file
// and unit state, and asks each proxy whether it accepts the key; it
// changes nothing.
func (r *Rollout) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	k, err := r.readKeys(ctx, env)
	if err != nil {
		return step.Observation{}, fmt.Errorf("litellm.rollout: %w", err)
	}
	hosts, err := r.targets(ctx, env)
	if err != nil {
		return step.Observation{}, fmt.Errorf("litellm.rollout: %w", err)
	}
	obs := r.observeAll(ctx, env, k, hosts)
	var changes, refusals []string
	for _, o := range obs {
		if o.err != nil {
			return step.Observation{}, fmt.Errorf("litellm.rollout: %w", o.err)
		}
		if o.refusal != "" {
			refusals = append(refusals, o.refusal)
			continue
		}
		if c := o.change(k); c != "" {
			changes = append(changes, o.t.name+": "+c)
		}
	}
	if len(refusals) > 0 {
		return step.Observation{}, fmt.Errorf("litellm.rollout: %s", strings.Join(refusals, "; "))
	}
	if len(changes) == 0 {
		return step.Observation{Outputs: r.outputs(k, 0, len(hosts))}, nil
	}
	verb := "roll"
	if r.Mode == ModeRollback {
		verb = "roll back to"
	}
	return step.Observation{Change: fmt.Sprintf("%s master key %s of %s out to %d of %d hosts, %d at a time: %s",
		verb, k.describe(k.targetKey), k.display, len(changes), len(hosts), r.MaxUnavailable, strings.Join(changes, "; "))}, nil
}

func (r *Rollout) outputs(k *keys, changed, hosts int) step.Outputs {
	out := step.Outputs{
		"version":              strconv.Itoa(k.target.Version),
		"fingerprint":          k.targetKey.Fingerprint(),
		"previous_version":     "0",
		"previous_fingerprint": "",
		"changed":              strconv.Itoa(changed),
		"hosts":                strconv.Itoa(hosts),
	}
	if k.previous != nil {
		out["previous_version"] = strconv.Itoa(k.previous.Version)
		out["previous_fingerprint"] = k.previous.Secret(r.Field).Fingerprint()
	}
	if r.Mode == ModeRollback && k.fromVer > 0 {
		out["previous_version"] = strconv.Itoa(k.fromVer)
	}
	return out
}

// target is one host of the rollout with its settings resolved.
type target struct {
	host    *inventory.Host
	name    string
	vars    map[string]string
	tr      transport.Transport
	envFile string
	unit    string
	base    string // http://address:port
	port    int
}

func hostsDep(env *step.Env) (step.HostsDep, error) {
	d, ok := env.Deps.(step.HostsDep)
	if !ok || d == nil {
		return nil, errors.New("this run cannot reach inventory hosts")
	}
	return d, nil
}

// targets resolves the hosts and opens a transport to each (in parallel).
func (r *Rollout) targets(ctx context.Context, env *step.Env) ([]*target, error) {
	d, err := hostsDep(env)
	if err != nil {
		return nil, err
	}
	hs, err := d.Hosts(r.Hosts)
	if err != nil {
		return nil, err
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("no hosts in %s", strings.Join(r.Hosts, ", "))
	}
	ts := make([]*target, len(hs))
	errs := make([]error, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		t := &target{host: h, name: h.Name, vars: d.HostVars(h)}
		if t.vars == nil {
			t.vars = map[string]string{}
		}
		t.envFile = first(r.EnvFile, t.vars["litellm_env_file"], DefaultEnvFile)
		t.unit = first(r.Unit, t.vars["litellm_unit"], DefaultUnit)
		if err := validPath(t.envFile); err != nil {
			return nil, fmt.Errorf("%s: litellm_env_file: %w", h.Name, err)
		}
		if err := service.ValidateUnit(t.unit); err != nil {
			return nil, fmt.Errorf("%s: litellm_unit: %w", h.Name, err)
		}
		t.port = DefaultPort
		if p := t.vars["litellm_port"]; p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 || n > 65535 {
				return nil, fmt.Errorf("%s: litellm_port %q is not a port", h.Name, p)
			}
			t.port = n
		}
		t.base = t.vars["litellm_url"]
		if t.base == "" {
			t.base = "http://" + hostPort(h.Address, t.port)
		}
		ts[i] = t
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tr, err := d.Transport(ctx, ts[i].host)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", ts[i].name, err)
				return
			}
			ts[i].tr = tr
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return ts, nil
}

func first(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

func hostPort(addr string, port int) string {
	if strings.Contains(addr, ":") && !strings.HasPrefix(addr, "[") {
		addr = "[" + addr + "]"
	}
	return addr + ":" + strconv.Itoa(port)
}

// note leaves a fact for the record; a run without notes skips it.
func note(ctx context.Context, env *step.Env, host string, n journal.Note) error {
	d, ok := env.Deps.(step.NoteDep)
	if !ok || d == nil || env.DryRun {
		return nil
	}
	if err := d.Note(ctx, env.StepID, host, n); err != nil {
		return fmt.Errorf("record %s note: %w", n.Kind, err)
	}
	return nil
}
