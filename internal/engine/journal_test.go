package engine_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/state"
	statefs "github.com/runbook-dev/runbook/internal/state/fs"
)

// syncFailing is a store whose next Append writes the record and then
// fails, as a write whose fsync returned EIO does.
type syncFailing struct {
	state.Store
	failNext bool
}

func (s *syncFailing) Append(ctx context.Context, runID string, rec journal.Record) error {
	if err := s.Store.Append(ctx, runID, rec); err != nil {
		return err
	}
	if s.failNext {
		s.failNext = false
		return errors.New("sync: input/output error")
	}
	return nil
}

// TestJournalWriteAfterAFailedSync: a record whose append failed after it
// reached the store does not make every later record out of sequence.
func TestJournalWriteAfterAFailedSync(t *testing.T) {
	fs, err := statefs.Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	store := &syncFailing{Store: fs}
	ctx := context.Background()
	j := engine.NewJournal(store, "r1", nil)
	if err := j.Write(ctx, journal.Record{Type: journal.THeader, Header: &journal.Header{RunID: "r1", Started: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	store.failNext = true
	if err := j.Write(ctx, journal.Record{Type: journal.TIntent, Step: "s"}); err == nil {
		t.Fatal("the failed append was not reported")
	}
	if err := j.Write(ctx, journal.Record{Type: journal.TFailed, Step: "s", Error: "journal intent failed"}); err != nil {
		t.Fatalf("the record after a failed sync: %v", err)
	}
	recs, err := fs.Journal(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if err := journal.Verify(recs); err != nil || len(recs) != 3 {
		t.Fatalf("%d records (%v), want header, intent and failed", len(recs), err)
	}
}
