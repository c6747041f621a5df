package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/sethvargo/go-retry"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/step"
)

// runUnit works one step on one host: observe, then (for a real run)
// journal the intent, act, verify and journal the outcome.
func (e *engine) runUnit(ctx context.Context, s *runbook.Step, spec *step.Spec, u unit) (it Item) {
	it = Item{Step: s.ID, Kind: s.Kind, Phase: s.Phase, Host: u.name, Began: e.now()}
	e.o.Progress.Event(Event{Type: EventHostStart, Time: it.Began, Step: s.ID, Kind: s.Kind, Phase: s.Phase, Host: u.name})
	defer func() {
		it.Elapsed = e.now().Sub(it.Began)
		it.Error = e.o.Secrets.MaskString(it.Error)
		it.Change = e.o.Secrets.MaskString(it.Change)
		cp := it
		e.o.Progress.Event(Event{Type: EventHostDone, Time: e.now(), Step: s.ID, Kind: s.Kind, Phase: s.Phase, Host: u.name, Item: &cp})
	}()
	began := it.Began.UTC()
	record := func(rec journal.Record) error {
		if e.o.DryRun {
			return nil
		}
		rec.Step, rec.Host = s.ID, u.name
		if rec.Type != journal.TIntent {
			rec.Began = &began
		}
		return e.o.Journal.Write(ctx, rec)
	}
	fail := func(err error) Item {
		it.Status, it.Error = StatusFailed, err.Error()
		if jerr := record(journal.Record{Type: journal.TFailed, Error: it.Error}); jerr != nil {
			it.Error += "; " + jerr.Error()
		}
		return it
	}

	e.mu.Lock()
	failedAt, hostFailed := e.failedHosts[u.name]
	e.mu.Unlock()
	if hostFailed && u.name != "" {
		it.Status, it.Reason = StatusSkipped, "failed at step "+failedAt
		return it
	}

	// Resume: work the journal shows finished is not done again; work with
	// an intent and no outcome is checked again before acting.
	var pending *journal.Work
	if e.o.Replay != nil {
		if w := e.o.Replay.Lookup(s.ID, u.name); w != nil {
			switch e.o.Replay.Action(s.ID, u.name) {
			case journal.ActionSkip:
				e.setOutputs(s.ID, u.name, w.Outputs)
				it.Status, it.Change = StatusDone, w.Change
				return it
			case journal.ActionRecheck:
				pending = w
			}
		}
	}

	if e.o.DryRun {
		if dep := e.pendingDependency(s, u.name); dep != "" {
			it.Status, it.After = StatusChangeAfter, dep
			return it
		}
	}

	look := e.lookup(u)
	if s.When != "" {
		ok, err := runbook.EvalWhen(s.When, look)
		if err != nil {
			return fail(fmt.Errorf("when: %w", err))
		}
		if !ok {
			it.Status, it.Reason = StatusSkipped, "when is false"
			if err := record(journal.Record{Type: journal.TSkipped}); err != nil {
				return fail(err)
			}
			return it
		}
	}
	params, err := e.params(s, spec, look)
	if err != nil {
		return fail(err)
	}
	st, err := spec.New(params)
	if err != nil {
		return fail(err)
	}

	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	uctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	env := &step.Env{
		RunID:   e.o.RunID,
		StepID:  s.ID,
		Host:    u.name,
		Vars:    e.vars(u),
		DryRun:  e.o.DryRun,
		Secrets: e.o.Secrets,
		Deps:    e.o.Deps,
		Log:     e.o.Log.With("step", s.ID, "host", u.name),
		Started: it.Began,
	}
	attempt := 0
	check := func(ctx context.Context) (step.Observation, error) {
		var obs step.Observation
		err := e.retry(ctx, s, u, func(ctx context.Context) error {
			if env.Transport == nil {
				tr, err := e.o.Transports.For(ctx, u.host)
				if err != nil {
					return err
				}
				env.Transport = tr
			}
			var err error
			obs, err = st.Check(ctx, env)
			return err
		})
		return obs, err
	}

	obs, err := check(uctx)
	if err != nil {
		return fail(fmt.Errorf("check: %w", err))
	}
	if obs.OK() {
		e.setOutputs(s.ID, u.name, obs.Outputs)
		if pending != nil {
			// The interrupted attempt's side effect landed before the crash:
			// record it as done, without acting again.
			it.Status, it.Change = StatusChanged, pending.Change
			if err := record(journal.Record{Type: journal.TDone, Change: pending.Change + " (confirmed on resume)", Outputs: obs.Outputs, Attempt: pending.Attempt}); err != nil {
				return fail(err)
			}
			return it
		}
		it.Status = StatusOK
		if err := record(journal.Record{Type: journal.TOK, Outputs: obs.Outputs}); err != nil {
			return fail(err)
		}
		return it
	}
	it.Change = obs.Change
	if e.o.DryRun {
		it.Status = StatusChange
		return it
	}

	e.o.Progress.Event(Event{Type: EventApplying, Time: e.now(), Step: s.ID, Kind: s.Kind, Phase: s.Phase, Host: u.name, Message: e.o.Secrets.MaskString(obs.Change)})
	if pending != nil {
		attempt = pending.Attempt
	}
	var out step.Outputs
	err = e.retry(uctx, s, u, func(ctx context.Context) error {
		attempt++
		if attempt > 1 && (pending == nil || attempt > pending.Attempt+1) {
			// A retry after an error: observe again before acting again.
			again, err := st.Check(ctx, env)
			if err != nil {
				return err
			}
			if again.OK() {
				out = again.Outputs
				return nil
			}
		}
		if err := record(journal.Record{Type: journal.TIntent, Change: obs.Change, Attempt: attempt}); err != nil {
			return err
		}
		var err error
		out, err = st.Apply(ctx, env)
		crashAfterApply()
		return err
	})
	if err == nil {
		if v, ok := st.(step.Verifier); ok {
			if verr := v.Verify(uctx, env); verr != nil {
				err = fmt.Errorf("verify: %w", verr)
			}
		}
	} else {
		err = fmt.Errorf("apply: %w", err)
	}
	if err != nil {
		it.Status, it.Error = StatusFailed, err.Error()
		if jerr := record(journal.Record{Type: journal.TFailed, Change: obs.Change, Error: it.Error, Attempt: attempt}); jerr != nil {
			it.Error += "; " + jerr.Error()
		}
		return it
	}
	merged := step.Outputs{}
	for k, v := range obs.Outputs {
		merged[k] = v
	}
	for k, v := range out {
		merged[k] = v
	}
	e.setOutputs(s.ID, u.name, merged)
	it.Status = StatusChanged
	if err := record(journal.Record{Type: journal.TDone, Change: obs.Change, Outputs: merged, Attempt: attempt}); err != nil {
		return fail(err)
	}
	return it
}

