package pg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/state"
)

// Lock implements state.Store with pg_try_advisory_lock on a connection of
// its own, held until Release. The holder is written to lock_holders; a row
// found there on taking the lock belongs to a holder whose session ended
// without Release (its process died): that is the one TookOver names.
func (s *Store) Lock(ctx context.Context, target string, holder state.Holder) (state.Lock, error) {
	l, err := s.lock(ctx, target, holder)
	if err != nil {
		var held *state.LockHeldError
		if errors.As(err, &held) {
			return nil, err
		}
		return nil, fmt.Errorf("lock %s: %w", target, err)
	}
	return l, nil
}

func (s *Store) lock(ctx context.Context, target string, holder state.Holder) (state.Lock, error) {
	if target == "" {
		return nil, errors.New("empty target")
	}
	holderJSON, err := json.Marshal(holder)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, s.lockConfig)
	if err != nil {
		return nil, err
	}
	key := lockKey(target)
	// Taking the lock and writing the holder row, or finding the lock
	// taken and reading who has it, happen in one transaction holding the
	// target's gate: the holder's row is committed before anyone else gets
	// the gate, and Release deletes it under the gate too, so a runner
	// refused always reads the holder that refused it, however long the
	// holder took between taking the lock and writing its row.
	tx, err := conn.Begin(ctx)
	if err != nil {
		conn.Close(ctx)
		return nil, err
	}
	hi, lo := gateKey(key)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, hi, lo); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("wait for the lock's gate: %w", err)
	}
	var got bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	if !got {
		if testHookRefused != nil {
			testHookRefused()
		}
		h, found, err := readLiveHolder(ctx, tx, target)
		conn.Close(ctx) // ends the transaction, and with it the gate
		if err != nil {
			return nil, err
		}
		if !found {
			// A holder that does not take the gate (an older runner)
			// may not have written its row yet.
			if h, err = s.liveHolder(ctx, target); err != nil {
				return nil, err
			}
		}
		return nil, &state.LockHeldError{Target: target, Holder: h}
	}
	if testHookLocked != nil {
		testHookLocked()
	}
	var prev *state.Holder
	var prevJSON []byte
	err = tx.QueryRow(ctx, `SELECT holder FROM runbook.lock_holders WHERE target = $1`, target).Scan(&prevJSON)
	switch {
	case err == nil:
		var h state.Holder
		if json.Unmarshal(prevJSON, &h) == nil {
			prev = &h
		}
	case !errors.Is(err, pgx.ErrNoRows):
		conn.Close(ctx) // ends the session, and with it the lock
		return nil, err
	}
	_, err = tx.Exec(ctx, `INSERT INTO runbook.lock_holders (target, lock_key, run_id, holder, backend_pid, since)
		VALUES ($1, $2, $3, $4, pg_backend_pid(), $5)
		ON CONFLICT (target) DO UPDATE SET lock_key = EXCLUDED.lock_key, run_id = EXCLUDED.run_id,
			holder = EXCLUDED.holder, backend_pid = EXCLUDED.backend_pid, since = EXCLUDED.since`,
		target, key, holder.RunID, json.RawMessage(holderJSON), holder.Since)
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("record holder: %w", err)
	}
	return &advisoryLock{conn: conn, key: key, target: target, tookOver: prev}, nil
}

// gateKey is the target's gate: a transaction-level advisory lock in the
// two-int4 key space, apart from the bigint key space of the locks.
func gateKey(key int64) (int32, int32) {
	return int32(uint64(key) >> 32), int32(uint32(key))
}

// readLiveHolder reads the row of a live holder of target, if any.
func readLiveHolder(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, target string) (state.Holder, bool, error) {
	var b []byte
	err := q.QueryRow(ctx, `SELECT h.holder FROM runbook.lock_holders h
		WHERE h.target = $1 AND `+liveLockSQL, target).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
		return state.Holder{}, false, nil
	}
	if err != nil {
		return state.Holder{}, false, fmt.Errorf("read lock holder: %w", err)
	}
	var h state.Holder
	if err := json.Unmarshal(b, &h); err != nil {
		return state.Holder{}, false, fmt.Errorf("read lock holder: %w", err)
	}
	return h, true, nil
}

// liveHolder reads who holds the lock on target, for a holder that does
// not take the gate: it writes its row just after taking the lock, so give
// it a moment before answering with an empty holder.
func (s *Store) liveHolder(ctx context.Context, target string) (state.Holder, error) {
	for try := 0; ; try++ {
		h, found, err := readLiveHolder(ctx, s.pool, target)
		if err != nil || found {
			return h, err
		}
		if try == 20 {
			return state.Holder{}, nil
		}
		select {
		case <-ctx.Done():
			return state.Holder{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Set by tests only: testHookLocked runs once a runner has the lock and
// before it writes its holder row; testHookRefused once a runner found the
// lock taken and before it reads the holder.
var testHookLocked, testHookRefused func()

type advisoryLock struct {
	mu       sync.Mutex
	conn     *pgx.Conn
	key      int64
	target   string
	tookOver *state.Holder
}

var _ state.Lock = (*advisoryLock)(nil)

func (l *advisoryLock) TookOver() *state.Holder { return l.tookOver }

// Release removes the holder row, unlocks and closes the lock's connection
// (closing it would free the lock anyway).
func (l *advisoryLock) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return nil
	}
	conn := l.conn
	l.conn = nil
	// Under the gate (see lock): a runner refused meanwhile still reads
	// this holder's row.
	hi, lo := gateKey(l.key)
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, hi, lo); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM runbook.lock_holders WHERE target = $1 AND backend_pid = pg_backend_pid()`, l.target); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
		return err
	})
	if cerr := conn.Close(ctx); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release lock %s: %w", l.target, err)
	}
	return nil
}
