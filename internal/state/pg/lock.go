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
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	if !got {
		conn.Close(ctx)
		h, err := s.liveHolder(ctx, target)
		if err != nil {
			return nil, err
		}
		return nil, &state.LockHeldError{Target: target, Holder: h}
	}
	var prev *state.Holder
	var prevJSON []byte
	err = conn.QueryRow(ctx, `SELECT holder FROM runbook.lock_holders WHERE target = $1`, target).Scan(&prevJSON)
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
	_, err = conn.Exec(ctx, `INSERT INTO runbook.lock_holders (target, lock_key, run_id, holder, backend_pid, since)
		VALUES ($1, $2, $3, $4, pg_backend_pid(), $5)
		ON CONFLICT (target) DO UPDATE SET lock_key = EXCLUDED.lock_key, run_id = EXCLUDED.run_id,
			holder = EXCLUDED.holder, backend_pid = EXCLUDED.backend_pid, since = EXCLUDED.since`,
		target, key, holder.RunID, json.RawMessage(holderJSON), holder.Since)
	if err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("record holder: %w", err)
	}
	return &advisoryLock{conn: conn, key: key, target: target, tookOver: prev}, nil
}

// liveHolder reads who holds the lock on target. The holder writes its row
// just after taking the lock: give it a moment before answering with an
// empty holder.
func (s *Store) liveHolder(ctx context.Context, target string) (state.Holder, error) {
	for try := 0; ; try++ {
		var b []byte
		err := s.pool.QueryRow(ctx, `SELECT h.holder FROM runbook.lock_holders h
			WHERE h.target = $1 AND `+liveLockSQL, target).Scan(&b)
		if err == nil {
			var h state.Holder
			if err := json.Unmarshal(b, &h); err != nil {
				return state.Holder{}, fmt.Errorf("read lock holder: %w", err)
			}
			return h, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return state.Holder{}, fmt.Errorf("read lock holder: %w", err)
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
	_, err := conn.Exec(ctx, `DELETE FROM runbook.lock_holders WHERE target = $1 AND backend_pid = pg_backend_pid()`, l.target)
	if err == nil {
		_, err = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, l.key)
	}
	if cerr := conn.Close(ctx); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("release lock %s: %w", l.target, err)
	}
	return nil
}
