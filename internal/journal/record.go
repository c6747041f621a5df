// Package journal defines the records of a run's append-only journal, the
// hash chain that links them, and the replay that tells resume what is done.
// It does no I/O: the state store keeps the records, the engine writes them.
package journal

import "time"

// Type is the type of a journal record.
type Type string

const (
	// Header opens every journal: what runs, against what, by whom.
	THeader Type = "header"
	// OK: Check found the step already in the desired state on the host.
	TOK Type = "ok"
	// Skipped: the step's `when:` was false.
	TSkipped Type = "skipped"
	// Intent is written (and made durable) before a side effect.
	TIntent Type = "intent"
	// Done is written after a side effect succeeded.
	TDone Type = "done"
	// Failed is written after a check or side effect failed.
	TFailed Type = "failed"
	// Note carries facts for the incident record (fingerprints, reports).
	TNote Type = "note"
	// Resumed marks where a resume began.
	TResumed Type = "resumed"
	// End closes a run attempt with its status.
	TEnd Type = "end"
)

// Record is one journal line. Records are serialised field by field (no
// secret can be in any of them: outputs and notes are never secret values).
//
// A record's hash covers its JSON encoding, and a line must be exactly that
// encoding to be read (see DecodeLine). So a field added to Record or to a
// type it holds must be `omitempty` (or a pointer that stays nil): records
// written before it existed must encode as they did.
type Record struct {
	Seq  int64     `json:"seq"`
	Time time.Time `json:"time"`
	Type Type      `json:"type"`
	// Step and Host name the step and host ("" for a step that runs once).
	Step string `json:"step,omitempty"`
	Host string `json:"host,omitempty"`
	// Change: for intent, what will change; for done, what changed.
	Change  string            `json:"change,omitempty"`
	Outputs map[string]string `json:"outputs,omitempty"`
	Error   string            `json:"error,omitempty"`
	// Attempt counts Apply attempts (retries) for intent/done/failed.
	Attempt int `json:"attempt,omitempty"`
	// Began is when work on this step and host began (its first check), set
	// on ok, skipped, done and failed records for the incident timeline.
	Began  *time.Time `json:"began,omitempty"`
	Header *Header    `json:"header,omitempty"`
	Note   *Note      `json:"note,omitempty"`
	End    *End       `json:"end,omitempty"`
	// Prev is the hash of the previous record ("" for the header); Hash is
	// this record's hash over Prev and every other field.
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// Header is the first record of every journal.
type Header struct {
	RunID           string            `json:"run_id"`
	Runbook         string            `json:"runbook"`
	RunbookFile     string            `json:"runbook_file"`
	RunbookDigest   string            `json:"runbook_digest"`
	InventoryFile   string            `json:"inventory_file"`
	InventoryDigest string            `json:"inventory_digest"`
	Environment     string            `json:"environment"`
	Target          string            `json:"target"` // the lock target
	Inputs          map[string]string `json:"inputs,omitempty"`
	Reason          string            `json:"reason,omitempty"`
	Operator        string            `json:"operator"`
	Hostname        string            `json:"hostname"`
	PID             int               `json:"pid"`
	Started         time.Time         `json:"started"`
	Drill           bool              `json:"drill,omitempty"`
	// Phases are the runbook's phases with their targets and steps, so the
	// incident record can be rendered from the journal alone.
	Phases []Phase `json:"phases,omitempty"`
	// Steps lists every step id with its kind, in runbook order.
	Steps []StepInfo `json:"steps,omitempty"`
}

// Phase is a runbook phase as the header records it.
type Phase struct {
	Name   string   `json:"name"`
	Target string   `json:"target,omitempty"` // Go duration text
	Steps  []string `json:"steps"`
}

// StepInfo names a step and its kind.
type StepInfo struct {
	ID    string `json:"id"`
	Kind  string `json:"kind"`
	Phase string `json:"phase,omitempty"`
	Name  string `json:"name,omitempty"`
}

// Note is a fact for the incident record. Kind names what it is
// ("key_fingerprint", "exposure_report", "follow_up", ...); Fields are
// allow-listed values, never secrets.
type Note struct {
	Kind   string            `json:"kind"`
	Fields map[string]string `json:"fields,omitempty"`
	Text   string            `json:"text,omitempty"`
}

// End closes a run attempt.
type End struct {
	Status string `json:"status"` // StatusSucceeded, StatusFailed, StatusInterrupted
	Error  string `json:"error,omitempty"`
}

const (
	StatusRunning     = "running"
	StatusSucceeded   = "succeeded"
	StatusFailed      = "failed"
	StatusInterrupted = "interrupted"
)
