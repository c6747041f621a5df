// Package record builds the incident record of a run from its journal and
// renders it as JSON and Markdown. Every run ends with one, whether it
// succeeded, failed or was interrupted. Fields are copied one by one from
// journal records, which hold no secrets; nothing is dumped wholesale.
package record

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
)

// Record is the incident record of one run.
type Record struct {
	RunID           string            `json:"run_id"`
	Runbook         string            `json:"runbook"`
	RunbookDigest   string            `json:"runbook_digest"`
	InventoryFile   string            `json:"inventory_file"`
	InventoryDigest string            `json:"inventory_digest"`
	Environment     string            `json:"environment"`
	Drill           bool              `json:"drill,omitempty"`
	Operator        string            `json:"operator"`
	Hostname        string            `json:"hostname"`
	Reason          string            `json:"reason,omitempty"`
	Inputs          map[string]string `json:"inputs,omitempty"`
	Status          string            `json:"status"`
	Started         time.Time         `json:"started"`
	Ended           time.Time         `json:"ended"`
	Duration        Duration          `json:"duration"`
	Attempts        int               `json:"attempts"`
	Phases          []Phase           `json:"phases,omitempty"`
	Timeline        []Entry           `json:"timeline"`
	Changes         []Entry           `json:"changes"`
	Errors          []Entry           `json:"errors,omitempty"`
	Fingerprints    []Fingerprint     `json:"fingerprints,omitempty"`
	Notes           []Note            `json:"notes,omitempty"`
	FollowUps       []string          `json:"follow_ups,omitempty"`
	Journal         JournalInfo       `json:"journal"`
}

