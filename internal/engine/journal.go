package engine

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/state"
)

// Journal seals records into the hash chain and appends them to a run's
// journal in a store. The engine is its only user: nothing else writes a
// journal. Every text field is masked before it is sealed.
type Journal struct {
	mu     sync.Mutex
	store  state.Store
	runID  string
	prev   string
	seq    int64
	masker *secret.Masker
	now    func() time.Time
}

// NewJournal starts the journal of a new run; the first Write must be its
// header.
func NewJournal(store state.Store, runID string, masker *secret.Masker) *Journal {
	return &Journal{store: store, runID: runID, masker: masker, now: runClock(time.Time{}), seq: journal.FirstSeq}
}

// runClock is the clock of one run attempt: the wall clock read once, then
// advanced by the monotonic clock. A step of the wall clock during the run
// (NTP, `date -s`) does not make the journal's times jump, so the incident
// record times each phase as it ran; times are true to the wall clock as
// it was when the attempt began. A resumed attempt starts no earlier than
// the journal's last record (notBefore), should the wall clock have been
// stepped back since.
func runClock(notBefore time.Time) func() time.Time {
	wall, mono := wallNow(), time.Now()
	if wall.Before(notBefore) {
		wall = notBefore
	}
	return func() time.Time { return wall.Add(time.Since(mono)) }
}

// Now reads the journal's clock (see runClock): the engine times its work
// with it too, so that a record's began and time agree.
func (j *Journal) Now() time.Time { return j.now() }

// ContinueJournal continues a journal after the records replayed from it.
func ContinueJournal(store state.Store, runID string, rp *journal.State, masker *secret.Masker) *Journal {
	j := NewJournal(store, runID, masker)
	j.prev, j.seq = rp.LastHash(), rp.NextSeq()
	j.now = runClock(rp.Updated)
	return j
}

// RunID returns the run's id.
func (j *Journal) RunID() string { return j.runID }

// LastHash returns the hash of the last record written.
func (j *Journal) LastHash() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.prev
}

// Write seals rec and appends it; it returns once the record is durable.
func (j *Journal) Write(ctx context.Context, rec journal.Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if rec.Time.IsZero() {
		rec.Time = j.now().UTC()
	}
	j.mask(&rec)
	sealed := journal.Seal(j.prev, j.seq, rec)
	if err := j.store.Append(ctx, j.runID, sealed); err != nil {
		j.resync(ctx, sealed)
		return fmt.Errorf("journal %s: %w", rec.Type, err)
	}
	j.prev, j.seq = sealed.Hash, j.seq+1
	crashPoint(sealed.Seq)
	return nil
}

// resync learns, after a failed append, whether the record reached the
// store all the same (its write landed and the sync after it failed, or a
// commit's answer was lost), so that the next record chains to what the
// store holds rather than being refused as out of sequence. The append
// still failed: the record's durability is not known.
func (j *Journal) resync(ctx context.Context, sealed journal.Record) {
	recs, err := j.store.Journal(context.WithoutCancel(ctx), j.runID)
	if err != nil || len(recs) == 0 {
		return
	}
	if last := recs[len(recs)-1]; last.Seq == sealed.Seq && last.Hash == sealed.Hash {
		j.prev, j.seq = sealed.Hash, sealed.Seq+1
	}
}

func (j *Journal) mask(rec *journal.Record) {
	m := j.masker
	if m == nil {
		return
	}
	rec.Change = m.MaskString(rec.Change)
	rec.Error = m.MaskString(rec.Error)
	for k, v := range rec.Outputs {
		rec.Outputs[k] = m.MaskString(v)
	}
	if rec.Note != nil {
		rec.Note.Text = m.MaskString(rec.Note.Text)
		for k, v := range rec.Note.Fields {
			rec.Note.Fields[k] = m.MaskString(v)
		}
	}
	if rec.End != nil {
		rec.End.Error = m.MaskString(rec.End.Error)
	}
}
