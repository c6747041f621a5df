package journal

import (
	"fmt"
	"time"
)

// Key names one piece of work: a step on a host (Host "" for a step that
// runs once).
type Key struct {
	Step string
	Host string
}

func (k Key) String() string {
	if k.Host == "" {
		return k.Step
	}
	return k.Step + " on " + k.Host
}

// Work is what a journal says about one step on one host.
type Work struct {
	Key
	// Status is the type of the latest record for this work: TOK, TSkipped,
	// TIntent (a side effect began and no outcome was recorded), TDone or
	// TFailed.
	Status Type
	// Change is what the latest intent said would change, or what the
	// latest done said changed.
	Change string
	// Outputs are those of the latest ok or done record.
	Outputs map[string]string
	// Error is the latest failure's error; it stays after a later success
	// so that the record can tell what went wrong on the way.
	Error string
	// Attempt is the Attempt of the latest intent, done or failed record.
	Attempt int
	// Intents counts the intent records for this work, over every attempt
	// of the run (the first and each resume).
	Intents int
	// First and Updated are the times of the first and latest records.
	First, Updated time.Time
	// Began is the Began of the latest record that has one: when the
	// latest attempt at this work began.
	Began time.Time
	// Seq is the Seq of the latest record.
	Seq int64
}

// Action is what a resumed run does with a piece of work.
type Action int

const (
	// ActionRun: the journal knows nothing of this work; run it as usual.
	ActionRun Action = iota
	// ActionSkip: the work is done, was already in the desired state, or
	// was skipped by its condition. Its outputs stand.
	ActionSkip
	// ActionRecheck: an intent was recorded and no outcome: the side effect
	// may or may not have happened. Check again before acting.
	ActionRecheck
	// ActionRetry: the work failed; check and act again.
	ActionRetry
)

