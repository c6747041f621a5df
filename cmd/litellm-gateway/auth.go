package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/litellm"
)

// keyRow is the part of a "LiteLLM_VerificationToken" row the gateway
// checks.
type keyRow struct {
	Token     string
	KeyName   *string
	KeyAlias  *string
	Spend     float64
	Expires   *time.Time
	Models    []string
	Metadata  map[string]any
	Blocked   *bool
	UserID    *string
	TeamID    *string
	MaxBudget *float64
	CreatedAt *time.Time
	UpdatedAt *time.Time
}

const keyColumns = `token, key_name, key_alias, spend, expires, models, metadata, blocked,
	user_id, team_id, max_budget, created_at, updated_at`

func scanKey(row pgx.Row) (*keyRow, error) {
	var k keyRow
	err := row.Scan(&k.Token, &k.KeyName, &k.KeyAlias, &k.Spend, &k.Expires, &k.Models, &k.Metadata,
		&k.Blocked, &k.UserID, &k.TeamID, &k.MaxBudget, &k.CreatedAt, &k.UpdatedAt)
	if err != nil {
		return nil, err
	}
	return &k, nil
}

// cachedKey is a key as the gateway remembers it. For a key accepted
// through a grace row, hash is the old key's hash, row the active key's row
// and revokeAt the end of the grace period.
type cachedKey struct {
	hash     string
	row      *keyRow
	revokeAt time.Time
}

// keyCache holds successful lookups for the life of the process, as
// LiteLLM's per-instance cache does: a row changed in the database while the
// gateway runs keeps its old meaning here until the gateway restarts.
type keyCache struct {
	mu sync.RWMutex
	m  map[string]*cachedKey
}

func (c *keyCache) get(hash string) *cachedKey {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[hash]
}

func (c *keyCache) put(k *cachedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*cachedKey{}
	}
	c.m[k.hash] = k
}

func (c *keyCache) drop(hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, hash)
	for h, k := range c.m {
		if k.row != nil && k.row.Token == hash {
			delete(c.m, h) // grace entries pointing at it
		}
	}
}

// caller is who made a request.
type caller struct {
	master bool
	hash   string  // token hash of the key used (the master key's too)
	key    *keyRow // nil for the master key
}

// authError is an authentication failure answered with 401.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

var errNotFound = errors.New("not found")

// bearer extracts the key from the request, as LiteLLM reads it:
// "Authorization: Bearer KEY", or the x-litellm-api-key header.
func bearer(r *http.Request) string {
	if v := r.Header.Get("x-litellm-api-key"); v != "" {
		return strings.TrimSpace(strings.TrimPrefix(v, "Bearer "))
	}
	v := r.Header.Get("Authorization")
	if v == "" {
		return ""
	}
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return strings.TrimSpace(v)
}

func (s *server) authenticate(ctx context.Context, r *http.Request) (*caller, error) {
	key := bearer(r)
	if key == "" {
		return nil, &authError{"Authentication Error, No api key passed in."}
	}
	if subtle.ConstantTimeCompare([]byte(key), s.masterKey) == 1 {
		return &caller{master: true, hash: s.masterHash}, nil
	}
	if !strings.HasPrefix(key, litellm.KeyPrefix) {
		return nil, &authError{"Authentication Error, LiteLLM Virtual Key expected. Received a value that does not start with 'sk-'."}
	}
	hash := litellm.HashToken(key)
	ck := s.cache.get(hash)
	if ck == nil {
		if s.db == nil {
			return nil, &authError{"Authentication Error, Invalid proxy server token passed. No database connected."}
		}
		var err error
		ck, err = s.lookupKey(ctx, hash)
		if errors.Is(err, errNotFound) {
			return nil, &authError{"Authentication Error, Invalid proxy server token passed. Unable to find token in cache or `LiteLLM_VerificationTokenTable`"}
		}
		if err != nil {
			return nil, err
		}
		s.cache.put(ck)
	}
	now := time.Now().UTC()
	if !ck.revokeAt.IsZero() && !now.Before(ck.revokeAt) {
		return nil, &authError{"Authentication Error, Invalid proxy server token passed. The key was rotated and its grace period has ended."}
	}
	row := ck.row
	if row.Blocked != nil && *row.Blocked {
		return nil, &authError{"Authentication Error, Key is blocked. Update via `/key/unblock` if you're admin."}
	}
	if row.Expires != nil && !now.Before(*row.Expires) {
		return nil, &authError{fmt.Sprintf("Authentication Error - Expired Key. Key Expiry time %s and current time %s",
			row.Expires.Format(time.RFC3339), now.Format(time.RFC3339))}
	}
	return &caller{hash: hash, key: row}, nil
}

// lookupKey finds a key by hash in "LiteLLM_VerificationToken", or else as
// an old key still inside its grace period in
// "LiteLLM_DeprecatedVerificationToken", which then stands for its active
// key.
func (s *server) lookupKey(ctx context.Context, hash string) (*cachedKey, error) {
	row, err := scanKey(s.db.QueryRow(ctx, `SELECT `+keyColumns+` FROM "LiteLLM_VerificationToken" WHERE token = $1`, hash))
	if err == nil {
		return &cachedKey{hash: hash, row: row}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("look up key: %w", err)
	}
	var active string
	var revokeAt time.Time
	err = s.db.QueryRow(ctx, `SELECT active_token_id, revoke_at FROM "LiteLLM_DeprecatedVerificationToken" WHERE token = $1`, hash).
		Scan(&active, &revokeAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up deprecated key: %w", err)
	}
	if !time.Now().UTC().Before(revokeAt) {
		return nil, errNotFound
	}
	row, err = scanKey(s.db.QueryRow(ctx, `SELECT `+keyColumns+` FROM "LiteLLM_VerificationToken" WHERE token = $1`, active))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up active key of deprecated key: %w", err)
	}
	return &cachedKey{hash: hash, row: row, revokeAt: revokeAt}, nil
}

// allowsModel reports whether the caller may use model.
func (c *caller) allowsModel(model string) bool {
	if c.master || c.key == nil || len(c.key.Models) == 0 {
		return true
	}
	for _, m := range c.key.Models {
		if m == model || m == "*" || m == "all-proxy-models" {
			return true
		}
	}
	return false
}
