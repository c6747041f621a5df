package vault

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// The runner's conventions for keys it rotates in KV v2. Each version's data
// holds the key and plain fields saying which run wrote it and in which
// state; the path's custom metadata says which version is current. A
// version is written "pending" and made current once the gateways use it, so
// a reader never picks up a key the gateways do not know yet, and every
// earlier version stays for rollback.
const (
	FieldRunID           = "run_id"           // data: the run that wrote the version
	FieldState           = "state"            // data: StatePending or StateCurrent
	FieldPreviousVersion = "previous_version" // data: the version current when this one was written
	StatePending         = "pending"
	StateCurrent         = "current"

	MetaCurrentVersion = "current_version" // custom metadata: the version in use
	MetaPendingVersion = "pending_version" // custom metadata: a version written but not yet current
	MetaRotatedAt      = "rotated_at"      // custom metadata: RFC 3339 time of the last write
	MetaRotatedByRun   = "rotated_by_run"  // custom metadata: the run that made it
	MetaPromotedAt     = "promoted_at"
	MetaPromotedByRun  = "promoted_by_run"
)

// PlainFields are the data fields of the runner's convention that hold no
// secret; pass them to Read so they come back as plain strings.
var PlainFields = []string{FieldRunID, FieldState, FieldPreviousVersion}

// ErrNoCurrent means a path holds versions but none is current yet (the
// only ones are pending).
var ErrNoCurrent = errors.New("no current version")

// ReadCurrent returns the version of path that is in use: the one custom
// metadata names current; else the latest, unless it is pending, in which
// case the version that was current when it was written. Fields of the
// runner's convention come back plain, as do those named in plain.
func (c *Client) ReadCurrent(ctx context.Context, path string, plain ...string) (*Entry, error) {
	plain = append(append([]string(nil), plain...), PlainFields...)
	latest, err := c.Read(ctx, path, plain...)
	if err != nil && !errors.Is(err, ErrDeleted) {
		return nil, err
	}
	var md map[string]string
	if latest != nil {
		md = latest.CustomMetadata
	} else {
		m, merr := c.Metadata(ctx, path)
		if merr != nil {
			return nil, merr
		}
		md = m.CustomMetadata
	}
	if s := md[MetaCurrentVersion]; s != "" {
		n, perr := strconv.Atoi(s)
		if perr != nil || n <= 0 {
			return nil, fmt.Errorf("vault read %s: custom metadata %s is %q, not a version", c.Display(path), MetaCurrentVersion, s)
		}
		if latest != nil && latest.Version == n {
			return latest, nil
		}
		return c.ReadVersion(ctx, path, n, plain...)
	}
	if latest == nil {
		return nil, err
	}
	if latest.Plain[FieldState] != StatePending {
		return latest, nil
	}
	prev, _ := strconv.Atoi(latest.Plain[FieldPreviousVersion])
	if prev <= 0 {
		return nil, fmt.Errorf("vault read %s: %w (version %d is pending)", c.Display(path), ErrNoCurrent, latest.Version)
	}
	return c.ReadVersion(ctx, path, prev, plain...)
}