func (a Action) String() string {
	switch a {
	case ActionRun:
		return "run"
	case ActionSkip:
		return "skip"
	case ActionRecheck:
		return "recheck"
	case ActionRetry:
		return "retry"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// State is the state of a run as its journal tells it.
type State struct {
	Header Header
	// Work lists every step and host the journal mentions, in the order of
	// their first record.
	Work []*Work
	// Attempts counts the run's attempts: 1, plus one per resume.
	Attempts int
	// End is the end record of the last attempt; nil if it has none (the
	// attempt is still running, or its process died).
	End *End
	// Notes are the note records, in order.
	Notes []Record
	// Records counts the records; Updated is the time of the last one.
	Records int
	Updated time.Time

	index    map[Key]*Work
	lastHash string
	lastSeq  int64
}

// Replay verifies recs (see Verify) and folds them into the run's state.
// recs must start with the run's header and hold no other header.
func Replay(recs []Record) (*State, error) {
	if len(recs) == 0 {
		return nil, fmt.Errorf("replay journal: %w: no records", ErrCorrupt)
	}
	if err := Verify(recs); err != nil {
		return nil, fmt.Errorf("replay journal: %w", err)
	}
	r := &State{index: map[Key]*Work{}}
	for i, rec := range recs {
		if err := r.apply(rec); err != nil {
			return nil, fmt.Errorf("replay journal: %w", &CorruptError{Index: i, Seq: rec.Seq, Reason: err.Error()})
		}
	}
	return r, nil
}

func (r *State) apply(rec Record) error {
	if r.Records == 0 {
		if rec.Type != THeader || rec.Header == nil {
			return fmt.Errorf("first record is %q, want a header", rec.Type)
		}
		r.Header = *rec.Header
		r.Attempts = 1
	}
	r.Records++
	r.Updated = rec.Time
	r.lastHash = rec.Hash
	r.lastSeq = rec.Seq
	switch rec.Type {
	case THeader:
		if r.Records > 1 {
			return fmt.Errorf("second header")
		}
	case TOK, TSkipped, TIntent, TDone, TFailed:
		if rec.Step == "" {
			return fmt.Errorf("%s record without a step", rec.Type)
		}
		r.work(rec)
	case TNote:
		if rec.Note == nil {
			return fmt.Errorf("note record without a note")
		}
		r.Notes = append(r.Notes, rec)
	case TResumed:
		r.Attempts++
		r.End = nil
	case TEnd:
		if rec.End == nil {
			return fmt.Errorf("end record without an end")
		}
		switch rec.End.Status {
		case StatusSucceeded, StatusFailed, StatusInterrupted:
		default:
			return fmt.Errorf("end record with status %q", rec.End.Status)
		}
		end := *rec.End
		r.End = &end
	default:
		return fmt.Errorf("unknown record type %q", rec.Type)
	}
	return nil
}

func (r *State) work(rec Record) {
	k := Key{Step: rec.Step, Host: rec.Host}
	w := r.index[k]
	if w == nil {
		w = &Work{Key: k, First: rec.Time}
		r.index[k] = w
		r.Work = append(r.Work, w)
	}
	w.Status = rec.Type
	w.Updated = rec.Time
	if rec.Began != nil {
		w.Began = *rec.Began
	}
	w.Seq = rec.Seq
	switch rec.Type {
	case TOK:
		w.Outputs = copyMap(rec.Outputs)
	case TIntent:
		w.Intents++
		w.Attempt = rec.Attempt
		w.Change = rec.Change
	case TDone:
		w.Attempt = rec.Attempt
		if rec.Change != "" {
			w.Change = rec.Change
		}
		w.Outputs = copyMap(rec.Outputs)
	case TFailed:
		w.Attempt = rec.Attempt
		w.Error = rec.Error
	}
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Lookup returns what the journal says about step on host, or nil.
func (r *State) Lookup(step, host string) *Work {
	return r.index[Key{Step: step, Host: host}]
}

// Action tells a resumed run what to do with step on host.
func (r *State) Action(step, host string) Action {
	w := r.Lookup(step, host)
	if w == nil {
		return ActionRun
	}
	switch w.Status {
	case TOK, TSkipped, TDone:
		return ActionSkip
	case TIntent:
		return ActionRecheck
	default:
		return ActionRetry
	}
}

// Outputs returns the outputs of step on host that a resumed run keeps
// (those of a skipped-over ok or done), or nil.
func (r *State) Outputs(step, host string) map[string]string {
	if w := r.Lookup(step, host); w != nil && (w.Status == TOK || w.Status == TDone) {
		return w.Outputs
	}
	return nil
}

// Unfinished lists the work a resume must look at again: intents without
// an outcome and failures, in journal order.
func (r *State) Unfinished() []*Work {
	var out []*Work
	for _, w := range r.Work {
		if w.Status == TIntent || w.Status == TFailed {
			out = append(out, w)
		}
	}
	return out
}

// Status is the run's status as the journal alone tells it: the last
// attempt's end status, or StatusRunning when that attempt has no end
// record. The journal cannot tell a run in progress from one whose process
// died; StatusGiven can, with the caller's knowledge of the lock.
func (r *State) Status() string {
	if r.End != nil {
		return r.End.Status
	}
	return StatusRunning
}

// StatusGiven is Status refined by what the caller knows of the run's lock:
// live says whether a live process holds the lock on the header's Target
// for this run. A run without an end record whose lock no live process
// holds was interrupted (its process died or lost the lock).
func (r *State) StatusGiven(live bool) string {
	if r.End == nil && !live {
		return StatusInterrupted
	}
	return r.Status()
}

// LastHash is the Hash of the last record: the Prev of the next one.
func (r *State) LastHash() string { return r.lastHash }

// NextSeq is the Seq of the next record.
func (r *State) NextSeq() int64 { return r.lastSeq + 1 }

// Chain returns a Chain that seals the records following the journal.
func (r *State) Chain() *Chain { return &Chain{Last: r.lastHash, Seq: r.lastSeq} }
