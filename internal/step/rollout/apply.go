package rollout

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/service"
)

// Host states in notes and halt errors.
const (
	StateUnchanged  = "unchanged"   // it already ran the key; nothing was done
	StateRotated    = "rotated"     // it passed its gate on the key rolled out
	StateRolledBack = "rolled back" // it failed its gate and is back on its previous file
	StateFailed     = "failed"      // it failed its gate and could not be brought back
	StateUntouched  = "untouched"   // the rollout halted before it
)

// HostState says which key a host runs after the rollout.
type HostState struct {
	Host        string
	State       string
	Version     string // Vault version of the key, "" when Vault does not hold it
	Fingerprint string
}

func (s HostState) String() string {
	v := "a key Vault does not hold"
	if s.Version != "" {
		v = "version " + s.Version
	}
	return fmt.Sprintf("%s runs %s (%s; %s)", s.Host, v, s.Fingerprint, s.State)
}

// HaltError is a rollout that stopped at a host. Nothing was started after
// it; Hosts says where every host stands. It deliberately does not wrap
// the cause: a halted rollout is not retried.
type HaltError struct {
	Host  string
	Cause string
	Hosts []HostState
}

// ErrHalted is wrapped by every HaltError.
var ErrHalted = errors.New("rollout halted")

func (e *HaltError) Error() string {
	parts := make([]string, len(e.Hosts))
	for i, h := range e.Hosts {
		parts[i] = h.String()
	}
	return fmt.Sprintf("rollout halted at %s: %s; %s", e.Host, e.Cause, strings.Join(parts, ", "))
}

func (e *HaltError) Unwrap() error { return ErrHalted }

// hostResult is what became of one host.
type hostResult struct {
	state string
	key   secret.Value // the key in its environment file afterwards
	err   error
}

// Apply implements step.Step. It observes every host again, refuses before
// touching anything when a host cannot take the key, then works through
// the hosts that need a change in batches of max_unavailable: drain, write
// the file (keeping the previous one as FILE.prev), restart, gate, lift the
// firewall, undrain. A host that fails its gate gets its previous file back
// and is restarted and checked; the batch finishes, no later batch starts,
// and the step fails with a HaltError naming every host's key.
func (r *Rollout) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	k, err := r.readKeys(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("litellm.rollout: %w", err)
	}
	hosts, err := r.targets(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("litellm.rollout: %w", err)
	}
	obs := r.observeAll(ctx, env, k, hosts)
	var refusals []string
	for _, o := range obs {
		if o.err != nil {
			return nil, fmt.Errorf("litellm.rollout: %w", o.err)
		}
		if o.refusal != "" {
			refusals = append(refusals, o.refusal)
		}
	}
	if len(refusals) > 0 {
		return nil, fmt.Errorf("litellm.rollout: nothing was changed: %s", strings.Join(refusals, "; "))
	}
	minHealthy := r.MinHealthy
	if minHealthy < 0 {
		minHealthy = max(len(hosts)-r.MaxUnavailable, 0)
	}
	var pending []*hostObs
	results := map[string]*hostResult{}
	for _, o := range obs {
		if o.needed() {
			pending = append(pending, o)
			results[o.t.name] = &hostResult{state: StateUntouched, key: o.before}
		} else {
			results[o.t.name] = &hostResult{state: StateUnchanged, key: o.before}
		}
	}
	batch := min(r.MaxUnavailable, len(hosts))
	if len(pending) > 0 && minHealthy > len(hosts)-min(batch, len(pending)) {
		return nil, fmt.Errorf("litellm.rollout: nothing was changed: min_healthy %d cannot hold while %d of %d hosts are out of service", minHealthy, min(batch, len(pending)), len(hosts))
	}
	if err := r.noteTarget(ctx, env, k, len(pending), len(hosts)); err != nil {
		return nil, fmt.Errorf("litellm.rollout: %w", err)
	}

	var halt *HaltError
	for start := 0; start < len(pending) && halt == nil; start += batch {
		group := pending[start:min(start+batch, len(pending))]
		if err := r.waitHealthy(ctx, env, hosts, group, minHealthy); err != nil {
			halt = &HaltError{Host: group[0].t.name, Cause: env.Secrets.MaskString(err.Error())}
			break
		}
		var wg sync.WaitGroup
		for _, o := range group {
			wg.Add(1)
			go func(o *hostObs) {
				defer wg.Done()
				res := r.doHost(ctx, env, k, o)
				results[o.t.name].state, results[o.t.name].key, results[o.t.name].err = res.state, res.key, res.err
			}(o)
		}
		wg.Wait()
		for _, o := range group {
			if res := results[o.t.name]; res.err != nil {
				halt = &HaltError{Host: o.t.name, Cause: env.Secrets.MaskString(res.err.Error())}
				break
			}
		}
	}

	states := make([]HostState, len(hosts))
	changed := 0
	for i, t := range hosts {
		res := results[t.name]
		states[i] = HostState{Host: t.name, State: res.state, Version: k.version(res.key), Fingerprint: res.key.Fingerprint()}
		if res.state == StateRotated {
			changed++
		}
	}
	// Notes are written with a context that outlives a cancellation: the
	// record must say where each host stands.
	nctx := context.WithoutCancel(ctx)
	for _, s := range states {
		if err := note(nctx, env, s.Host, journal.Note{Kind: "key_version", Fields: map[string]string{
			"host": s.Host, "state": s.State, "version": s.Version, "fingerprint": s.Fingerprint, "path": k.display,
		}}); err != nil {
			return nil, fmt.Errorf("litellm.rollout: %w", err)
		}
		r.log(env, "host state", "host", s.Host, "state", s.State, "version", s.Version, "fingerprint", s.Fingerprint)
	}
	if halt != nil {
		halt.Hosts = states
		if err := note(nctx, env, halt.Host, journal.Note{Kind: "rollout_halted", Text: halt.Error()}); err != nil {
			return nil, fmt.Errorf("litellm.rollout: %w", err)
		}
		return nil, halt
	}
	return r.outputs(k, changed, len(hosts)), nil
}

