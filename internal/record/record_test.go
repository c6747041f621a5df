package record

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
)

var update = flag.Bool("update", false, "rewrite golden files")

func sampleJournal(t *testing.T) []journal.Record {
	t.Helper()
	t0 := time.Date(2026, 11, 28, 7, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	began := func(ms int) *time.Time { b := at(ms); return &b }
	recs := []journal.Record{
		{Type: journal.THeader, Time: t0, Header: &journal.Header{
			RunID: "20261128-070000-abcd", Runbook: "compromise-master", RunbookFile: "/r/compromise-master.yaml",
			RunbookDigest: "sha256:aa", InventoryFile: "/i/production.yaml", InventoryDigest: "sha256:bb",
			Environment: "production", Target: "env:production", Inputs: map[string]string{"reason": "key in a public repo | oops"},
			Reason: "key in a public repo | oops", Operator: "alice", Hostname: "bastion", PID: 42, Started: t0,
			Phases: []journal.Phase{{Name: "contain", Target: "5m0s", Steps: []string{"stop"}}, {Name: "rotate", Target: "1ms", Steps: []string{"newkey"}}, {Name: "recover", Target: "30m0s", Steps: []string{"start"}}},
			Steps:  []journal.StepInfo{{ID: "stop", Kind: "service.stop", Phase: "contain"}, {ID: "newkey", Kind: "vault.master_key", Phase: "rotate"}, {ID: "start", Kind: "service.start", Phase: "recover"}},
		}},
		{Type: journal.TIntent, Time: at(100), Step: "stop", Host: "gw1", Change: "stop litellm (active)", Attempt: 1},
		{Type: journal.TDone, Time: at(150), Step: "stop", Host: "gw1", Change: "stop litellm (active)", Attempt: 1, Began: began(90)},
		{Type: journal.TOK, Time: at(120), Step: "stop", Host: "gw2", Began: began(95)},
		{Type: journal.TIntent, Time: at(200), Step: "newkey", Change: "write a new master key", Attempt: 1},
		{Type: journal.TDone, Time: at(260), Step: "newkey", Change: "write a new master key", Outputs: map[string]string{"version": "3"}, Attempt: 1, Began: began(180)},
		{Type: journal.TNote, Time: at(261), Step: "newkey", Note: &journal.Note{Kind: NoteFingerprint, Fields: map[string]string{"name": "master key (new)", "fingerprint": "sha256:0123456789abcdef"}}},
		{Type: journal.TNote, Time: at(262), Step: "newkey", Note: &journal.Note{Kind: NoteFollowUp, Text: "Review audit logs for the exposure window"}},
		{Type: journal.TNote, Time: at(263), Step: "newkey", Note: &journal.Note{Kind: "exposure_report", Text: "ADDRESS      REQUESTS\n203.0.113.7  10\n", Fields: map[string]string{"requests": "10"}}},
		{Type: journal.TFailed, Time: at(400), Step: "start", Host: "gw1", Error: "start litellm on gw1: exit 1", Began: began(300)},
		{Type: journal.TEnd, Time: at(410), End: &journal.End{Status: journal.StatusFailed, Error: "step start failed"}},
	}
	prev := ""
	for i := range recs {
		recs[i] = journal.Seal(prev, journal.FirstSeq+int64(i), recs[i])
		prev = recs[i].Hash
	}
	return recs
}

func TestBuildFromJournal(t *testing.T) {
	recs := sampleJournal(t)
	r, err := Build(recs)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != journal.StatusFailed || !r.Journal.Verified || r.Journal.FinalHash != recs[len(recs)-1].Hash {
		t.Fatalf("status %s verified %v hash %s", r.Status, r.Journal.Verified, r.Journal.FinalHash)
	}
	if len(r.Changes) != 2 || len(r.Errors) != 2 || len(r.Fingerprints) != 1 || len(r.FollowUps) != 1 {
		t.Fatalf("changes %d errors %d fingerprints %d follow-ups %d", len(r.Changes), len(r.Errors), len(r.Fingerprints), len(r.FollowUps))
	}
	want := map[string]struct {
		d   time.Duration
		met string
	}{"contain": {60 * time.Millisecond, "yes"}, "rotate": {83 * time.Millisecond, "no"}, "recover": {100 * time.Millisecond, "yes"}}
	for _, ph := range r.Phases {
		w := want[ph.Name]
		if time.Duration(ph.Duration) != w.d || ph.Met != w.met {
			t.Errorf("phase %s: %v %s, want %v %s", ph.Name, time.Duration(ph.Duration), ph.Met, w.d, w.met)
		}
	}
	if !strings.HasPrefix(r.BaseName(), "20261128T070000Z-compromise-master-20261128-070000-abcd") {
		t.Errorf("base name %s", r.BaseName())
	}
}

func TestTamperedJournalIsMarked(t *testing.T) {
	recs := sampleJournal(t)
	recs[2].Change = "something else"
	r, err := Build(recs)
	if err != nil {
		t.Fatal(err)
	}
	if r.Journal.Verified || !strings.Contains(string(r.Markdown()), "NOT verified") {
		t.Fatal("a tampered journal is reported as verified")
	}
}

func TestGoldenRenderings(t *testing.T) {
	r, err := Build(sampleJournal(t))
	if err != nil {
		t.Fatal(err)
	}
	js, err := r.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("record JSON does not parse: %v", err)
	}
	for name, got := range map[string][]byte{"record.md.golden": r.Markdown(), "record.json.golden": js} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run 'make golden')", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the golden file (run 'make golden' if intended):\n%s", name, got)
		}
	}
}

func TestWriteIsAtomicAndNamed(t *testing.T) {
	r, err := Build(sampleJournal(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	js, md, err := r.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{js, md} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("records dir holds %d entries, want 2 (no temporary files left)", len(ents))
	}
}
