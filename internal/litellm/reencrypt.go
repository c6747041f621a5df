package litellm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/runbook-dev/runbook/internal/secret"
)

// atRestSource is one JSON column that holds encrypted values.
type atRestSource struct {
	table  string // unquoted, as reports name it
	keyCol string
	col    string
	where  string
	// callbackVars: only strings inside "callback_vars" objects, at any
	// depth, are encrypted (key, team and user metadata). Otherwise every
	// top-level string is (LiteLLM encrypts each string it stores there).
	callbackVars bool
}

// atRestSources are the places LiteLLM encrypts values with the salt key,
// or the master key when no salt key is set.
var atRestSources = []atRestSource{
	{table: "LiteLLM_ProxyModelTable", keyCol: "model_id", col: "litellm_params"},
	{table: "LiteLLM_CredentialsTable", keyCol: "credential_id", col: "credential_values"},
	{table: "LiteLLM_Config", keyCol: "param_name", col: "param_value", where: `"param_name" = '` + ConfigEnvironmentVariables + `'`},
	{table: "LiteLLM_VerificationToken", keyCol: "token", col: "metadata", where: `"metadata"::text LIKE '%"callback_vars"%'`, callbackVars: true},
	{table: "LiteLLM_TeamTable", keyCol: "team_id", col: "metadata", where: `"metadata"::text LIKE '%"callback_vars"%'`, callbackVars: true},
	{table: "LiteLLM_UserTable", keyCol: "user_id", col: "metadata", where: `"metadata"::text LIKE '%"callback_vars"%'`, callbackVars: true},
}

// AtRestTables names the tables ScanAtRest and ReencryptAtRest read.
func AtRestTables() []string {
	out := make([]string, len(atRestSources))
	for i, s := range atRestSources {
		out[i] = s.table + "." + s.col
	}
	return out
}

// ValueState is what the keys make of one stored value.
type ValueState int

const (
	// StateOld: the old key opens it; it must be re-encrypted.
	StateOld ValueState = iota
	// StateNew: the new key opens it, in the wanted format; nothing to do.
	StateNew
	// StateNewFormat: the new key opens it but it must be rewritten in
	// another format.
	StateNewFormat
	// StateUndecryptable: neither key opens it.
	StateUndecryptable
)

func (s ValueState) String() string {
	switch s {
	case StateOld:
		return "old key"
	case StateNew:
		return "new key"
	case StateNewFormat:
		return "new key, other format"
	}
	return "undecryptable"
}

// AtRestValue locates one stored encrypted value. It holds no plaintext
// and no ciphertext.
type AtRestValue struct {
	Table  string // unquoted table name
	Row    string // the row's primary key
	Field  string // the JSON path in the column, such as "api_key" or "logging[0].callback_vars.langfuse_secret_key"
	Format Format
	State  ValueState
}

func (v AtRestValue) String() string {
	return fmt.Sprintf("%s row %s field %s (%s)", v.Table, v.Row, v.Field, v.Format)
}

// AtRestScan is what ScanAtRest or ReencryptAtRest found.
type AtRestScan struct {
	Values []AtRestValue
	// Rewritten counts values ReencryptAtRest wrote (zero for a scan).
	Rewritten int
	// Rows counts rows ReencryptAtRest updated.
	Rows int
}

// Count returns how many values are in state s.
func (s *AtRestScan) Count(st ValueState) int {
	n := 0
	for _, v := range s.Values {
		if v.State == st {
			n++
		}
	}
	return n
}

// Pending counts values a re-encryption would write.
func (s *AtRestScan) Pending() int { return s.Count(StateOld) + s.Count(StateNewFormat) }

// Undecryptable lists the values neither key opens.
func (s *AtRestScan) Undecryptable() []AtRestValue {
	var out []AtRestValue
	for _, v := range s.Values {
		if v.State == StateUndecryptable {
			out = append(out, v)
		}
	}
	return out
}

// ByTable counts values in state st per table.
func (s *AtRestScan) ByTable(st ValueState) map[string]int {
	out := map[string]int{}
	for _, v := range s.Values {
		if v.State == st {
			out[v.Table]++
		}
	}
	return out
}

