package litellm

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Querier is what the read-only queries need: a pool, a connection or a
// transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// KeySelection says which virtual keys a re-issue takes. The filters that
// are set must all match (teams AND aliases AND age); with none set every
// key is taken.
type KeySelection struct {
	// Teams keeps keys whose team_id is listed.
	Teams []string
	// Aliases keeps keys whose key_alias is listed.
	Aliases []string
	// RotatedBefore keeps keys last rotated (or, never rotated, created)
	// before this time; zero keeps every age.
	RotatedBefore time.Time
	// Exclude drops keys whose updated_by is this marker: the keys a run has
	// already re-issued.
	Exclude string
}

// KeyRow is one selected virtual key: what re-issuing it needs to know,
// never a key value (the table holds only hashes).
type KeyRow struct {
	Token  string // the SHA-256 hex of the current key
	Alias  string // "" when the key has none
	TeamID string
	UserID string
	// GraceRows counts rows in "LiteLLM_DeprecatedVerificationToken" that
	// keep an earlier value of this key valid (or name this hash).
	GraceRows int
	// AliasShared reports that another key has the same alias.
	AliasShared bool
}

const selectKeysSQL = `
WITH k AS (
    SELECT token, key_alias, team_id, user_id, updated_by, created_at, last_rotation_at,
           count(*) OVER (PARTITION BY key_alias) AS alias_n
    FROM "LiteLLM_VerificationToken"
), g AS (
    SELECT t, count(*) AS n FROM (
        SELECT active_token_id AS t FROM "LiteLLM_DeprecatedVerificationToken"
        UNION ALL
        SELECT token FROM "LiteLLM_DeprecatedVerificationToken"
    ) x GROUP BY t
)
SELECT k.token, COALESCE(k.key_alias, ''), COALESCE(k.team_id, ''), COALESCE(k.user_id, ''),
       COALESCE(g.n, 0), k.key_alias IS NOT NULL AND k.alias_n > 1
FROM k LEFT JOIN g ON g.t = k.token
WHERE ($1::text[] IS NULL OR k.team_id = ANY($1))
  AND ($2::text[] IS NULL OR k.key_alias = ANY($2))
  AND ($3::timestamp IS NULL OR COALESCE(k.last_rotation_at, k.created_at, '-infinity') < $3)
  AND ($4::text = '' OR k.updated_by IS DISTINCT FROM $4)
ORDER BY k.token`

