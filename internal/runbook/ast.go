// Package runbook is the runbook language: the types a runbook decodes into,
// strict decoding with positions, validation against the step registry and an
// inventory, template references, and the JSON Schema editors use.
package runbook

import "time"

// Pos is a position in a source file.
type Pos struct {
	File string
	Line int // 1-based
	Col  int // 1-based
}

// Runbook is a decoded runbook file.
type Runbook struct {
	File        string
	Digest      string // "sha256:" + hex of the file's bytes
	Name        string
	Description string
	// Schedule is how often the runbook is due (rotate-master: 90 days);
	// zero when it is not scheduled.
	Schedule time.Duration
	Inputs   []Input
	Phases   []Phase
	Steps    []Step
	Pos      Pos

	// meta keeps the decoder's nodes and the file's lines, so that
	// validation errors point at the offending node and quote its line.
	meta *meta
}

// Input is a typed input given on the command line (--input name=value).
type Input struct {
	Name        string
	Type        InputType
	Description string
	Required    bool
	// Default is the value's text form ("" with HasDefault false: none).
	Default    string
	HasDefault bool
	Allowed    []string
	Pos        Pos
}

// InputType is the type of an input.
type InputType string

const (
	InputString   InputType = "string"
	InputInt      InputType = "int"
	InputBool     InputType = "bool"
	InputDuration InputType = "duration"
)

// Phase is a named group of steps with a time target, in runbook order.
type Phase struct {
	Name   string
	Target time.Duration
	Pos    Pos
}

// Step is one step of a runbook.
type Step struct {
	ID    string
	Name  string // optional human title
	Kind  string
	Phase string
	// On lists inventory groups or host names; empty means the step runs once.
	On []string
	// With holds the parameters as written: string, int, bool, []any or
	// map[string]any values, strings possibly holding ${{ ... }} templates.
	With    map[string]Value
	Retry   *Retry
	Timeout time.Duration
	// When is a condition; the step is skipped when it is false.
	When string
	// After lists earlier steps whose changes this step's observation depends
	// on, beyond those its templates already reference. In a plan, a step
	// after a step that would change reports "change after ID".
	After []string
	Batch Batch
	Pos   Pos
}

// Value is a parameter value with the position it was written at.
type Value struct {
	V   any
	Pos Pos
}

// Retry configures retries of errors the kind marks retryable.
type Retry struct {
	Attempts int           // total attempts, first included
	Initial  time.Duration // first backoff
	Max      time.Duration // backoff cap
}

// Batch configures per-host fan-out.
type Batch struct {
	// Parallel bounds how many hosts run at once; 0 means the runner's default.
	Parallel int
	// OnFailure is "abort" (default: stop starting hosts, fail the run) or
	// "continue" (finish the other hosts, fail the run at the end of the step).
	OnFailure string
}

const (
	OnFailureAbort    = "abort"
	OnFailureContinue = "continue"
)
