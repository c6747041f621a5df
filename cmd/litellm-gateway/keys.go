package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

var durationRE = regexp.MustCompile(`^(\d+)(s|m|h|d|w|mo)$`)

// parseDuration reads LiteLLM's durations: "30s", "10m", "1h", "90d", "2w",
// "1mo".
func parseDuration(s string, from time.Time) (time.Time, error) {
	m := durationRE.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, fmt.Errorf("invalid duration %q", s)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return time.Time{}, fmt.Errorf("invalid duration %q", s)
	}
	switch m[2] {
	case "s":
		return from.Add(time.Duration(n) * time.Second), nil
	case "m":
		return from.Add(time.Duration(n) * time.Minute), nil
	case "h":
		return from.Add(time.Duration(n) * time.Hour), nil
	case "d":
		return from.AddDate(0, 0, n), nil
	case "w":
		return from.AddDate(0, 0, 7*n), nil
	default:
		return from.AddDate(0, n, 0), nil
	}
}

type generateRequest struct {
	Key       *string        `json:"key"`
	KeyAlias  *string        `json:"key_alias"`
	Duration  *string        `json:"duration"`
	Models    []string       `json:"models"`
	Metadata  map[string]any `json:"metadata"`
	MaxBudget *float64       `json:"max_budget"`
	TeamID    *string        `json:"team_id"`
	UserID    *string        `json:"user_id"`
	Blocked   *bool          `json:"blocked"`
}

func (s *server) needDB(w http.ResponseWriter) bool {
	if s.db == nil {
		writeError(w, http.StatusInternalServerError, "no_db_connection",
			"No connected db. Set DATABASE_URL to use key management.")
		return false
	}
	return true
}

func (s *server) keyGenerate(w http.ResponseWriter, r *http.Request, c *caller) {
	if !c.master {
		writeError(w, http.StatusUnauthorized, "auth_error", "Authentication Error, only the proxy admin (master key) can generate keys in the lab gateway")
		return
	}
	if !s.needDB(w) {
		return
	}
	var req generateRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "Invalid JSON body")
		return
	}
	var raw secret.Value
	if req.Key != nil {
		if !litellm.ValidCustomKey(*req.Key) {
			writeError(w, http.StatusBadRequest, "bad_request_error", "Invalid key format. LiteLLM Virtual Key must start with 'sk-'.")
			return
		}
		raw = secret.New(*req.Key)
	} else {
		var err error
		if raw, err = litellm.NewVirtualKey(); err != nil {
			writeError(w, http.StatusInternalServerError, "internal_server_error", err.Error())
			return
		}
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	var expires *time.Time
	if req.Duration != nil && *req.Duration != "" {
		t, err := parseDuration(*req.Duration, now)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request_error", err.Error())
			return
		}
		expires = &t
	}
	if req.Models == nil {
		req.Models = []string{}
	}
	if req.Metadata == nil {
		req.Metadata = map[string]any{}
	}
	mj, _ := json.Marshal(req.Metadata)
	hash := litellm.HashToken(raw.Reveal())
	keyName := litellm.KeyName(raw.Reveal())

	ctx := r.Context()
	if req.KeyAlias != nil && *req.KeyAlias != "" {
		var n int
		if err := s.db.QueryRow(ctx, `SELECT count(*) FROM "LiteLLM_VerificationToken" WHERE key_alias = $1`, *req.KeyAlias).Scan(&n); err != nil {
			s.dbError(w, "generate key", err)
			return
		}
		if n > 0 {
			writeError(w, http.StatusBadRequest, "bad_request_error",
				fmt.Sprintf("Unique key aliases across all keys are required. Key alias=%s already exists.", *req.KeyAlias))
			return
		}
	}
	_, err := s.db.Exec(ctx, `INSERT INTO "LiteLLM_VerificationToken"
		(token, key_name, key_alias, spend, expires, models, metadata, blocked, user_id, team_id, max_budget,
		 created_at, updated_at, created_by, updated_by, rotation_count)
		VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8, $9, $10, $11, $11, 'default_user_id', 'default_user_id', 0)`,
		hash, keyName, req.KeyAlias, expires, req.Models, mj, req.Blocked, req.UserID, req.TeamID, req.MaxBudget, now)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		writeError(w, http.StatusBadRequest, "bad_request_error", "Unable to create key: a key with this value already exists.")
		return
	}
	if err != nil {
		s.dbError(w, "generate key", err)
		return
	}
	s.log.Info("generated key", "token", secret.Fingerprint(raw.Reveal()), "key_alias", deref(req.KeyAlias), "team_id", deref(req.TeamID))
	writeJSON(w, http.StatusOK, map[string]any{
		"key":        raw.Reveal(), // returned once, as LiteLLM does
		"token":      hash,
		"token_id":   hash,
		"key_name":   keyName,
		"key_alias":  req.KeyAlias,
		"expires":    expires,
		"models":     req.Models,
		"metadata":   req.Metadata,
		"max_budget": req.MaxBudget,
		"team_id":    req.TeamID,
		"user_id":    req.UserID,
		"spend":      0.0,
		"created_by": "default_user_id",
		"created_at": now,
	})
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func (s *server) dbError(w http.ResponseWriter, op string, err error) {
	s.log.Error(op, "err", err)
	writeError(w, http.StatusInternalServerError, "internal_server_error", fmt.Sprintf("%s: %v", op, err))
}

