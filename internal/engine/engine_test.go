package engine_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/secret"
	statefs "github.com/runbook-dev/runbook/internal/state/fs"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/command"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/transport/local"
)

// fixture is a runbook run against hosts on the local transport, with
// command steps that append lines to one file per host.
type fixture struct {
	t   *testing.T
	dir string
	inv *inventory.Inventory
	rb  *runbook.Runbook
	reg *step.Registry
}

const inventoryYAML = `environment: test
groups:
  fleet: {}
hosts:
  h1: {address: 127.0.0.1, transport: local, groups: [fleet], vars: {color: red}}
  h2: {address: 127.0.0.1, transport: local, groups: [fleet], vars: {color: green}}
  h3: {address: 127.0.0.1, transport: local, groups: [fleet], vars: {color: blue}}
`

func newFixture(t *testing.T, runbookYAML string, reg *step.Registry) *fixture {
	t.Helper()
	// A short directory: t.TempDir's long names look like random keys to
	// the inline-secret check.
	dir, err := os.MkdirTemp("", "rb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if reg == nil {
		reg = step.NewRegistry()
		reg.Register(command.Spec)
	}
	rbYAML := strings.ReplaceAll(runbookYAML, "DIR", dir)
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inv, err := inventory.LoadFile(write("inventory.yaml", inventoryYAML))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := runbook.LoadFile(write("runbook.yaml", rbYAML))
	if err != nil {
		t.Fatal(err)
	}
	if err := runbook.Validate(rb, reg, inv); err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, dir: dir, inv: inv, rb: rb, reg: reg}
}

type localTransports struct{}

func (localTransports) For(_ context.Context, h *inventory.Host) (transport.Transport, error) {
	if h == nil {
		return local.New(""), nil
	}
	return local.New(h.Name), nil
}

func (f *fixture) options(dry bool) engine.Options {
	return engine.Options{
		Runbook: f.rb, Inventory: f.inv, Registry: f.reg, Inputs: map[string]string{},
		RunID: "test-run", DryRun: dry, Transports: localTransports{}, Secrets: &secret.Masker{},
	}
}

// run does a real run with a journal in a fresh fs store and returns the
// result, the error and the journal's records.
func (f *fixture) run(mod func(*engine.Options)) (*engine.Result, []journal.Record, error) {
	f.t.Helper()
	store, err := statefs.Open(filepath.Join(f.dir, "state"))
	if err != nil {
		f.t.Fatal(err)
	}
	defer store.Close()
	runID := fmt.Sprintf("run-%d", time.Now().UnixNano())
	o := f.options(false)
	o.RunID = runID
	o.Journal = engine.NewJournal(store, runID, o.Secrets)
	if err := o.Journal.Write(context.Background(), journal.Record{Type: journal.THeader, Header: &journal.Header{RunID: runID, Runbook: f.rb.Name, Started: time.Now()}}); err != nil {
		f.t.Fatal(err)
	}
	if mod != nil {
		mod(&o)
	}
	res, runErr := engine.Run(context.Background(), o)
	recs, err := store.Journal(context.Background(), runID)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := journal.Verify(recs); err != nil {
		f.t.Fatalf("journal does not verify: %v", err)
	}
	return res, recs, runErr
}

