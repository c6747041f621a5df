// Package pg is the PostgreSQL state store, for teams whose runners share
// state: journals in tables, locks as session-level advisory locks, which
// the server releases when the holder's connection ends.
//
// Everything lives in the schema "runbook", created by Open if missing:
//
//	runbook.runs          one row per run: header facts, last hash and seq
//	runbook.journal       one row per record; (run_id, seq) and (run_id, prev)
//	                      unique, so no two records can follow the same one
//	runbook.lock_holders  who holds (or last held and did not release) a lock
package pg

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/state"
)

// Store is a PostgreSQL state store.
type Store struct {
	pool *pgxpool.Pool
	// lockConfig configures the dedicated connection each Lock holds.
	lockConfig *pgx.ConnConfig
}

var _ state.Store = (*Store)(nil)

// schemaLockKey serialises schema creation between runners opening the
// same database at once (CREATE ... IF NOT EXISTS races otherwise).
const schemaLockKey int64 = 0x72756e626f6f6b // "runbook"

const schemaSQL = `
CREATE SCHEMA IF NOT EXISTS runbook;
CREATE TABLE IF NOT EXISTS runbook.runs (
	run_id      text PRIMARY KEY,
	runbook     text NOT NULL,
	environment text NOT NULL,
	operator    text NOT NULL,
	target      text NOT NULL,
	started     timestamptz NOT NULL,
	updated     timestamptz NOT NULL,
	status      text NOT NULL,
	records     integer NOT NULL,
	last_seq    bigint NOT NULL,
	last_hash   text NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runbook.runs (started DESC);
CREATE TABLE IF NOT EXISTS runbook.journal (
	run_id text NOT NULL REFERENCES runbook.runs (run_id) ON DELETE CASCADE,
	seq    bigint NOT NULL,
	hash   text NOT NULL,
	prev   text NOT NULL,
	-- line is the record exactly as written, what Journal returns; record
	-- is the same for queries (jsonb cannot hold NUL: U+FFFD stands in).
	line   text NOT NULL,
	record jsonb NOT NULL,
	PRIMARY KEY (run_id, seq),
	UNIQUE (run_id, prev)
);
CREATE TABLE IF NOT EXISTS runbook.lock_holders (
	target      text PRIMARY KEY,
	lock_key    bigint NOT NULL,
	run_id      text NOT NULL,
	holder      jsonb NOT NULL,
	backend_pid integer NOT NULL,
	since       timestamptz NOT NULL
);
`

// Open connects to the database at url (a postgres:// URL or key=value
// string) and creates the runbook schema if it is missing.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx leaves any password out of its parse errors.
		return nil, fmt.Errorf("open postgres state: %w", err)
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "runbook"
	}
	lockConfig := cfg.ConnConfig.Copy()
	lockConfig.RuntimeParams["application_name"] = "runbook lock"
	// The server must notice a holder whose machine vanished (no FIN ever
	// comes) and end its session, which frees the lock.
	for k, v := range map[string]string{"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"} {
		if lockConfig.RuntimeParams[k] == "" {
			lockConfig.RuntimeParams[k] = v
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres state: %w", err)
	}
	s := &Store{pool: pool, lockConfig: lockConfig}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres state: %w", err)
	}
	return s, nil
}

func (s *Store) migrate(ctx context.Context) error {
	// Runners without the right to create anything can use a schema that
	// exists already.
	var ready bool
	err := s.pool.QueryRow(ctx, `SELECT to_regclass('runbook.runs') IS NOT NULL
		AND to_regclass('runbook.journal') IS NOT NULL
		AND to_regclass('runbook.lock_holders') IS NOT NULL`).Scan(&ready)
	if err != nil {
		return fmt.Errorf("look for the runbook schema: %w", err)
	}
	if ready {
		return nil
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLockKey); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schemaSQL)
		return err
	})
	if err != nil {
		return fmt.Errorf("create the runbook schema: %w", err)
	}
	return nil
}

// Pool is the store's connection pool, for tests and tools that query the
// tables.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close implements state.Store. Locks keep their own connections.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// Append implements state.Store in one transaction: the run row is locked
// (FOR UPDATE) while the record is checked against its last hash, and the
// unique keys on (run_id, seq) and (run_id, prev) make a fork impossible
// even so.
func (s *Store) Append(ctx context.Context, runID string, rec journal.Record) error {
	if err := s.append(ctx, runID, rec); err != nil {
		return fmt.Errorf("append to run %s: %w", runID, err)
	}
	return nil
}