// tokenOf turns a raw key or a token hash into the hash.
func tokenOf(k string) string {
	if litellm.IsHashedToken(k) {
		return k
	}
	return litellm.HashToken(k)
}

func infoOf(k *keyRow) map[string]any {
	return map[string]any{
		"key_name":   k.KeyName,
		"key_alias":  k.KeyAlias,
		"spend":      k.Spend,
		"expires":    k.Expires,
		"models":     k.Models,
		"metadata":   k.Metadata,
		"blocked":    k.Blocked,
		"user_id":    k.UserID,
		"team_id":    k.TeamID,
		"max_budget": k.MaxBudget,
		"created_at": k.CreatedAt,
		"updated_at": k.UpdatedAt,
	}
}

func (s *server) keyInfo(w http.ResponseWriter, r *http.Request, c *caller) {
	if !s.needDB(w) {
		return
	}
	param := r.URL.Query().Get("key")
	hash := c.hash
	if param != "" {
		hash = tokenOf(param)
	} else if c.master {
		writeError(w, http.StatusBadRequest, "bad_request_error", "key is required for the master key")
		return
	}
	if !c.master && hash != c.hash && (c.key == nil || hash != c.key.Token) {
		writeError(w, http.StatusForbidden, "auth_error", "You are not allowed to access this key's info.")
		return
	}
	row, err := scanKey(s.db.QueryRow(r.Context(), `SELECT `+keyColumns+` FROM "LiteLLM_VerificationToken" WHERE token = $1`, hash))
	if errors.Is(err, pgx.ErrNoRows) && c.key != nil && hash == c.hash {
		row, err = c.key, nil // a grace key asking about itself sees its active key
	}
	if errors.Is(err, pgx.ErrNoRows) {
		writeError(w, http.StatusNotFound, "not_found_error", "Key not found in database.")
		return
	}
	if err != nil {
		s.dbError(w, "key info", err)
		return
	}
	shown := param
	if shown == "" {
		shown = row.Token
	} else if !litellm.IsHashedToken(shown) {
		shown = hash // never echo a raw key
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": shown, "info": infoOf(row)})
}

type deleteRequest struct {
	Keys       []string `json:"keys"`
	KeyAliases []string `json:"key_aliases"`
}

func (s *server) keyDelete(w http.ResponseWriter, r *http.Request, c *caller) {
	if !c.master {
		writeError(w, http.StatusUnauthorized, "auth_error", "Authentication Error, only the proxy admin (master key) can delete keys in the lab gateway")
		return
	}
	if !s.needDB(w) {
		return
	}
	var req deleteRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "Invalid JSON body")
		return
	}
	if len(req.Keys) == 0 && len(req.KeyAliases) == 0 {
		writeError(w, http.StatusBadRequest, "bad_request_error", "keys or key_aliases is required")
		return
	}
	hashes := make([]string, 0, len(req.Keys))
	for _, k := range req.Keys {
		hashes = append(hashes, tokenOf(k))
	}
	ctx := r.Context()
	var deleted []string
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT token FROM "LiteLLM_VerificationToken"
			WHERE token = ANY($1) OR key_alias = ANY($2) FOR UPDATE`, hashes, req.KeyAliases)
		if err != nil {
			return err
		}
		found, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		if len(found) == 0 {
			return errNotFound
		}
		if _, err := tx.Exec(ctx, `INSERT INTO "LiteLLM_DeletedVerificationToken"
			(id, token, key_name, key_alias, spend, expires, models, user_id, team_id, metadata, blocked,
			 max_budget, created_at, created_by, updated_at, updated_by, rotation_count, last_rotation_at,
			 deleted_at, deleted_by, deleted_by_api_key)
			SELECT gen_random_uuid()::text, token, key_name, key_alias, spend, expires, models, user_id, team_id,
			 metadata, blocked, max_budget, created_at, created_by, updated_at, updated_by, rotation_count,
			 last_rotation_at, (now() AT TIME ZONE 'UTC'), 'default_user_id', $2
			FROM "LiteLLM_VerificationToken" WHERE token = ANY($1)`, found, c.hash); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM "LiteLLM_VerificationToken" WHERE token = ANY($1)`, found); err != nil {
			return err
		}
		deleted = found
		return nil
	})
	if errors.Is(err, errNotFound) {
		writeError(w, http.StatusNotFound, "not_found_error", "Failed to delete all keys. No matching keys found.")
		return
	}
	if err != nil {
		s.dbError(w, "delete keys", err)
		return
	}
	for _, h := range deleted {
		s.cache.drop(h)
	}
	s.log.Info("deleted keys", "count", len(deleted))
	out := req.KeyAliases
	for _, k := range req.Keys {
		out = append(out, tokenOf(k)) // never echo raw keys
	}
	writeJSON(w, http.StatusOK, map[string]any{"deleted_keys": out})
}