// Duration marshals as Go duration text.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Phase is one phase's time against its target.
type Phase struct {
	Name     string    `json:"name"`
	Target   string    `json:"target,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Ended    time.Time `json:"ended,omitzero"`
	Duration Duration  `json:"duration"`
	// Met is "yes", "no" or "n/a" (no target, or the phase did not run).
	Met string `json:"met"`
}

// Entry is one line of the timeline.
type Entry struct {
	Time   time.Time `json:"time"`
	Began  time.Time `json:"began,omitzero"`
	Event  string    `json:"event"`
	Step   string    `json:"step,omitempty"`
	Host   string    `json:"host,omitempty"`
	Change string    `json:"change,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// Fingerprint identifies a key without its value.
type Fingerprint struct {
	Name        string `json:"name"`
	Fingerprint string `json:"fingerprint"`
	Step        string `json:"step,omitempty"`
}

// Note is a fact a step left for the record.
type Note struct {
	Kind   string            `json:"kind"`
	Step   string            `json:"step,omitempty"`
	Host   string            `json:"host,omitempty"`
	Text   string            `json:"text,omitempty"`
	Fields map[string]string `json:"fields,omitempty"`
}

// JournalInfo ties the record to its journal.
type JournalInfo struct {
	Records   int    `json:"records"`
	FinalHash string `json:"final_hash"`
	Verified  bool   `json:"verified"`
}

// Note kinds with a meaning for the record.
const (
	NoteFingerprint = "key_fingerprint" // Fields: name, fingerprint
	NoteFollowUp    = "follow_up"       // Text
)

// Build makes the record from a run's journal. now is the time used as the
// end of a run whose journal has no end record yet.
func Build(recs []journal.Record) (*Record, error) {
	if len(recs) == 0 || recs[0].Header == nil {
		return nil, fmt.Errorf("build record: journal has no header")
	}
	h := recs[0].Header
	r := &Record{
		RunID: h.RunID, Runbook: h.Runbook, RunbookDigest: h.RunbookDigest,
		InventoryFile: h.InventoryFile, InventoryDigest: h.InventoryDigest,
		Environment: h.Environment, Drill: h.Drill, Operator: h.Operator, Hostname: h.Hostname,
		Reason: h.Reason, Inputs: h.Inputs, Started: h.Started.UTC(),
		Status:   journal.StatusInterrupted,
		Timeline: []Entry{}, Changes: []Entry{},
	}
	r.Journal.Verified = journal.Verify(recs) == nil
	last := recs[len(recs)-1]
	r.Journal.Records, r.Journal.FinalHash = len(recs), last.Hash
	r.Ended = last.Time.UTC()
	r.Duration = Duration(r.Ended.Sub(r.Started))

	phaseOf := map[string]string{}
	for _, p := range h.Phases {
		for _, s := range p.Steps {
			phaseOf[s] = p.Name
		}
	}
	type span struct{ start, end time.Time }
	spans := map[string]*span{}
	widen := func(phase string, from, to time.Time) {
		if phase == "" {
			return
		}
		sp := spans[phase]
		if sp == nil {
			sp = &span{from, to}
			spans[phase] = sp
		}
		if from.Before(sp.start) {
			sp.start = from
		}
		if to.After(sp.end) {
			sp.end = to
		}
	}
	for _, rec := range recs[1:] {
		e := Entry{Time: rec.Time.UTC(), Event: string(rec.Type), Step: rec.Step, Host: rec.Host, Change: rec.Change, Error: rec.Error}
		if rec.Began != nil {
			e.Began = rec.Began.UTC()
		}
		switch rec.Type {
		case journal.TEnd:
			r.Attempts++
			if rec.End != nil {
				r.Status = rec.End.Status
				e.Change, e.Error = rec.End.Status, rec.End.Error
				if rec.End.Error != "" && rec.End.Status != journal.StatusSucceeded {
					r.Errors = append(r.Errors, e)
				}
			}
		case journal.TResumed:
			r.Status = journal.StatusInterrupted
		case journal.TDone:
			r.Changes = append(r.Changes, e)
		case journal.TFailed:
			r.Errors = append(r.Errors, e)
		case journal.TNote:
			if rec.Note != nil {
				n := Note{Kind: rec.Note.Kind, Step: rec.Step, Host: rec.Host, Text: rec.Note.Text, Fields: rec.Note.Fields}
				switch n.Kind {
				case NoteFingerprint:
					r.Fingerprints = append(r.Fingerprints, Fingerprint{Name: n.Fields["name"], Fingerprint: n.Fields["fingerprint"], Step: rec.Step})
				case NoteFollowUp:
					r.FollowUps = append(r.FollowUps, n.Text)
				default:
					r.Notes = append(r.Notes, n)
				}
				e.Change = n.Kind
			}
		}
		if rec.Step != "" {
			from := rec.Time
			if rec.Began != nil {
				from = *rec.Began
			}
			widen(phaseOf[rec.Step], from.UTC(), rec.Time.UTC())
		}
		if rec.Type != journal.TNote || rec.Note == nil || rec.Note.Kind != NoteFingerprint {
			r.Timeline = append(r.Timeline, e)
		}
	}
	if r.Attempts == 0 {
		r.Attempts = 1
	}
	for _, p := range h.Phases {
		ph := Phase{Name: p.Name, Target: p.Target, Met: "n/a"}
		if sp := spans[p.Name]; sp != nil {
			ph.Started, ph.Ended = sp.start, sp.end
			ph.Duration = Duration(sp.end.Sub(sp.start))
			if t, err := time.ParseDuration(p.Target); err == nil && t > 0 {
				ph.Met = "no"
				if time.Duration(ph.Duration) <= t {
					ph.Met = "yes"
				}
			}
		}
		r.Phases = append(r.Phases, ph)
	}
	return r, nil
}

// BaseName is the file name both renderings share: UTC start time, runbook
// and run id, so that a directory of records sorts by time.
func (r *Record) BaseName() string {
	return fmt.Sprintf("%s-%s-%s", r.Started.UTC().Format("20060102T150405Z"), r.Runbook, r.RunID)
}

// JSON renders the record as indented JSON.
func (r *Record) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Write writes the record's JSON and Markdown files into dir, each
// atomically (temporary file, fsync, rename). It returns their paths.
func (r *Record) Write(dir string) (jsonPath, mdPath string, err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", "", fmt.Errorf("write record: %w", err)
	}
	js, err := r.JSON()
	if err != nil {
		return "", "", fmt.Errorf("write record: %w", err)
	}
	jsonPath = filepath.Join(dir, r.BaseName()+".json")
	mdPath = filepath.Join(dir, r.BaseName()+".md")
	if err := writeAtomic(jsonPath, js); err != nil {
		return "", "", err
	}
	if err := writeAtomic(mdPath, r.Markdown()); err != nil {
		return "", "", err
	}
	return jsonPath, mdPath, nil
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".record-*")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write record: %w", err)
	}
	if err := f.Chmod(0o640); err != nil {
		f.Close()
		return fmt.Errorf("write record: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write record: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// cell makes text safe inside a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\r", " ")
	return strings.ReplaceAll(s, "\n", " ")
}
