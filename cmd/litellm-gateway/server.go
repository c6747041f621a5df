package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/runbook-dev/runbook/internal/litellm"
)

// version is what /health/readiness reports as litellm_version.
const version = "lab-gateway"

// server is the gateway's HTTP side. Its fields are set once at start.
type server struct {
	cfg        *config
	db         *pgxpool.Pool // nil without a database
	log        *slog.Logger
	masterKey  []byte
	masterHash string
	cache      keyCache
	atRest     atRestReport

	shuttingDown atomic.Bool
	started      time.Time
}

func newServer(cfg *config, db *pgxpool.Pool, log *slog.Logger) *server {
	return &server{
		cfg:        cfg,
		db:         db,
		log:        log,
		masterKey:  cfg.MasterKey.Bytes(),
		masterHash: litellm.HashToken(cfg.MasterKey.Reveal()),
		started:    time.Now(),
	}
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health/liveliness", s.liveliness)
	mux.HandleFunc("GET /health/liveness", s.liveliness)
	mux.HandleFunc("GET /health/readiness", s.readiness)
	mux.HandleFunc("GET /v1/models", s.authed(s.models))
	mux.HandleFunc("GET /models", s.authed(s.models))
	mux.HandleFunc("POST /chat/completions", s.authed(s.chat))
	mux.HandleFunc("POST /v1/chat/completions", s.authed(s.chat))
	mux.HandleFunc("POST /key/generate", s.authed(s.keyGenerate))
	mux.HandleFunc("GET /key/info", s.authed(s.keyInfo))
	mux.HandleFunc("POST /key/delete", s.authed(s.keyDelete))
	return mux
}

// writeJSON answers with v as JSON.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers in LiteLLM's error shape.
func writeError(w http.ResponseWriter, code int, typ, msg string) {
	writeJSON(w, code, map[string]any{"error": map[string]any{
		"message": msg,
		"type":    typ,
		"param":   "None",
		"code":    fmt.Sprint(code),
	}})
}

type authedHandler func(w http.ResponseWriter, r *http.Request, c *caller)

func (s *server) authed(h authedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := s.authenticate(r.Context(), r)
		var ae *authError
		if errors.As(err, &ae) {
			writeError(w, http.StatusUnauthorized, "auth_error", ae.msg)
			return
		}
		if err != nil {
			s.log.Error("authenticate request", "path", r.URL.Path, "err", err)
			writeError(w, http.StatusInternalServerError, "internal_server_error", "Internal Server Error, "+err.Error())
			return
		}
		h(w, r, c)
	}
}

func (s *server) liveliness(w http.ResponseWriter, r *http.Request) {
	if s.shuttingDown.Load() {
		writeJSON(w, http.StatusServiceUnavailable, "Shutting down")
		return
	}
	writeJSON(w, http.StatusOK, "I'm alive!")
}

// readiness reports the database state in "db" and always answers 200, as
// LiteLLM does; callers must read the field.
func (s *server) readiness(w http.ResponseWriter, r *http.Request) {
	db := "Not connected"
	var dbErr string
	if s.db != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		err := s.db.Ping(ctx)
		cancel()
		if err == nil {
			db = "connected"
		} else {
			db = "disconnected"
			dbErr = "database unreachable"
		}
	}
	status := "healthy"
	if s.shuttingDown.Load() {
		status = "shutting down"
	}
	body := map[string]any{
		"status":                 status,
		"db":                     db,
		"cache":                  nil,
		"litellm_version":        version,
		"success_callbacks":      []string{},
		"undecryptable_rows":     s.atRest.UndecryptableRows,
		"undecryptable_values":   s.atRest.UndecryptableValues,
		"decrypted_values":       s.atRest.DecryptedValues,
		"undecryptable_by_table": s.atRest.ByTable,
		"encrypted_with":         s.atRest.KeySource,
	}
	if dbErr != "" {
		body["db_error"] = dbErr
	}
	writeJSON(w, http.StatusOK, body)
}