// SelectKeys lists the virtual keys sel takes, ordered by token hash. It
// only reads.
func SelectKeys(ctx context.Context, q Querier, sel KeySelection) ([]KeyRow, error) {
	var teams, aliases, before any
	if len(sel.Teams) > 0 {
		teams = sel.Teams
	}
	if len(sel.Aliases) > 0 {
		aliases = sel.Aliases
	}
	if !sel.RotatedBefore.IsZero() {
		before = sel.RotatedBefore.UTC()
	}
	rows, err := q.Query(ctx, selectKeysSQL, teams, aliases, before, sel.Exclude)
	if err != nil {
		return nil, fmt.Errorf("select virtual keys: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (KeyRow, error) {
		var k KeyRow
		var n int64
		err := r.Scan(&k.Token, &k.Alias, &k.TeamID, &k.UserID, &n, &k.AliasShared)
		k.GraceRows = int(n)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("select virtual keys: %w", err)
	}
	return out, nil
}

// Reissue replaces one virtual key's hash.
type Reissue struct {
	OldToken string
	NewToken string // HashToken of the new key
	KeyName  string // KeyName of the new key
}

// ReissueOptions say how ApplyReissue marks its changes.
type ReissueOptions struct {
	// Now is the time written to last_rotation_at, updated_at and
	// deleted_at (UTC is used, as LiteLLM's columns hold UTC).
	Now time.Time
	// By goes to updated_by, deleted_by and litellm_changed_by. SelectKeys
	// with Exclude set to it skips the keys changed here.
	By string
	// Grace, when positive, keeps each old hash valid until Now+Grace through
	// a row in "LiteLLM_DeprecatedVerificationToken", as LiteLLM's own
	// regeneration with a grace period does. Zero (the choice after a
	// compromise) leaves no old hash valid.
	Grace time.Duration
}

// ReissueResult counts what ApplyReissue changed.
type ReissueResult struct {
	// Updated counts keys whose hash was replaced.
	Updated int
	// Missing lists old hashes that were no longer in the table (a key
	// deleted or changed since it was selected); they were left alone.
	Missing []string
	// Audited counts rows copied to "LiteLLM_DeletedVerificationToken".
	Audited int
	// GraceRemoved counts grace rows deleted; GraceAdded those inserted.
	GraceRemoved int
	GraceAdded   int
	// JWTUpdated counts "LiteLLM_JWTKeyMapping" rows moved to a new hash.
	JWTUpdated int
}

// ApplyReissue replaces the hashes of the keys in rs inside tx, the caller's
// transaction, in a few set-based statements whatever the number of keys:
//   - each old row is copied to "LiteLLM_DeletedVerificationToken" for
//     audit;
//   - every grace row for an old hash is deleted (and, with Grace, one is
//     added for each old hash);
//   - token, key_name, rotation_count, last_rotation_at, updated_at and
//     updated_by change; every other column (alias, budgets, spend, models,
//     metadata, team, user, expiry, blocked) stays as it was;
//   - "LiteLLM_JWTKeyMapping" rows follow the new hash, whether or not the
//     foreign key cascades.
//
// Nothing is committed: the caller commits, so a crash leaves either every
// key of the batch changed or none.
func ApplyReissue(ctx context.Context, tx pgx.Tx, rs []Reissue, opt ReissueOptions) (ReissueResult, error) {
	var res ReissueResult
	if len(rs) == 0 {
		return res, nil
	}
	now := opt.Now.UTC()
	if opt.Now.IsZero() {
		now = time.Now().UTC()
	}
	now = now.Truncate(time.Millisecond)
	fail := func(what string, err error) (ReissueResult, error) {
		return ReissueResult{}, fmt.Errorf("re-issue virtual keys: %s: %w", what, err)
	}
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE runbook_reissue (
        old_token TEXT PRIMARY KEY, new_token TEXT NOT NULL UNIQUE, key_name TEXT NOT NULL
    ) ON COMMIT DROP`); err != nil {
		return fail("create work table", err)
	}
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"runbook_reissue"}, []string{"old_token", "new_token", "key_name"},
		pgx.CopyFromSlice(len(rs), func(i int) ([]any, error) {
			return []any{rs[i].OldToken, rs[i].NewToken, rs[i].KeyName}, nil
		}))
	if err != nil {
		return fail("load work table", err)
	}
	if int(n) != len(rs) {
		return fail("load work table", fmt.Errorf("copied %d of %d rows", n, len(rs)))
	}
	if _, err := tx.Exec(ctx, `ANALYZE runbook_reissue`); err != nil {
		return fail("analyze work table", err)
	}
	// Lock the rows and drop from the batch those no longer there.
	rows, err := tx.Query(ctx, `SELECT r.old_token FROM runbook_reissue r
        LEFT JOIN "LiteLLM_VerificationToken" v ON v.token = r.old_token
        WHERE v.token IS NULL`)
	if err != nil {
		return fail("find missing keys", err)
	}
	res.Missing, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fail("find missing keys", err)
	}
	if len(res.Missing) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM runbook_reissue r WHERE NOT EXISTS
            (SELECT 1 FROM "LiteLLM_VerificationToken" v WHERE v.token = r.old_token)`); err != nil {
			return fail("drop missing keys", err)
		}
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM "LiteLLM_VerificationToken" v
        JOIN runbook_reissue r ON v.token = r.old_token FOR UPDATE OF v`); err != nil {
		return fail("lock keys", err)
	}

	tag, err := tx.Exec(ctx, `INSERT INTO "LiteLLM_DeletedVerificationToken" (
            "id", "token", "key_name", "key_alias", "spend", "expires", "models", "user_id", "team_id",
            "metadata", "blocked", "max_budget", "created_at", "created_by", "updated_at", "updated_by",
            "rotation_count", "last_rotation_at", "deleted_at", "deleted_by", "litellm_changed_by")
        SELECT gen_random_uuid()::text, v.token, v.key_name, v.key_alias, v.spend, v.expires, v.models,
            v.user_id, v.team_id, v.metadata, v.blocked, v.max_budget, v.created_at, v.created_by,
            v.updated_at, v.updated_by, v.rotation_count, v.last_rotation_at, $1, $2, $2
        FROM "LiteLLM_VerificationToken" v JOIN runbook_reissue r ON v.token = r.old_token`, now, opt.By)
	if err != nil {
		return fail("keep old rows for audit", err)
	}
	res.Audited = int(tag.RowsAffected())

	for _, q := range []string{
		`DELETE FROM "LiteLLM_DeprecatedVerificationToken" d USING runbook_reissue r WHERE d.active_token_id = r.old_token`,
		`DELETE FROM "LiteLLM_DeprecatedVerificationToken" d USING runbook_reissue r WHERE d.token = r.old_token`,
	} {
		tag, err := tx.Exec(ctx, q)
		if err != nil {
			return fail("remove grace rows", err)
		}
		res.GraceRemoved += int(tag.RowsAffected())
	}

	// Each changed token fires the JWT mapping foreign key's trigger, which
	// looks the token up in "LiteLLM_JWTKeyMapping": without an index on
	// its token column that is a scan of the table per key. An index made
	// for this transaction alone (and dropped before it commits) turns
	// 10,000 scans into lookups; a user not allowed to make one just goes
	// without.
	tmpIndex, err := jwtTokenIndex(ctx, tx)
	if err != nil {
		return fail("index jwt key mappings", err)
	}

	tag, err = tx.Exec(ctx, `UPDATE "LiteLLM_VerificationToken" v SET
            "token" = r.new_token, "key_name" = r.key_name,
            "rotation_count" = COALESCE(v.rotation_count, 0) + 1,
            "last_rotation_at" = $1, "updated_at" = $1, "updated_by" = $2
        FROM runbook_reissue r WHERE v.token = r.old_token`, now, opt.By)
	if err != nil {
		return fail("replace hashes", err)
	}
	res.Updated = int(tag.RowsAffected())

	// With ON UPDATE CASCADE the mappings already follow; mark them. Without
	// a cascading foreign key, move them.
	for _, q := range []string{
		`UPDATE "LiteLLM_JWTKeyMapping" m SET "updated_at" = $1, "updated_by" = $2
            FROM runbook_reissue r WHERE m.token = r.new_token`,
		`UPDATE "LiteLLM_JWTKeyMapping" m SET "token" = r.new_token, "updated_at" = $1, "updated_by" = $2
            FROM runbook_reissue r WHERE m.token = r.old_token`,
	} {
		tag, err := tx.Exec(ctx, q, now, opt.By)
		if err != nil {
			return fail("move jwt key mappings", err)
		}
		res.JWTUpdated += int(tag.RowsAffected())
	}

	if opt.Grace > 0 {
		tag, err := tx.Exec(ctx, `INSERT INTO "LiteLLM_DeprecatedVerificationToken"
                ("id", "token", "active_token_id", "revoke_at", "created_at")
            SELECT gen_random_uuid()::text, r.old_token, r.new_token, $1, $2 FROM runbook_reissue r
            JOIN "LiteLLM_VerificationToken" v ON v.token = r.new_token`,
			now.Add(opt.Grace).Truncate(time.Millisecond), now)
		if err != nil {
			return fail("add grace rows", err)
		}
		res.GraceAdded = int(tag.RowsAffected())
	}
	if tmpIndex {
		if _, err := tx.Exec(ctx, `DROP INDEX "runbook_reissue_jwt_token_idx"`); err != nil {
			return fail("drop jwt key mapping index", err)
		}
	}
	if _, err := tx.Exec(ctx, `DROP TABLE runbook_reissue`); err != nil {
		return fail("drop work table", err)
	}
	return res, nil
}

// jwtMappingsForIndex is the size of "LiteLLM_JWTKeyMapping" from which a
// transaction-scoped index on its token column pays for itself.
const jwtMappingsForIndex = 64

// jwtTokenIndex makes, inside tx, an index on "LiteLLM_JWTKeyMapping".token
// when the table is big enough to need one and has none, and reports
// whether it did. The caller drops it before committing, so the schema is
// left as it was whatever happens: a rollback takes it away too.
func jwtTokenIndex(ctx context.Context, tx pgx.Tx) (bool, error) {
	var n int
	var indexed bool
	err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM (SELECT 1 FROM "LiteLLM_JWTKeyMapping" LIMIT $1) x),
        EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                WHERE i.indrelid = '"LiteLLM_JWTKeyMapping"'::regclass AND a.attname = 'token')`, jwtMappingsForIndex).Scan(&n, &indexed)
	if err != nil {
		return false, err
	}
	if n < jwtMappingsForIndex || indexed {
		return false, nil
	}
	if _, err := tx.Exec(ctx, `SAVEPOINT runbook_jwt_index`); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `CREATE INDEX "runbook_reissue_jwt_token_idx" ON "LiteLLM_JWTKeyMapping" ("token")`); err != nil {
		if _, rerr := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT runbook_jwt_index`); rerr != nil {
			return false, rerr
		}
		return false, nil
	}
	if _, err := tx.Exec(ctx, `RELEASE SAVEPOINT runbook_jwt_index`); err != nil {
		return false, err
	}
	return true, nil
}