// retry runs fn, retrying errors the kind or transport marks retryable,
// with exponential backoff and jitter as the step's retry settings say.
func (e *engine) retry(ctx context.Context, s *runbook.Step, u unit, fn func(context.Context) error) error {
	attempts, initial, max := 3, 200*time.Millisecond, 2*time.Second
	if s.Retry != nil {
		if s.Retry.Attempts > 0 {
			attempts = s.Retry.Attempts
		}
		if s.Retry.Initial > 0 {
			initial = s.Retry.Initial
		}
		if s.Retry.Max > 0 {
			max = s.Retry.Max
		}
	}
	b := retry.NewExponential(initial)
	b = retry.WithJitterPercent(20, b)
	b = retry.WithCappedDuration(max, b)
	b = retry.WithMaxRetries(uint64(attempts-1), b)
	n := 0
	return retry.Do(ctx, b, func(ctx context.Context) error {
		n++
		err := fn(ctx)
		if err != nil && step.IsRetryable(err) && n < attempts {
			e.o.Progress.Event(Event{Type: EventRetry, Time: e.now(), Step: s.ID, Kind: s.Kind, Phase: s.Phase, Host: u.name,
				Message: e.o.Secrets.MaskString(fmt.Sprintf("attempt %d of %d: %v", n, attempts, err))})
			return retry.RetryableError(err)
		}
		return err
	})
}