// UndecryptableError lists stored values the old key cannot open (and the
// new key neither). Nothing was written.
type UndecryptableError struct {
	Values []AtRestValue
}

func (e *UndecryptableError) Error() string {
	const show = 20
	var b strings.Builder
	fmt.Fprintf(&b, "%d stored values open under neither the old nor the new master key: ", len(e.Values))
	for i, v := range e.Values {
		if i == show {
			fmt.Fprintf(&b, "; and %d more", len(e.Values)-show)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.String())
	}
	return b.String()
}

// ReencryptKeys are the keys of a re-encryption.
type ReencryptKeys struct {
	Old, New secret.Value
	// To is the format to write; FormatUnknown keeps each value's own.
	To Format
}

func (k ReencryptKeys) check() error {
	if k.Old.IsZero() || k.New.IsZero() {
		return errors.New("old and new keys are required")
	}
	if k.Old.Equal(k.New) {
		return errors.New("the old and new keys are the same value")
	}
	return nil
}

// ScanAtRest reads every encrypted value at rest and tells which key opens
// it. It only reads.
func ScanAtRest(ctx context.Context, q Querier, keys ReencryptKeys) (*AtRestScan, error) {
	if err := keys.check(); err != nil {
		return nil, fmt.Errorf("scan values at rest: %w", err)
	}
	scan := &AtRestScan{}
	for _, src := range atRestSources {
		if _, err := walkSource(ctx, q, src, keys, scan, false); err != nil {
			return nil, fmt.Errorf("scan values at rest: %w", err)
		}
	}
	return scan, nil
}

// ReencryptAtRest re-encrypts, inside tx, every value the old key opens so
// that the new key opens it, each in its own format or in keys.To. Values
// the new key already opens (in the wanted format) are left as they are, so
// running it again changes nothing. When some value opens under neither key
// it returns an *UndecryptableError and writes nothing, unless
// allowUndecryptable is set: then those values are left as they are. The
// rows are locked until the caller ends the transaction.
func ReencryptAtRest(ctx context.Context, tx pgx.Tx, keys ReencryptKeys, allowUndecryptable bool) (*AtRestScan, error) {
	if err := keys.check(); err != nil {
		return nil, fmt.Errorf("re-encrypt values at rest: %w", err)
	}
	scan := &AtRestScan{}
	var updates []rowUpdate
	for _, src := range atRestSources {
		u, err := walkSource(ctx, tx, src, keys, scan, true)
		if err != nil {
			return nil, fmt.Errorf("re-encrypt values at rest: %w", err)
		}
		updates = append(updates, u...)
	}
	if bad := scan.Undecryptable(); len(bad) > 0 && !allowUndecryptable {
		return scan, fmt.Errorf("re-encrypt values at rest: %w", &UndecryptableError{Values: bad})
	}
	if len(updates) == 0 {
		return scan, nil
	}
	b := &pgx.Batch{}
	for _, u := range updates {
		b.Queue(fmt.Sprintf(`UPDATE %s SET %s = $1 WHERE %s = $2`,
			pgx.Identifier{u.src.table}.Sanitize(), pgx.Identifier{u.src.col}.Sanitize(), pgx.Identifier{u.src.keyCol}.Sanitize()),
			u.json, u.key)
	}
	br := tx.SendBatch(ctx, b)
	for _, u := range updates {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return nil, fmt.Errorf("re-encrypt values at rest: update %s row %s: %w", u.src.table, u.key, err)
		}
		if tag.RowsAffected() != 1 {
			br.Close()
			return nil, fmt.Errorf("re-encrypt values at rest: update %s row %s: %d rows changed", u.src.table, u.key, tag.RowsAffected())
		}
		scan.Rows++
		scan.Rewritten += u.values
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("re-encrypt values at rest: %w", err)
	}
	return scan, nil
}

type rowUpdate struct {
	src    atRestSource
	key    string
	json   []byte
	values int
}

