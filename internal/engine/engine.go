// Package engine plans and runs a runbook: step order, per-host fan-out in
// bounded batches, retries with backoff, timeouts, cancellation, and the
// journal written before and after every side effect. A dry run and a real
// run share one loop; the dry run simply never calls Apply.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/transport"
)

// DefaultParallel bounds how many hosts a step works on at once when the
// step says nothing.
const DefaultParallel = 64

// DefaultTimeout bounds one step on one host when the step says nothing.
const DefaultTimeout = 10 * time.Minute

// Transports opens the transport for a host (nil host: the runner itself).
// The engine asks once per host per run and closes none of them: the caller
// owns the connections.
type Transports interface {
	For(ctx context.Context, h *inventory.Host) (transport.Transport, error)
}

// Options configure one plan or run.
type Options struct {
	Runbook   *runbook.Runbook
	Inventory *inventory.Inventory
	Registry  *step.Registry
	// Inputs are the runbook's inputs with defaults applied, as text.
	Inputs     map[string]string
	RunID      string
	DryRun     bool
	Transports Transports
	Deps       step.Deps
	Secrets    *secret.Masker
	Progress   Progress
	Log        *slog.Logger
	// Journal receives records; nil only for a dry run.
	Journal *Journal
	// Replay holds what an interrupted run already did; nil for a new run.
	Replay *journal.State
	// Interrupt, when done, stops the run from starting more work: side
	// effects in flight finish and are journaled, then Run returns
	// ErrInterrupted. It does not cancel work in flight (ctx does).
	Interrupt <-chan struct{}
	// Parallel overrides DefaultParallel.
	Parallel int
	Now      func() time.Time
}

// Result is what a plan or run did, per step and host, in runbook order.
type Result struct {
	Items []Item
}

// Changes returns the items that changed or would change.
func (r *Result) Changes() []Item {
	var out []Item
	for _, it := range r.Items {
		if it.Status == StatusChange || it.Status == StatusChanged || it.Status == StatusChangeAfter {
			out = append(out, it)
		}
	}
	return out
}

var (
	// ErrInterrupted is returned when Options.Interrupt stopped the run.
	ErrInterrupted = errors.New("interrupted")
	// ErrFailed is returned (wrapped in *StepError) when a step failed.
	ErrFailed = errors.New("step failed")
)

// StepError says which step failed on which hosts.
type StepError struct {
	Step  string
	Hosts []string // "" for a once step
	Err   error    // the first host's error
}

func (e *StepError) Error() string {
	if len(e.Hosts) == 1 && e.Hosts[0] == "" {
		return fmt.Sprintf("step %s: %v", e.Step, e.Err)
	}
	return fmt.Sprintf("step %s failed on %d host(s) (%v): %v", e.Step, len(e.Hosts), e.Hosts, e.Err)
}

func (e *StepError) Unwrap() []error { return []error{ErrFailed, e.Err} }

// engine is the state of one Run call.
type engine struct {
	o     Options
	now   func() time.Time
	steps map[string]*runbook.Step
	specs map[string]*step.Spec

	mu sync.Mutex
	// outputs[step][host] and items[step][host]; host "" for once steps.
	outputs map[string]map[string]step.Outputs
	items   map[string]map[string]*Item
	// failedHosts are hosts that failed a step with on_failure: continue;
	// later steps skip them.
	failedHosts map[string]string
}