func (r *Rollout) noteTarget(ctx context.Context, env *step.Env, k *keys, pending, hosts int) error {
	f := map[string]string{
		"mode": r.Mode, "path": k.display, "version": strconv.Itoa(k.target.Version),
		"fingerprint": k.targetKey.Fingerprint(), "hosts": strconv.Itoa(hosts), "to_change": strconv.Itoa(pending),
	}
	if k.previous != nil {
		f["previous_version"] = strconv.Itoa(k.previous.Version)
	}
	if k.fromVer > 0 {
		f["rolled_back_version"] = strconv.Itoa(k.fromVer)
	}
	return note(ctx, env, "", journal.Note{Kind: "rollout_target", Fields: f})
}

func (r *Rollout) log(env *step.Env, msg string, args ...any) {
	if env.Log != nil {
		env.Log.Info(msg, args...)
	}
}

// waitHealthy waits until at least n hosts outside group serve.
func (r *Rollout) waitHealthy(ctx context.Context, env *step.Env, hosts []*target, group []*hostObs, n int) error {
	if n <= 0 {
		return nil
	}
	in := map[string]bool{}
	for _, o := range group {
		in[o.t.name] = true
	}
	var others []*target
	for _, t := range hosts {
		if !in[t.name] {
			others = append(others, t)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, r.Deadline)
	defer cancel()
	for {
		serving := make([]bool, len(others))
		var wg sync.WaitGroup
		for i := range others {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				serving[i] = r.probe(dctx, env, others[i], nil).Serving()
			}(i)
		}
		wg.Wait()
		count := 0
		var down []string
		for i, ok := range serving {
			if ok {
				count++
			} else {
				down = append(down, others[i].name)
			}
		}
		if count >= n {
			return nil
		}
		select {
		case <-dctx.Done():
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("only %d of the other hosts serve (not serving: %s); min_healthy is %d: nothing was started on this batch",
				count, strings.Join(down, ", "), n)
		case <-time.After(r.interval()):
		}
	}
}

// rollbackGrace bounds a rollback that runs after the run was cancelled:
// a host left with a file it cannot run is worse than a late stop.
const rollbackGrace = 30 * time.Second

