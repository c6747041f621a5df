// Package fs is the embedded state store: a local directory that needs no
// server. Each run's journal is a file of JSON lines under runs/, appended
// with O_APPEND and fsynced before Append returns; each lock is a file under
// locks/ held with flock(2), which the kernel releases when its holder dies.
//
//	DIR/runs/RUN_ID.jsonl   the journal of one run
//	DIR/locks/TARGET.lock   the lock of one target, holding its holder as JSON
//
// Several processes may share a directory on one machine. It must be a local
// file system: flock on NFS is not to be trusted.
package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/state"
)

// Store is a state directory.
type Store struct {
	dir string

	mu     sync.Mutex
	runs   map[string]*runFile
	closed bool
}

var _ state.Store = (*Store)(nil)

// runFile is an open journal and what this process knows of its end.
type runFile struct {
	mu      sync.Mutex
	f       *os.File
	closed  bool
	size    int64 // end of the last complete line known; -1 when unknown
	last    string
	lastSeq int64
}

// DefaultDir is the state directory used when none is given:
// $XDG_STATE_HOME/runbook, or ~/.local/state/runbook.
func DefaultDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "runbook"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the state directory: %w", err)
	}
	return filepath.Join(home, ".local", "state", "runbook"), nil
}

// Open opens the state directory dir, creating it (mode 0700) if needed.
func Open(dir string) (*Store, error) {
	for _, d := range []string{dir, filepath.Join(dir, "runs"), filepath.Join(dir, "locks")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("open state directory: %w", err)
		}
	}
	return &Store{dir: dir, runs: map[string]*runFile{}}, nil
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// validRunID keeps run ids usable as file names.
func validRunID(id string) error {
	if id == "" || len(id) > 200 || id[0] == '.' {
		return fmt.Errorf("invalid run id %q", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("invalid run id %q", id)
		}
	}
	return nil
}

func (s *Store) journalPath(runID string) string {
	return filepath.Join(s.dir, "runs", runID+".jsonl")
}

func (s *Store) run(runID string) (*runFile, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("state store is closed")
	}
	rf := s.runs[runID]
	if rf == nil {
		rf = &runFile{size: -1}
		s.runs[runID] = rf
	}
	return rf, nil
}

// Append implements state.Store. Writers in several processes are
// serialised by an flock on the journal file held for the length of one
// Append; each re-reads what others appended since it last looked.
func (s *Store) Append(ctx context.Context, runID string, rec journal.Record) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("append to run %s: %w", runID, err)
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validRunID(runID); err != nil {
		return err
	}
	if rec.Type == journal.THeader && (rec.Header == nil || rec.Header.RunID != runID) {
		return errors.New("header does not name this run")
	}
	rf, err := s.run(runID)
	if err != nil {
		return err
	}
	rf.mu.Lock()
	defer rf.mu.Unlock()
	if rf.closed {
		return errors.New("state store is closed")
	}
	if rf.f == nil {
		path := s.journalPath(runID)
		if rec.Type == journal.THeader {
			f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				return err
			}
			rf.f = f
		} else {
			f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
			if errors.Is(err, os.ErrNotExist) {
				return state.ErrNoRun
			}
			if err != nil {
				return err
			}
			rf.f = f
		}
	}
	if err := flock(rf.f, syscall.LOCK_EX); err != nil {
		return err
	}
	defer flock(rf.f, syscall.LOCK_UN) //nolint:errcheck // closing or the next flock settles it
	if err := rf.catchUp(); err != nil {
		return err
	}

	if rec.Type == journal.THeader && rf.lastSeq > 0 {
		return state.ErrRunExists
	}
	if rec.Type != journal.THeader && rf.lastSeq == 0 {
		return state.ErrNoRun
	}
	if err := journal.CheckNext(rf.last, rf.lastSeq, rec); err != nil {
		return fmt.Errorf("%w: %w", state.ErrBrokenChain, err)
	}
	line, err := journal.EncodeLine(rec)
	if err != nil {
		return err
	}
	if _, err := rf.f.Write(line); err != nil {
		rf.size = -1 // a torn line may be there: re-read and cut it next time
		return err
	}
	if err := rf.f.Sync(); err != nil {
		rf.size = -1
		return err
	}
	if rec.Type == journal.THeader {
		// The file is new (or held nothing whole): make its name durable.
		if err := syncDir(filepath.Dir(rf.f.Name())); err != nil {
			rf.size = -1
			return err
		}
	}
	rf.size += int64(len(line))
	rf.last, rf.lastSeq = rec.Hash, rec.Seq
	return nil
}

