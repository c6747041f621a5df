package engine

import "time"

// Status of a step on a host, as plans and progress report it.
type Status string

const (
	// StatusOK: already in the desired state.
	StatusOK Status = "ok"
	// StatusChange: a plan's predicted change.
	StatusChange Status = "change"
	// StatusChangeAfter: in a plan, the outcome depends on an earlier step's
	// predicted change, so it cannot be observed yet.
	StatusChangeAfter Status = "change after"
	// StatusChanged: the change was applied.
	StatusChanged Status = "changed"
	// StatusSkipped: `when:` was false, or the host failed an earlier step.
	StatusSkipped Status = "skipped"
	// StatusFailed: check, apply or verify failed.
	StatusFailed Status = "failed"
	// StatusDone: a resumed run found this work done before.
	StatusDone Status = "done before"
	// StatusNotRun: the run stopped before reaching this host.
	StatusNotRun Status = "not run"
)

// Item is the outcome of one step on one host (Host is "" for a once step).
type Item struct {
	Step   string `json:"step"`
	Kind   string `json:"kind"`
	Phase  string `json:"phase,omitempty"`
	Host   string `json:"host,omitempty"`
	Status Status `json:"status"`
	// Change is what would change (plan) or what changed (run).
	Change string `json:"change,omitempty"`
	// After names the earlier step a "change after" item waits on.
	After   string        `json:"after,omitempty"`
	Error   string        `json:"error,omitempty"`
	Reason  string        `json:"reason,omitempty"`
	Began   time.Time     `json:"began"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// EventType tells what an Event reports.
type EventType string

const (
	EventStepStart EventType = "step_start"
	EventHostStart EventType = "host_start"
	EventApplying  EventType = "applying"
	EventRetry     EventType = "retry"
	EventHostDone  EventType = "host_done"
	EventStepDone  EventType = "step_done"
	EventNote      EventType = "note"
)

// Event is one progress report. The engine never prints; the CLI draws
// events live on a terminal, as plain lines in CI, or as JSON.
type Event struct {
	Type  EventType `json:"type"`
	Time  time.Time `json:"time"`
	Step  string    `json:"step,omitempty"`
	Kind  string    `json:"kind,omitempty"`
	Phase string    `json:"phase,omitempty"`
	Host  string    `json:"host,omitempty"`
	// Hosts is the number of hosts a starting step fans out to; 0 for a
	// step that runs once.
	Hosts int `json:"hosts,omitempty"`
	// Item is set on host_done.
	Item *Item `json:"item,omitempty"`
	// Message is set on retry and note events; it is masked.
	Message string `json:"message,omitempty"`
}

// Progress receives events. Implementations must be safe for concurrent use.
type Progress interface {
	Event(Event)
}

// ProgressFunc adapts a function to Progress.
type ProgressFunc func(Event)

// Event implements Progress.
func (f ProgressFunc) Event(e Event) { f(e) }

type discard struct{}

func (discard) Event(Event) {}