// walkSource reads one source's rows, records every encrypted value's state
// in scan and, when rewrite is set, returns the rows to update (reading them
// FOR UPDATE).
func walkSource(ctx context.Context, q Querier, src atRestSource, keys ReencryptKeys, scan *AtRestScan, rewrite bool) ([]rowUpdate, error) {
	sql := fmt.Sprintf(`SELECT %s, %s FROM %s WHERE %s IS NOT NULL`,
		pgx.Identifier{src.keyCol}.Sanitize(), pgx.Identifier{src.col}.Sanitize(),
		pgx.Identifier{src.table}.Sanitize(), pgx.Identifier{src.col}.Sanitize())
	if src.where != "" {
		sql += " AND " + src.where
	}
	sql += " ORDER BY 1"
	if rewrite {
		sql += " FOR UPDATE"
	}
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", src.table, err)
	}
	type raw struct {
		key string
		doc []byte
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (raw, error) {
		var x raw
		err := r.Scan(&x.key, &x.doc)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", src.table, err)
	}
	var updates []rowUpdate
	for _, row := range all {
		dec := json.NewDecoder(bytes.NewReader(row.doc))
		dec.UseNumber()
		var doc any
		if err := dec.Decode(&doc); err != nil {
			return nil, fmt.Errorf("read %s row %s: %s: %w", src.table, row.key, src.col, err)
		}
		w := walker{src: src, row: row.key, keys: keys, scan: scan, rewrite: rewrite}
		if src.callbackVars {
			doc = w.findCallbackVars(doc, "")
		} else if obj, ok := doc.(map[string]any); ok {
			w.strings(obj, "")
		}
		if w.err != nil {
			return nil, w.err
		}
		if w.changed == 0 {
			continue
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(doc); err != nil {
			return nil, fmt.Errorf("write %s row %s: %w", src.table, row.key, err)
		}
		updates = append(updates, rowUpdate{src: src, key: row.key, json: bytes.TrimSpace(buf.Bytes()), values: w.changed})
	}
	return updates, nil
}

type walker struct {
	src     atRestSource
	row     string
	keys    ReencryptKeys
	scan    *AtRestScan
	rewrite bool
	changed int
	err     error
}

// findCallbackVars walks a metadata document and handles the strings of
// every "callback_vars" object in it.
func (w *walker) findCallbackVars(v any, path string) any {
	switch x := v.(type) {
	case map[string]any:
		names := sortedKeys(x)
		for _, k := range names {
			p := joinPath(path, k)
			if cv, ok := x[k].(map[string]any); ok && k == "callback_vars" {
				w.strings(cv, p)
				continue
			}
			x[k] = w.findCallbackVars(x[k], p)
		}
	case []any:
		for i := range x {
			x[i] = w.findCallbackVars(x[i], path+"["+strconv.Itoa(i)+"]")
		}
	}
	return v
}

// strings handles every string value of obj: a value in an at-rest format
// is classified and, when rewriting, replaced.
func (w *walker) strings(obj map[string]any, path string) {
	for _, k := range sortedKeys(obj) {
		s, ok := obj[k].(string)
		if !ok {
			continue
		}
		f := DetectFormat(s)
		if f == FormatUnknown {
			continue // plain text: LiteLLM reads it as it is
		}
		v := AtRestValue{Table: w.src.table, Row: w.row, Field: joinPath(path, k), Format: f}
		var (
			plain []byte
			err   error
		)
		if plain, _, err = Decrypt(w.keys.Old, s); err == nil {
			v.State = StateOld
		} else if plain, _, err = Decrypt(w.keys.New, s); err == nil {
			v.State = StateNew
			if w.keys.To != FormatUnknown && w.keys.To != f && !sameLegacy(w.keys.To, f) {
				v.State = StateNewFormat
			}
		} else {
			v.State = StateUndecryptable
		}
		w.scan.Values = append(w.scan.Values, v)
		if !w.rewrite || (v.State != StateOld && v.State != StateNewFormat) {
			continue
		}
		to := w.keys.To
		if to == FormatUnknown {
			to = f
		}
		ct, err := Encrypt(w.keys.New, plain, to)
		if err != nil {
			w.err = fmt.Errorf("%s: %w", v, err)
			return
		}
		obj[k] = ct
		w.changed++
	}
}

// sameLegacy: a request for legacy output is met by either base64 alphabet.
func sameLegacy(a, b Format) bool {
	isLegacy := func(f Format) bool { return f == FormatLegacy || f == FormatLegacyStd }
	return isLegacy(a) && isLegacy(b)
}

func joinPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