// catchUp brings rf up to the end of the file: it reads the lines other
// processes appended, checks that they chain, and cuts a torn final line
// (a write that a crash interrupted). The caller holds the file's flock.
func (rf *runFile) catchUp() error {
	fi, err := rf.f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if size == rf.size {
		return nil
	}
	if rf.size < 0 || size < rf.size {
		rf.size, rf.last, rf.lastSeq = 0, "", 0
	}
	data := make([]byte, size-rf.size)
	if _, err := rf.f.ReadAt(data, rf.size); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	recs, complete, err := journal.DecodeLines(data)
	if err != nil {
		rf.size = -1
		return fmt.Errorf("%w: %w", journal.ErrCorrupt, err)
	}
	last, lastSeq := rf.last, rf.lastSeq
	for _, r := range recs {
		if err := journal.CheckNext(last, lastSeq, r); err != nil {
			rf.size = -1
			return fmt.Errorf("%w: %w", journal.ErrCorrupt, err)
		}
		last, lastSeq = r.Hash, r.Seq
	}
	rf.size += int64(complete)
	rf.last, rf.lastSeq = last, lastSeq
	if rf.size < size {
		// A torn final line: cut it before anything follows it.
		if err := rf.f.Truncate(rf.size); err != nil {
			rf.size = -1
			return fmt.Errorf("cut torn journal line: %w", err)
		}
		if err := rf.f.Sync(); err != nil {
			rf.size = -1
			return fmt.Errorf("cut torn journal line: %w", err)
		}
	}
	return nil
}

// Journal implements state.Store. A torn final line is left out.
func (s *Store) Journal(ctx context.Context, runID string) ([]journal.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := validRunID(runID); err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	data, err := os.ReadFile(s.journalPath(runID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read journal of run %s: %w", runID, state.ErrNoRun)
	}
	if err != nil {
		return nil, fmt.Errorf("read journal of run %s: %w", runID, err)
	}
	recs, _, err := journal.DecodeLines(data)
	if err != nil {
		return nil, fmt.Errorf("read journal of run %s: %w: %w", runID, journal.ErrCorrupt, err)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("read journal of run %s: %w", runID, state.ErrNoRun)
	}
	return recs, nil
}

// Runs implements state.Store. It reads each journal's header and last
// record. A run whose journal has no end record is "running" while a live
// process holds its target's lock for it, and "interrupted" otherwise.
func (s *Store) Runs(ctx context.Context) ([]state.RunSummary, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "runs"))
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	var out []state.RunSummary
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		id, ok := strings.CutSuffix(e.Name(), ".jsonl")
		if !ok || e.IsDir() || validRunID(id) != nil {
			continue
		}
		sum, ok, err := s.summarize(id)
		if err != nil {
			return nil, fmt.Errorf("list runs: %w", err)
		}
		if ok {
			out = append(out, sum)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Started.Equal(out[j].Started) {
			return out[i].Started.After(out[j].Started)
		}
		return out[i].RunID > out[j].RunID
	})
	return out, nil
}

func (s *Store) summarize(runID string) (state.RunSummary, bool, error) {
	data, err := os.ReadFile(s.journalPath(runID))
	if errors.Is(err, os.ErrNotExist) {
		return state.RunSummary{}, false, nil
	}
	if err != nil {
		return state.RunSummary{}, false, err
	}
	// Only complete lines count; the first is the header, the last tells
	// whether the run ended.
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	n := bytes.Count(data, []byte{'\n'})
	if n == 0 {
		return state.RunSummary{}, false, nil // created, header not written
	}
	first := data[:bytes.IndexByte(data, '\n')]
	lastStart := bytes.LastIndexByte(data[:len(data)-1], '\n') + 1
	hdr, err := journal.DecodeLine(first)
	if err != nil || hdr.Type != journal.THeader || hdr.Header == nil {
		return state.RunSummary{}, false, fmt.Errorf("run %s: %w: bad header", runID, journal.ErrCorrupt)
	}
	last, err := journal.DecodeLine(data[lastStart:])
	if err != nil {
		return state.RunSummary{}, false, fmt.Errorf("run %s: %w: %w", runID, journal.ErrCorrupt, err)
	}
	sum := state.RunSummary{
		RunID:       runID,
		Runbook:     hdr.Header.Runbook,
		Environment: hdr.Header.Environment,
		Operator:    hdr.Header.Operator,
		Started:     hdr.Header.Started,
		Updated:     last.Time,
		Status:      journal.StatusRunning,
		Records:     n,
	}
	if last.Type == journal.TEnd && last.End != nil {
		sum.Status = last.End.Status
	} else if !s.heldBy(hdr.Header.Target, runID) {
		sum.Status = journal.StatusInterrupted
	}
	return sum, true, nil
}