func (s *Store) append(ctx context.Context, runID string, rec journal.Record) error {
	if runID == "" {
		return errors.New("empty run id")
	}
	isHeader := rec.Type == journal.THeader
	if isHeader && (rec.Header == nil || rec.Header.RunID != runID) {
		return errors.New("header does not name this run")
	}
	line, err := journal.EncodeLine(rec)
	if err != nil {
		return err
	}
	line = bytes.TrimSuffix(line, []byte{'\n'})
	status := journal.StatusRunning
	if rec.Type == journal.TEnd && rec.End != nil {
		status = rec.End.Status
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var last string
		var lastSeq int64
		if isHeader {
			if err := journal.CheckNext("", 0, rec); err != nil {
				// A header for an existing run is refused as such.
				var exists bool
				if qerr := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM runbook.runs WHERE run_id = $1)`, runID).Scan(&exists); qerr == nil && exists {
					return state.ErrRunExists
				}
				return fmt.Errorf("%w: %w", state.ErrBrokenChain, err)
			}
			h := rec.Header
			tag, err := tx.Exec(ctx, `INSERT INTO runbook.runs
				(run_id, runbook, environment, operator, target, started, updated, status, records, last_seq, last_hash)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, '')
				ON CONFLICT (run_id) DO NOTHING`,
				runID, h.Runbook, h.Environment, h.Operator, h.Target, h.Started, rec.Time, status)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return state.ErrRunExists
			}
		} else {
			err := tx.QueryRow(ctx, `SELECT last_hash, last_seq FROM runbook.runs WHERE run_id = $1 FOR UPDATE`, runID).Scan(&last, &lastSeq)
			if errors.Is(err, pgx.ErrNoRows) {
				return state.ErrNoRun
			}
			if err != nil {
				return err
			}
			if err := journal.CheckNext(last, lastSeq, rec); err != nil {
				return fmt.Errorf("%w: %w", state.ErrBrokenChain, err)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO runbook.journal (run_id, seq, hash, prev, line, record)
			VALUES ($1, $2, $3, $4, $5, $6)`,
			runID, rec.Seq, rec.Hash, rec.Prev, string(line), json.RawMessage(jsonbSafe(line)))
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
				return fmt.Errorf("%w: %w", state.ErrBrokenChain, err)
			}
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE runbook.runs
			SET last_hash = $2, last_seq = $3, updated = $4, status = $5, records = records + 1
			WHERE run_id = $1`, runID, rec.Hash, rec.Seq, rec.Time, status)
		return err
	})
}

// jsonbSafe returns the JSON text b with each \u0000 escape replaced by
// \ufffd: jsonb cannot hold NUL.
func jsonbSafe(b []byte) []byte {
	nul := []byte(`\u0000`)
	if !bytes.Contains(b, nul) {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 == len(b) {
			out = append(out, b[i])
			continue
		}
		if bytes.HasPrefix(b[i:], nul) {
			out = append(out, `\ufffd`...)
			i += len(nul) - 1
			continue
		}
		out = append(out, b[i], b[i+1]) // an escape: copy both, so "\\u0000" stays
		i++
	}
	return out
}

// Journal implements state.Store.
func (s *Store) Journal(ctx context.Context, runID string) ([]journal.Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT line FROM runbook.journal WHERE run_id = $1 ORDER BY seq`, runID)
	if err != nil {
		return nil, fmt.Errorf("read journal of run %s: %w", runID, err)
	}
	var recs []journal.Record
	var line []byte
	_, err = pgx.ForEachRow(rows, []any{&line}, func() error {
		rec, err := journal.DecodeLine(line)
		if err != nil {
			return fmt.Errorf("%w: record %d: %w", journal.ErrCorrupt, len(recs)+1, err)
		}
		recs = append(recs, rec)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read journal of run %s: %w", runID, err)
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("read journal of run %s: %w", runID, state.ErrNoRun)
	}
	return recs, nil
}

// liveLockSQL is true when the holder row h names a backend that holds
// the advisory lock h.lock_key now. A bigint advisory key shows in pg_locks
// split in two: its high half as classid, its low half as objid.
const liveLockSQL = `EXISTS (SELECT 1 FROM pg_locks l
	WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
	AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
	AND l.classid::bigint = ((h.lock_key >> 32) & 4294967295)
	AND l.objid::bigint = (h.lock_key & 4294967295)
	AND l.pid = h.backend_pid)`

// Runs implements state.Store. A run without an end record is "running"
// while a live session holds its target's advisory lock for it, and
// "interrupted" otherwise.
func (s *Store) Runs(ctx context.Context) ([]state.RunSummary, error) {
	rows, err := s.pool.Query(ctx, `SELECT r.run_id, r.status, r.records, hj.line, lj.line,
		EXISTS (SELECT 1 FROM runbook.lock_holders h WHERE h.target = r.target AND h.run_id = r.run_id AND `+liveLockSQL+`)
		FROM runbook.runs r
		JOIN runbook.journal hj ON hj.run_id = r.run_id AND hj.seq = 1
		JOIN runbook.journal lj ON lj.run_id = r.run_id AND lj.seq = r.last_seq`)
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	var out []state.RunSummary
	var (
		id, status      string
		records         int
		first, lastLine []byte
		live            bool
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &status, &records, &first, &lastLine, &live}, func() error {
		hdr, err := journal.DecodeLine(first)
		if err != nil || hdr.Header == nil {
			return fmt.Errorf("run %s: %w: bad header", id, journal.ErrCorrupt)
		}
		last, err := journal.DecodeLine(lastLine)
		if err != nil {
			return fmt.Errorf("run %s: %w: %w", id, journal.ErrCorrupt, err)
		}
		if status == journal.StatusRunning && !live {
			status = journal.StatusInterrupted
		}
		out = append(out, state.RunSummary{
			RunID:       id,
			Runbook:     hdr.Header.Runbook,
			Environment: hdr.Header.Environment,
			Operator:    hdr.Header.Operator,
			Started:     hdr.Header.Started,
			Updated:     last.Time,
			Status:      status,
			Records:     records,
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list runs: %w", err)
	}
	// Sorted here rather than in SQL: timestamptz keeps microseconds only.
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Started.Equal(out[j].Started) {
			return out[i].Started.After(out[j].Started)
		}
		return out[i].RunID > out[j].RunID
	})
	return out, nil
}

// lockKey maps a target to its advisory lock key.
func lockKey(target string) int64 {
	sum := sha256.Sum256([]byte("runbook lock\x00" + target))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}
