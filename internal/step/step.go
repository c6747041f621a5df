// Package step holds the contract every step kind keeps and the registry that
// lists them. Kinds live in subpackages (step/command, step/service, ...) and
// are all registered in step/all, the one place that shows what can execute.
package step

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
)

// Step is one configured instance of a kind, bound to its parameters.
//
// The engine calls Check first, always. Check only observes: it must not
// change anything on any host, in Vault or in a database, so that a dry run
// is honest and a resumed run can ask again what is left to do. When Check
// reports a change, the engine journals its intent, calls Apply, and journals
// the outcome. Apply may be called again for the same host after a crash
// between intent and outcome, but only after a fresh Check reported that the
// change is still needed.
type Step interface {
	Check(ctx context.Context, env *Env) (Observation, error)
	Apply(ctx context.Context, env *Env) (Outputs, error)
}

// Verifier is implemented by kinds that can confirm an applied change.
// The engine calls Verify after a successful Apply; an error fails the host.
type Verifier interface {
	Verify(ctx context.Context, env *Env) error
}

// Outputs are values a step makes available to later steps as
// ${{ steps.ID.outputs.NAME }}. They are journaled: never put a secret here.
type Outputs map[string]string

// Observation is what Check saw.
type Observation struct {
	// Change describes the change Apply would make, in a few words
	// ("stop litellm (active)"). Empty means already in the desired state.
	Change string
	// Outputs observed without acting; for an "ok" step they are the outputs.
	Outputs Outputs
}

// OK reports whether nothing needs to change.
func (o Observation) OK() bool { return o.Change == "" }

// Env is what a step sees of the run while it executes on one host.
type Env struct {
	RunID string
	// StepID is the step's id in the runbook, for notes (NoteDep).
	StepID string
	// Host is the inventory host's name; empty for a step that runs once.
	Host string
	// Vars are the host's inventory variables merged over its groups' and the
	// inventory's; for a once step, the inventory's.
	Vars map[string]string
	// Transport reaches the host; for a once step it is the local transport.
	Transport transport.Transport
	// DryRun is true while planning. Check sees it; Apply is never called.
	DryRun bool
	// Secrets masks every secret the run knows of in what is printed or
	// recorded; kinds add the secrets they read or make.
	Secrets *secret.Masker
	// Deps gives access to shared clients (Vault, databases, other hosts).
	Deps Deps
	// Log reports progress notes; they are masked and shown to the operator.
	Log *slog.Logger
	// Started is when this step began on this host.
	Started time.Time
}

// Deps are the run's shared resources, built lazily by the engine. Kinds
// assert the interface they need on it (for example a Vault client getter).
type Deps interface{}

// Params are a step's `with:` values after templates are expanded, typed as
// their kind's Param specs say.
type Params map[string]any

// String returns a string parameter ("" when absent).
func (p Params) String(name string) string { s, _ := p[name].(string); return s }

// Int returns an int parameter (0 when absent).
func (p Params) Int(name string) int { i, _ := p[name].(int); return i }

// Bool returns a bool parameter.
func (p Params) Bool(name string) bool { b, _ := p[name].(bool); return b }

// Duration returns a duration parameter.
func (p Params) Duration(name string) time.Duration { d, _ := p[name].(time.Duration); return d }

// Strings returns a list parameter.
func (p Params) Strings(name string) []string { s, _ := p[name].([]string); return s }

// Has reports whether the parameter was given or defaulted.
func (p Params) Has(name string) bool { _, ok := p[name]; return ok }

// ParamType is the type of a parameter's value.
type ParamType string

const (
	String   ParamType = "string"
	Int      ParamType = "int"
	Bool     ParamType = "bool"
	Duration ParamType = "duration"
	List     ParamType = "list" // list of strings
)

// Param describes one `with:` parameter.
type Param struct {
	Name     string
	Type     ParamType
	Required bool
	// Default is used when the parameter is absent, typed as Type says.
	Default any
	// Allowed, when set, lists the only values a string may take.
	Allowed []string
	Doc     string
	// Validate, when set, checks a value after type conversion and template
	// expansion (for example that a unit name holds no shell metacharacters).
	Validate func(v any) error
}

// Target says where a kind runs.
type Target int

const (
	// PerHost kinds need `on:` and run once per host.
	PerHost Target = iota
	// Once kinds take no `on:` and run once, on the runner.
	Once
	// Either kinds may run per host or once.
	Either
)

func (t Target) String() string {
	switch t {
	case PerHost:
		return "per host"
	case Once:
		return "once"
	}
	return "per host or once"
}

// Spec describes a kind.
type Spec struct {
	Name    string // namespaced, like "service.stop"
	Summary string // one line, for `runbook kinds`
	Target  Target
	Params  []Param
	// Outputs names the outputs the kind sets, so references to them can be
	// checked before anything runs.
	Outputs []string
	// New binds parameters to a step. It is called per host after templates
	// are expanded and types checked; it validates meaning, not types.
	New func(p Params) (Step, error)
}

// Param returns the spec of the named parameter.
func (s *Spec) Param(name string) (Param, bool) {
	for _, p := range s.Params {
		if p.Name == name {
			return p, true
		}
	}
	return Param{}, false
}

// HasOutput reports whether the kind declares the named output.
func (s *Spec) HasOutput(name string) bool {
	for _, o := range s.Outputs {
		if o == name {
			return true
		}
	}
	return false
}

// Registry holds the kinds by name.
type Registry struct {
	specs map[string]*Spec
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{specs: map[string]*Spec{}} }

// Register adds a kind. Registering a name twice is a programming error and
// panics.
func (r *Registry) Register(s *Spec) {
	if s.Name == "" || s.New == nil {
		panic("step: register a kind with a name and a constructor")
	}
	if _, dup := r.specs[s.Name]; dup {
		panic("step: kind registered twice: " + s.Name)
	}
	r.specs[s.Name] = s
}

// Lookup returns the named kind.
func (r *Registry) Lookup(name string) (*Spec, bool) {
	s, ok := r.specs[name]
	return s, ok
}

// All returns every kind, sorted by name.
func (r *Registry) All() []*Spec {
	out := make([]*Spec, 0, len(r.specs))
	for _, s := range r.specs {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// retryable marks an error that a kind says may succeed on a retry.
type retryable struct{ err error }

func (e retryable) Error() string { return e.err.Error() }
func (e retryable) Unwrap() error { return e.err }

// Retryable marks err as safe to retry. Only errors so marked (and transport
// connection errors) are retried.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return retryable{err}
}

// IsRetryable reports whether err was marked retryable by a kind or is a
// transport connection error.
func IsRetryable(err error) bool {
	var r retryable
	return errors.As(err, &r) || transport.IsRetryable(err)
}

// ParamError is an error in a parameter's value found at run time.
type ParamError struct {
	Param string
	Err   error
}

func (e *ParamError) Error() string { return fmt.Sprintf("with.%s: %v", e.Param, e.Err) }
func (e *ParamError) Unwrap() error { return e.Err }