func (f *fixture) lines(host string) []string {
	b, err := os.ReadFile(filepath.Join(f.dir, host+".log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		f.t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// appendStep appends LINE to DIR/<host>.log once.
const appendSteps = `name: append
phases:
  one: 1m
steps:
  - id: first
    kind: command
    phase: one
    on: fleet
    with:
      check: [sh, -c, 'grep -qx "$1" "$2" || exit 1', sh, "first-${{ vars.color }}", "DIR/${{ host.name }}.log"]
      run: [sh, -c, 'echo "$1" >> "$2"', sh, "first-${{ vars.color }}", "DIR/${{ host.name }}.log"]
      describe: append first-${{ vars.color }}
  - id: second
    kind: command
    phase: one
    on: [h1, h3]
    with:
      check: [sh, -c, 'grep -qx second "$1" || exit 1', sh, "DIR/${{ host.name }}.log"]
      run: [sh, -c, 'echo second >> "$1"', sh, "DIR/${{ host.name }}.log"]
  - id: once
    kind: command
    phase: one
    with:
      check: [test, -e, DIR/once.log]
      run: [sh, -c, 'echo once >> DIR/once.log']
`

func changeSet(items []engine.Item) []string {
	var out []string
	for _, it := range items {
		if it.Status == engine.StatusChange || it.Status == engine.StatusChanged {
			out = append(out, it.Step+"@"+it.Host+": "+it.Change)
		}
	}
	sort.Strings(out)
	return out
}

func TestPlanPredictsExactlyWhatTheRunChanges(t *testing.T) {
	f := newFixture(t, appendSteps, nil)
	plan, err := engine.Run(context.Background(), f.options(true))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.lines("h1")) != 0 {
		t.Fatal("the plan changed something")
	}
	predicted := changeSet(plan.Items)
	if len(predicted) != 6 {
		t.Fatalf("plan predicts %d changes, want 6: %v", len(predicted), predicted)
	}
	res, recs, runErr := f.run(nil)
	if runErr != nil {
		t.Fatal(runErr)
	}
	if got := changeSet(res.Items); strings.Join(got, "\n") != strings.Join(predicted, "\n") {
		t.Fatalf("run changed\n%s\nplan predicted\n%s", strings.Join(got, "\n"), strings.Join(predicted, "\n"))
	}
	if got := f.lines("h1"); strings.Join(got, ",") != "first-red,second" {
		t.Fatalf("h1 holds %v", got)
	}
	if got := f.lines("h2"); strings.Join(got, ",") != "first-green" {
		t.Fatalf("h2 holds %v", got)
	}
	intents, dones := 0, 0
	for _, r := range recs {
		switch r.Type {
		case journal.TIntent:
			intents++
		case journal.TDone:
			dones++
		}
	}
	if intents != 6 || dones != 6 {
		t.Fatalf("journal has %d intents and %d done records, want 6 each", intents, dones)
	}

	// A second run changes nothing, and its plan says so.
	plan2, err := engine.Run(context.Background(), f.options(true))
	if err != nil {
		t.Fatal(err)
	}
	if c := changeSet(plan2.Items); len(c) != 0 {
		t.Fatalf("second plan predicts changes: %v", c)
	}
	res2, _, runErr := f.run(nil)
	if runErr != nil {
		t.Fatal(runErr)
	}
	for _, it := range res2.Items {
		if it.Status != engine.StatusOK {
			t.Fatalf("second run: %s on %s is %s", it.Step, it.Host, it.Status)
		}
	}
	if got := f.lines("h3"); strings.Join(got, ",") != "first-blue,second" {
		t.Fatalf("h3 holds %v after two runs", got)
	}
}

func TestPlanSaysChangeAfterADependency(t *testing.T) {
	f := newFixture(t, `name: deps
steps:
  - id: make
    kind: command
    on: fleet
    with:
      check: [test, -e, "DIR/${{ host.name }}.made"]
      run: [touch, "DIR/${{ host.name }}.made"]
  - id: use
    kind: command
    on: fleet
    after: [make]
    with:
      check: [test, -e, "DIR/${{ host.name }}.made"]
      run: [touch, "DIR/${{ host.name }}.made"]
  - id: independent
    kind: command
    on: fleet
    with:
      check: ["true"]
      run: ["true"]
`, nil)
	plan, err := engine.Run(context.Background(), f.options(true))
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range plan.Items {
		switch it.Step {
		case "make":
			if it.Status != engine.StatusChange {
				t.Errorf("make on %s: %s", it.Host, it.Status)
			}
		case "use":
			if it.Status != engine.StatusChangeAfter || it.After != "make" {
				t.Errorf("use on %s: %s after %q", it.Host, it.Status, it.After)
			}
		case "independent":
			if it.Status != engine.StatusOK {
				t.Errorf("independent on %s: %s", it.Host, it.Status)
			}
		}
	}
}

// testKind is a kind whose behaviour the test scripts; it is here to test
// the engine's retries, fan-out and interrupts, not any real kind.
type testKind struct {
	check func(env *step.Env) (step.Observation, error)
	apply func(env *step.Env) (step.Outputs, error)
}

func (k *testKind) Check(_ context.Context, env *step.Env) (step.Observation, error) {
	return k.check(env)
}
func (k *testKind) Apply(_ context.Context, env *step.Env) (step.Outputs, error) { return k.apply(env) }

func registryWith(name string, k *testKind) *step.Registry {
	reg := step.NewRegistry()
	reg.Register(command.Spec)
	reg.Register(&step.Spec{Name: name, Summary: "test", Target: step.Either, Outputs: []string{"n"},
		New: func(step.Params) (step.Step, error) { return k, nil }})
	return reg
}

func TestRetriesOnlyRetryableErrors(t *testing.T) {
	var calls atomic.Int32
	k := &testKind{
		check: func(*step.Env) (step.Observation, error) { return step.Observation{Change: "do it"}, nil },
		apply: func(env *step.Env) (step.Outputs, error) {
			n := calls.Add(1)
			if env.Host == "h1" && n <= 2 {
				return nil, step.Retryable(errors.New("flaky"))
			}
			if env.Host == "h2" {
				return nil, errors.New("permanent")
			}
			return step.Outputs{"n": fmt.Sprint(n)}, nil
		},
	}
	f := newFixture(t, `name: retry
steps:
  - id: s
    kind: test.flaky
    on: [h1]
    retry: {attempts: 3, initial: 1ms, max: 5ms}
  - id: p
    kind: test.flaky
    on: [h2]
    retry: {attempts: 3, initial: 1ms, max: 5ms}
`, registryWith("test.flaky", k))
	res, recs, err := f.run(nil)
	if res.Items[0].Status != engine.StatusChanged {
		t.Fatalf("h1 after two retryable errors: %s %s", res.Items[0].Status, res.Items[0].Error)
	}
	before := calls.Load()
	var se *engine.StepError
	if !errors.As(err, &se) || se.Step != "p" {
		t.Fatalf("want a step error for p, got %v", err)
	}
	if before != 4 {
		t.Fatalf("apply called %d times; want 3 for h1 and 1 for h2 (a permanent error is not retried)", before)
	}
	attempts := 0
	for _, r := range recs {
		if r.Type == journal.TIntent && r.Step == "s" {
			attempts++
		}
	}
	if attempts != 3 {
		t.Fatalf("%d intents journaled for the retried step, want one per attempt (3)", attempts)
	}
}

func TestFanOutIsBoundedAndAbortStopsStartingHosts(t *testing.T) {
	var running, peak atomic.Int32
	k := &testKind{
		check: func(*step.Env) (step.Observation, error) { return step.Observation{Change: "x"}, nil },
		apply: func(env *step.Env) (step.Outputs, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(30 * time.Millisecond)
			if env.Host == "h1" {
				return nil, errors.New("h1 breaks")
			}
			return nil, nil
		},
	}
	f := newFixture(t, `name: fan
steps:
  - id: s
    kind: test.slow
    on: fleet
    batch: {parallel: 1}
  - id: after
    kind: test.slow
    on: [h2]
`, registryWith("test.slow", k))
	res, _, err := f.run(nil)
	if peak.Load() != 1 {
		t.Fatalf("peak parallelism %d with parallel: 1", peak.Load())
	}
	if err == nil {
		t.Fatal("run succeeded with a failing host")
	}
	statuses := map[string]engine.Status{}
	for _, it := range res.Items {
		statuses[it.Step+"@"+it.Host] = it.Status
	}
	if statuses["s@h1"] != engine.StatusFailed || statuses["s@h2"] != engine.StatusNotRun || statuses["s@h3"] != engine.StatusNotRun {
		t.Fatalf("abort policy: %v", statuses)
	}
	if _, ran := statuses["after@h2"]; ran {
		t.Fatal("a step after an aborted step ran")
	}
}

func TestContinueFinishesOtherHostsAndFailsAtTheEnd(t *testing.T) {
	k := &testKind{
		check: func(*step.Env) (step.Observation, error) { return step.Observation{Change: "x"}, nil },
		apply: func(env *step.Env) (step.Outputs, error) {
			if env.Host == "h2" {
				return nil, errors.New("h2 breaks")
			}
			return nil, nil
		},
	}
	f := newFixture(t, `name: cont
steps:
  - id: s
    kind: test.k
    on: fleet
    batch: {on_failure: continue}
  - id: next
    kind: test.k
    on: fleet
`, registryWith("test.k", k))
	res, _, err := f.run(nil)
	var se *engine.StepError
	if !errors.As(err, &se) || len(se.Hosts) != 1 || se.Hosts[0] != "h2" {
		t.Fatalf("want the run to fail naming h2, got %v", err)
	}
	statuses := map[string]engine.Status{}
	for _, it := range res.Items {
		statuses[it.Step+"@"+it.Host] = it.Status
	}
	want := map[string]engine.Status{"s@h1": engine.StatusChanged, "s@h2": engine.StatusFailed, "s@h3": engine.StatusChanged,
		"next@h1": engine.StatusChanged, "next@h2": engine.StatusSkipped, "next@h3": engine.StatusChanged}
	for k, v := range want {
		if statuses[k] != v {
			t.Errorf("%s: %s, want %s", k, statuses[k], v)
		}
	}
}

func TestInterruptLetsTheSideEffectInFlightFinish(t *testing.T) {
	interrupt := make(chan struct{})
	var once sync.Once
	k := &testKind{
		check: func(*step.Env) (step.Observation, error) { return step.Observation{Change: "x"}, nil },
		apply: func(env *step.Env) (step.Outputs, error) {
			once.Do(func() { close(interrupt) }) // Ctrl-C arrives while we act
			time.Sleep(20 * time.Millisecond)
			return step.Outputs{"n": "1"}, nil
		},
	}
	f := newFixture(t, `name: intr
steps:
  - id: s
    kind: test.k
    on: fleet
    batch: {parallel: 1}
  - id: later
    kind: test.k
`, registryWith("test.k", k))
	res, recs, err := f.run(func(o *engine.Options) { o.Interrupt = interrupt })
	if !errors.Is(err, engine.ErrInterrupted) {
		t.Fatalf("want ErrInterrupted, got %v", err)
	}
	if res.Items[0].Status != engine.StatusChanged {
		t.Fatalf("the side effect in flight did not finish: %s", res.Items[0].Status)
	}
	last := recs[len(recs)-1]
	if last.Type != journal.TDone || last.Host != "h1" {
		t.Fatalf("last journal record is %s on %s; want done on h1", last.Type, last.Host)
	}
	for _, it := range res.Items[1:] {
		if it.Status == engine.StatusChanged {
			t.Fatalf("%s on %s ran after the interrupt", it.Step, it.Host)
		}
	}
}

func TestResumeSkipsDoneWorkAndRechecksIntents(t *testing.T) {
	f := newFixture(t, appendSteps, nil)
	store, err := statefs.Open(filepath.Join(f.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	o := f.options(false)
	o.Journal = engine.NewJournal(store, "r1", o.Secrets)
	ctx := context.Background()
	if err := o.Journal.Write(ctx, journal.Record{Type: journal.THeader, Header: &journal.Header{RunID: "r1", Started: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	// Simulate a crash between intent and outcome on h2's first step, after
	// the side effect landed: the line is there, only the intent journaled.
	if err := os.WriteFile(filepath.Join(f.dir, "h2.log"), []byte("first-green\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := o.Journal.Write(ctx, journal.Record{Type: journal.TIntent, Step: "first", Host: "h2", Change: "append first-green", Attempt: 1}); err != nil {
		t.Fatal(err)
	}
	recs, err := store.Journal(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	st, err := journal.Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	o.Replay = st
	o.Journal = engine.ContinueJournal(store, "r1", st, o.Secrets)
	res, err := engine.Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range res.Items {
		if it.Step == "first" && it.Host == "h2" && it.Status != engine.StatusChanged {
			t.Fatalf("the interrupted intent on h2: %s", it.Status)
		}
	}
	if got := f.lines("h2"); len(got) != 1 {
		t.Fatalf("h2 holds %v: the side effect was repeated", got)
	}
	// Resuming again (the journal now holds everything) repeats nothing.
	recs, _ = store.Journal(ctx, "r1")
	st, err = journal.Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	o.Replay, o.Journal = st, engine.ContinueJournal(store, "r1", st, o.Secrets)
	res, err = engine.Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range res.Items {
		if it.Status != engine.StatusDone {
			t.Fatalf("second resume: %s on %s is %s, want done before", it.Step, it.Host, it.Status)
		}
	}
}
