package fs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/runbook-dev/runbook/internal/state"
)

// A lock file holds the JSON of its holder while the lock is held, and is
// emptied by Release. Finding a holder in it after taking the flock means
// that holder died (or exited) without releasing: the kernel dropped its
// flock with its last file descriptor.
//
// Lock files are never removed: removing one while another process waits
// to flock the same path would let two holders lock two different files.

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// lockName turns a target into a file name: its safe characters, for people
// reading the directory, and a digest of the whole, so that targets that
// differ only in unsafe characters get different files.
func lockName(target string) string {
	var b strings.Builder
	for _, c := range target {
		if b.Len() >= 64 {
			break
		}
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	sum := sha256.Sum256([]byte(target))
	return strings.TrimLeft(b.String(), ".") + "-" + hex.EncodeToString(sum[:6]) + ".lock"
}

func (s *Store) lockPath(target string) string {
	return filepath.Join(s.dir, "locks", lockName(target))
}

// lockTries and lockPause bound how long Lock keeps trying when the flock
// is taken: another process's Runs holds a shared flock for an instant while
// it looks whether a run is live, and that must not read as "held".
const (
	lockTries = 10
	lockPause = 10 * time.Millisecond
)

// Lock implements state.Store.
func (s *Store) Lock(ctx context.Context, target string, holder state.Holder) (state.Lock, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if target == "" {
		return nil, errors.New("lock: empty target")
	}
	holderJSON, err := json.Marshal(holder)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", target, err)
	}
	path := s.lockPath(target)
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", target, err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		if err := syncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", target, err)
		}
	}
	for try := 1; ; try++ {
		err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", target, err)
		}
		if try == lockTries {
			defer f.Close()
			h, _ := readHolder(f)
			if h == nil {
				// Between its flock and its write: no name to give yet.
				h = &state.Holder{}
			}
			return nil, &state.LockHeldError{Target: target, Holder: *h}
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(lockPause):
		}
	}
	prev, _ := readHolder(f)
	fail := func(err error) (state.Lock, error) {
		f.Close() // drops the flock
		return nil, fmt.Errorf("lock %s: write holder: %w", target, err)
	}
	if err := f.Truncate(0); err != nil {
		return fail(err)
	}
	if _, err := f.WriteAt(append(holderJSON, '\n'), 0); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	return &fileLock{f: f, target: target, tookOver: prev}, nil
}

// readHolder reads the holder in a lock file; nil if it is empty or holds
// no whole holder (a write cut short).
func readHolder(f *os.File) (*state.Holder, error) {
	data, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		return nil, err
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, nil
	}
	var h state.Holder
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// heldBy reports whether a live process holds the lock on target for run
// runID. It takes a shared flock for an instant to find out, and so never
// disturbs the holder's file.
func (s *Store) heldBy(target, runID string) bool {
	if target == "" {
		return false
	}
	f, err := os.Open(s.lockPath(target))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := flock(f, syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		flock(f, syscall.LOCK_UN) //nolint:errcheck // Close releases it too
		return false
	}
	h, _ := readHolder(f)
	return h != nil && h.RunID == runID
}

type fileLock struct {
	mu       sync.Mutex
	f        *os.File
	target   string
	tookOver *state.Holder
}

var _ state.Lock = (*fileLock)(nil)

func (l *fileLock) TookOver() *state.Holder { return l.tookOver }

// Release empties the lock file, so that the next holder does not take it
// for a dead one's, and closes it, which drops the flock.
func (l *fileLock) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	err := f.Truncate(0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release lock %s: %w", l.target, err)
	}
	return nil
}

// Close implements state.Store: it closes the journals this Store has open.
// Locks stay held until released.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, rf := range s.runs {
		rf.mu.Lock()
		rf.closed = true
		if rf.f != nil {
			errs = append(errs, rf.f.Close())
			rf.f = nil
		}
		rf.mu.Unlock()
	}
	s.runs = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close state store: %w", err)
	}
	return nil
}