// vars are the variables a step sees on a host.
func (e *engine) vars(u unit) map[string]string {
	if u.host != nil {
		return e.o.Inventory.HostVars(u.host)
	}
	out := map[string]string{}
	for k, v := range e.o.Inventory.Vars {
		out[k] = v
	}
	return out
}

// lookup resolves template references for one host.
func (e *engine) lookup(u unit) runbook.Lookup {
	vars := e.vars(u)
	return func(r runbook.Ref) (string, bool) {
		switch r.Scope {
		case "inputs":
			v, ok := e.o.Inputs[r.Name]
			return v, ok
		case "vars":
			v, ok := vars[r.Name]
			return v, ok
		case "run":
			if r.Name == "id" {
				return e.o.RunID, true
			}
		case "host":
			if u.host == nil {
				return "", false
			}
			switch r.Name {
			case "name":
				return u.host.Name, true
			case "address":
				return u.host.Address, true
			case "port":
				return strconv.Itoa(u.host.Port), true
			case "user":
				return u.host.User, true
			}
		case "steps":
			e.mu.Lock()
			defer e.mu.Unlock()
			byHost, ok := e.outputs[r.Step]
			if !ok {
				return "", false
			}
			out, ok := byHost[u.name]
			if !ok {
				out, ok = byHost[""]
			}
			if !ok {
				return "", false
			}
			return out[r.Name], true
		}
		return "", false
	}
}

// params expands templates in a step's `with:` values and converts them to
// the kind's parameter types, filling defaults.
func (e *engine) params(s *runbook.Step, spec *step.Spec, look runbook.Lookup) (step.Params, error) {
	p := step.Params{}
	for _, ps := range spec.Params {
		v, ok := s.With[ps.Name]
		if !ok {
			if ps.Default != nil {
				p[ps.Name] = ps.Default
			} else if ps.Required {
				return nil, &step.ParamError{Param: ps.Name, Err: errors.New("missing")}
			}
			continue
		}
		x, err := runbook.ExpandValue(v.V, look)
		if err != nil {
			return nil, &step.ParamError{Param: ps.Name, Err: err}
		}
		c, err := runbook.ConvertParam(ps, x)
		if err != nil {
			return nil, &step.ParamError{Param: ps.Name, Err: err}
		}
		p[ps.Name] = c
	}
	return p, nil
}

// dependencies are the earlier steps a step's observation depends on: those
// its templates reference and those it names in `after:`.
func dependencies(s *runbook.Step) []string {
	seen := map[string]bool{}
	var out []string
	add := func(id string) {
		if id != "" && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			refs, _ := runbook.Refs(x)
			for _, r := range refs {
				if r.Scope == "steps" {
					add(r.Step)
				}
			}
		case []any:
			for _, el := range x {
				walk(el)
			}
		case map[string]any:
			for _, el := range x {
				walk(el)
			}
		}
	}
	if refs, err := runbook.WhenRefs(s.When); err == nil {
		for _, r := range refs {
			if r.Scope == "steps" {
				add(r.Step)
			}
		}
	}
	for _, v := range s.With {
		walk(v.V)
	}
	for _, a := range s.After {
		add(a)
	}
	return out
}

// pendingDependency returns the first dependency of s that a plan predicts
// will change on host (or anywhere, for a once step or a once dependency).
func (e *engine) pendingDependency(s *runbook.Step, host string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	pending := func(it *Item) bool {
		return it != nil && (it.Status == StatusChange || it.Status == StatusChangeAfter)
	}
	for _, d := range dependencies(s) {
		byHost := e.items[d]
		if it, ok := byHost[host]; ok && host != "" {
			// The dependency ran on this very host: only its change matters.
			if pending(it) {
				return d
			}
			continue
		}
		for _, it := range byHost {
			if pending(it) {
				return d
			}
		}
	}
	return ""
}