// doHost takes one host through drain, write, restart, gate, lift and
// undrain; on a failed gate it puts the previous file back.
func (r *Rollout) doHost(ctx context.Context, env *step.Env, k *keys, o *hostObs) hostResult {
	t := o.t
	henv := hostEnv(env, t)
	if err := r.runnerCommand(ctx, env, "drain", r.Drain, t); err != nil {
		return hostResult{state: StateUntouched, key: o.before, err: err}
	}
	if len(r.Drain) > 0 {
		if err := sleep(ctx, r.Settle); err != nil {
			return r.undrainAfter(ctx, env, t, hostResult{state: StateUntouched, key: o.before, err: err})
		}
	}
	if o.write || o.restart {
		t0 := time.Now()
		restarted, err := r.switchKey(ctx, env, k, o)
		if err != nil {
			return r.rollback(ctx, env, k, o, err)
		}
		r.log(henv, "passed the health gate", "version", k.version(k.targetKey),
			"restart", restarted.Round(time.Millisecond).String(), "gate", (time.Since(t0) - restarted).Round(time.Millisecond).String())
	}
	if r.testHookAfterGate != nil {
		r.testHookAfterGate(t.name)
	}
	if o.lifting {
		if _, err := o.lift.Apply(ctx, henv); err != nil {
			return hostResult{state: StateRotated, key: k.targetKey, err: fmt.Errorf("%s passed its gate but its firewall rules could not be lifted (it stays contained): %w", t.name, err)}
		}
	}
	return r.undrainAfter(ctx, env, t, hostResult{state: StateRotated, key: k.targetKey})
}

// switchKey writes the new file (when it differs), restarts the unit and
// waits for the gate. It returns how long the write and restart took.
func (r *Rollout) switchKey(ctx context.Context, env *step.Env, k *keys, o *hostObs) (time.Duration, error) {
	t := o.t
	t0 := time.Now()
	if o.write {
		if err := r.write(ctx, env, t, o.want.Render(), true); err != nil {
			return time.Since(t0), err
		}
	}
	if _, err := r.manager(env).Act(ctx, t.tr, service.Restart, t.unit); err != nil {
		return time.Since(t0), err
	}
	restarted := time.Since(t0)
	refuse := o.before
	if refuse.Equal(k.targetKey) {
		refuse = secret.Value{}
	}
	return restarted, r.passGate(ctx, env, t, gate{want: k.targetKey, refuse: refuse, sample: k.sample})
}

// rollback puts o's previous file back, restarts the unit and checks it
// serves on its previous key.
func (r *Rollout) rollback(ctx context.Context, env *step.Env, k *keys, o *hostObs, cause error) hostResult {
	t := o.t
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), r.Deadline+rollbackGrace)
		defer cancel()
	}
	if !o.write {
		// Nothing of ours to undo: the file already held the key.
		return hostResult{state: StateFailed, key: k.targetKey, err: cause}
	}
	r.log(hostEnv(env, t), "failed the health gate; putting the previous environment file back")
	if err := r.write(ctx, env, t, o.file.Render(), false); err != nil {
		return hostResult{state: StateFailed, key: k.targetKey, err: fmt.Errorf("%w; the rollback could not restore the environment file: %v", cause, err)}
	}
	if _, err := r.manager(env).Act(ctx, t.tr, service.Restart, t.unit); err != nil {
		return hostResult{state: StateFailed, key: o.before, err: fmt.Errorf("%w; after the rollback the unit does not restart: %v", cause, err)}
	}
	refuse := k.targetKey
	if refuse.Equal(o.before) {
		refuse = secret.Value{}
	}
	if err := r.passGate(ctx, env, t, gate{want: o.before, refuse: refuse, sample: k.sample}); err != nil {
		return hostResult{state: StateFailed, key: o.before, err: fmt.Errorf("%w; after the rollback: %v", cause, err)}
	}
	return r.undrainAfter(ctx, env, t, hostResult{state: StateRolledBack, key: o.before, err: cause})
}

// undrainAfter puts a drained host back and lets the balancer see it.
func (r *Rollout) undrainAfter(ctx context.Context, env *step.Env, t *target, res hostResult) hostResult {
	if len(r.Undrain) == 0 {
		return res
	}
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), rollbackGrace)
		defer cancel()
	}
	if err := r.runnerCommand(ctx, env, "undrain", r.Undrain, t); err != nil {
		if res.err == nil {
			res.err = err
		} else {
			res.err = fmt.Errorf("%w; %v", res.err, err)
		}
		return res
	}
	if err := sleep(ctx, r.Settle); err != nil && res.err == nil {
		res.err = err
	}
	return res
}