// modelNames lists the models from the config file and the database.
func (s *server) modelNames(ctx context.Context) []string {
	set := map[string]bool{}
	for _, m := range s.cfg.Models {
		set[m] = true
	}
	if s.db != nil {
		rows, err := s.db.Query(ctx, `SELECT DISTINCT model_name FROM "LiteLLM_ProxyModelTable"`)
		if err == nil {
			for rows.Next() {
				var n string
				if rows.Scan(&n) == nil {
					set[n] = true
				}
			}
			rows.Close()
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (s *server) models(w http.ResponseWriter, r *http.Request, c *caller) {
	data := []map[string]any{}
	for _, n := range s.modelNames(r.Context()) {
		if !c.allowsModel(n) {
			continue
		}
		data = append(data, map[string]any{"id": n, "object": "model", "created": 1677610602, "owned_by": "openai"})
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": data, "object": "list"})
}

// clientIP is the caller's address: the TCP peer, or the first
// X-Forwarded-For entry when use_x_forwarded_for is set.
func (s *server) clientIP(r *http.Request) string {
	if s.cfg.UseXForwardedFor {
		if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
			return strings.TrimSpace(strings.Split(xff, ",")[0])
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

type chatRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string `json:"role"`
		Content any    `json:"content"`
	} `json:"messages"`
	User         string  `json:"user"`
	MockResponse *string `json:"mock_response"`
	MockDelay    float64 `json:"mock_delay"` // seconds, for drain tests
}

func randomID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *server) chat(w http.ResponseWriter, r *http.Request, c *caller) {
	start := time.Now().UTC()
	var req chatRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "Invalid JSON body")
		return
	}
	if req.Model == "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "model is required")
		return
	}
	if !c.allowsModel(req.Model) {
		writeError(w, http.StatusUnauthorized, "key_model_access_denied",
			fmt.Sprintf("key not allowed to access model. This key can only access models=%v. Tried to access %s", c.key.Models, req.Model))
		return
	}
	if names := s.modelNames(r.Context()); len(names) > 0 && !contains(names, req.Model) {
		writeError(w, http.StatusBadRequest, "invalid_request_error",
			fmt.Sprintf("Invalid model name passed in model=%s. Call `/v1/models` to view available models for your key.", req.Model))
		return
	}
	if req.MockDelay > 0 {
		select {
		case <-time.After(time.Duration(req.MockDelay * float64(time.Second))):
		case <-r.Context().Done():
			return
		}
	}
	content := "This is a canned answer from the lab gateway."
	if req.MockResponse != nil {
		content = *req.MockResponse
	}
	prompt := 0
	for _, m := range req.Messages {
		prompt += len(fmt.Sprint(m.Content))/4 + 4
	}
	completion := len(content)/4 + 1
	id := "chatcmpl-" + randomID()
	end := time.Now().UTC()
	spend := float64(prompt)*0.0000025 + float64(completion)*0.00001

	if s.db != nil {
		if err := s.logSpend(r.Context(), c, id, req, start, end, prompt, completion, spend, s.clientIP(r)); err != nil {
			// LiteLLM never fails a request over its spend log.
			s.log.Error("write spend log", "request_id", id, "err", err)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id":      id,
		"object":  "chat.completion",
		"created": end.Unix(),
		"model":   req.Model,
		"choices": []any{map[string]any{
			"index":         0,
			"message":       map[string]any{"role": "assistant", "content": content},
			"finish_reason": "stop",
		}},
		"usage": map[string]any{"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// logSpend writes the "LiteLLM_SpendLogs" row for a request and adds its
// cost to the key, as LiteLLM's spend writer does (LiteLLM batches these;
// the lab writes them before answering so tests see them at once).
func (s *server) logSpend(ctx context.Context, c *caller, id string, req chatRequest, start, end time.Time,
	prompt, completion int, spend float64, ip string) error {
	apiKey := c.hash
	var team, user any
	if c.master && !s.cfg.StoreMasterKeyHash {
		apiKey = litellm.MasterKeySpendLogKey
	}
	if c.key != nil {
		if c.key.TeamID != nil {
			team = *c.key.TeamID
		}
		if c.key.UserID != nil {
			user = *c.key.UserID
		}
	}
	if user == nil {
		user = req.User
	}
	meta := map[string]any{"user_api_key": apiKey, "status": "success"}
	if c.key != nil && c.key.KeyAlias != nil {
		meta["user_api_key_alias"] = *c.key.KeyAlias
	}
	mj, _ := json.Marshal(meta)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err := s.db.Exec(ctx, `INSERT INTO "LiteLLM_SpendLogs"
		(request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens,
		 "startTime", "endTime", request_duration_ms, model, model_group, custom_llm_provider, "user",
		 metadata, team_id, requester_ip_address, status)
		VALUES ($1, 'acompletion', $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 'openai', $11, $12, $13, $14, 'success')`,
		id, apiKey, spend, prompt+completion, prompt, completion, start, end,
		int(end.Sub(start).Milliseconds()), req.Model, user, mj, team, ip)
	if err != nil {
		return err
	}
	if c.key != nil {
		_, err = s.db.Exec(ctx, `UPDATE "LiteLLM_VerificationToken" SET spend = spend + $1 WHERE token = $2`, spend, c.key.Token)
	}
	return err
}