// Run plans (DryRun) or runs the runbook. It returns the result of every
// step and host it reached. The error is a *StepError when a step failed,
// ErrInterrupted when Options.Interrupt fired, or an infrastructure error
// (journal write, invalid runbook).
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Progress == nil {
		o.Progress = discard{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Parallel <= 0 {
		o.Parallel = DefaultParallel
	}
	if !o.DryRun && o.Journal == nil {
		return nil, errors.New("engine: a real run needs a journal")
	}
	e := &engine{
		o:           o,
		now:         o.Now,
		steps:       map[string]*runbook.Step{},
		specs:       map[string]*step.Spec{},
		outputs:     map[string]map[string]step.Outputs{},
		items:       map[string]map[string]*Item{},
		failedHosts: map[string]string{},
	}
	if e.now == nil && o.Journal != nil {
		e.now = o.Journal.Now
	}
	if e.now == nil {
		e.now = time.Now
	}
	for i := range o.Runbook.Steps {
		s := &o.Runbook.Steps[i]
		spec, ok := o.Registry.Lookup(s.Kind)
		if !ok {
			return nil, fmt.Errorf("step %s: unknown kind %q", s.ID, s.Kind)
		}
		e.steps[s.ID], e.specs[s.ID] = s, spec
	}
	res := &Result{}
	var runErr error
	for i := range o.Runbook.Steps {
		s := &o.Runbook.Steps[i]
		if e.stopRequested() {
			runErr = ErrInterrupted
			break
		}
		items, err := e.runStep(ctx, s)
		res.Items = append(res.Items, items...)
		if err != nil {
			runErr = err
			var se *StepError
			if !errors.As(err, &se) || s.Batch.OnFailure != runbook.OnFailureContinue {
				break
			}
		}
	}
	if runErr == nil && len(e.failedHosts) > 0 {
		hosts := make([]string, 0, len(e.failedHosts))
		for h := range e.failedHosts {
			hosts = append(hosts, h)
		}
		sort.Strings(hosts)
		runErr = &StepError{Step: e.failedHosts[hosts[0]], Hosts: hosts, Err: errors.New("hosts failed earlier and were left out of later steps")}
	}
	if runErr == nil && e.stopRequested() {
		runErr = ErrInterrupted
	}
	return res, runErr
}

func (e *engine) stopRequested() bool {
	if e.o.Interrupt == nil {
		return false
	}
	select {
	case <-e.o.Interrupt:
		return true
	default:
		return false
	}
}

// unit is one host (or the runner, for a once step) that a step runs on.
type unit struct {
	host *inventory.Host // nil for a once step
	name string          // host name, "" for once
}

func (e *engine) targets(s *runbook.Step) ([]unit, error) {
	if len(s.On) == 0 {
		return []unit{{}}, nil
	}
	hosts, err := e.o.Inventory.Resolve(s.On)
	if err != nil {
		return nil, fmt.Errorf("step %s: %w", s.ID, err)
	}
	us := make([]unit, len(hosts))
	for i, h := range hosts {
		us[i] = unit{host: h, name: h.Name}
	}
	return us, nil
}

func (e *engine) runStep(ctx context.Context, s *runbook.Step) ([]Item, error) {
	spec := e.specs[s.ID]
	units, err := e.targets(s)
	if err != nil {
		return nil, err
	}
	fanout := len(units)
	if len(s.On) == 0 {
		fanout = 0 // a once step
	}
	e.o.Progress.Event(Event{Type: EventStepStart, Time: e.now(), Step: s.ID, Kind: s.Kind, Phase: s.Phase, Hosts: fanout})
	parallel := e.o.Parallel
	if s.Batch.Parallel > 0 && s.Batch.Parallel < parallel {
		parallel = s.Batch.Parallel
	}
	items := make([]Item, len(units))
	var (
		wg      sync.WaitGroup
		sem     = make(chan struct{}, parallel)
		abortMu sync.Mutex
		aborted bool
	)
	for i, u := range units {
		items[i] = Item{Step: s.ID, Kind: s.Kind, Phase: s.Phase, Host: u.name, Status: StatusNotRun}
		sem <- struct{}{}
		abortMu.Lock()
		stop := aborted || e.stopRequested()
		abortMu.Unlock()
		if stop {
			<-sem
			continue
		}
		wg.Add(1)
		go func(i int, u unit) {
			defer wg.Done()
			defer func() { <-sem }()
			it := e.runUnit(ctx, s, spec, u)
			items[i] = it
			if it.Status == StatusFailed && s.Batch.OnFailure != runbook.OnFailureContinue {
				abortMu.Lock()
				aborted = true
				abortMu.Unlock()
			}
		}(i, u)
	}
	wg.Wait()

	var failed []string
	var first error
	for i := range items {
		it := &items[i]
		e.setItem(it)
		if it.Status == StatusFailed {
			failed = append(failed, it.Host)
			if first == nil {
				first = errors.New(it.Error)
			}
			if s.Batch.OnFailure == runbook.OnFailureContinue && it.Host != "" {
				e.mu.Lock()
				if _, ok := e.failedHosts[it.Host]; !ok {
					e.failedHosts[it.Host] = s.ID
				}
				e.mu.Unlock()
			}
		}
	}
	e.o.Progress.Event(Event{Type: EventStepDone, Time: e.now(), Step: s.ID, Kind: s.Kind, Phase: s.Phase, Hosts: fanout})
	if len(failed) > 0 {
		if s.Batch.OnFailure == runbook.OnFailureContinue && failed[0] != "" {
			// The other hosts carry on; the run fails at its end.
			return items, nil
		}
		return items, &StepError{Step: s.ID, Hosts: failed, Err: first}
	}
	for _, it := range items {
		if it.Status == StatusNotRun && e.stopRequested() {
			return items, ErrInterrupted
		}
	}
	return items, nil
}

func (e *engine) setItem(it *Item) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.items[it.Step] == nil {
		e.items[it.Step] = map[string]*Item{}
	}
	cp := *it
	e.items[it.Step][it.Host] = &cp
}

func (e *engine) setOutputs(stepID, host string, out step.Outputs) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.outputs[stepID] == nil {
		e.outputs[stepID] = map[string]step.Outputs{}
	}
	e.outputs[stepID][host] = out
}
