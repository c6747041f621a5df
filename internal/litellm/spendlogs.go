package litellm

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
)

// ExposureQuery selects the spend-log rows of an exposure report.
type ExposureQuery struct {
	// Keys maps each api_key value to look for (a token hash, or
	// MasterKeySpendLogKey) to a label for the report ("master key", an
	// alias); labels hold no secret.
	Keys map[string]string
	// Since and Until bound "startTime" (Until excluded; zero: no bound).
	Since, Until time.Time
}

// ExposureGroup sums the requests of one requester address, model, hour or
// key.
type ExposureGroup struct {
	Name        string
	Requests    int64
	Failures    int64
	Spend       float64
	Tokens      int64
	First, Last time.Time
}

// ExposureReport is what the spend logs say about requests made with
// compromised keys. Times are UTC.
type ExposureReport struct {
	Since, Until time.Time
	Total        ExposureGroup
	ByIP         []ExposureGroup // most requests first
	ByModel      []ExposureGroup // most requests first
	ByHour       []ExposureGroup // in time order; Name is the hour, RFC 3339
	ByKey        []ExposureGroup // most requests first; Name is the key's label
}

// exposureSQL sums the matching rows in one pass, with a grouping set per
// view. The grouping bits tell the views apart: 0 total, 1 address, 2
// model, 3 hour, 4 key.
const exposureSQL = `
WITH s AS (
    SELECT COALESCE(NULLIF("requester_ip_address", ''), '(unknown)') AS ip,
           COALESCE(NULLIF("model", ''), '(unknown)') AS model,
           date_trunc('hour', "startTime") AS hr,
           "api_key" AS k, "spend", "total_tokens", "startTime" AS st, "status"
    FROM "LiteLLM_SpendLogs"
    WHERE "api_key" = ANY($1)
      AND ($2::timestamp IS NULL OR "startTime" >= $2)
      AND ($3::timestamp IS NULL OR "startTime" < $3)
)
SELECT CASE WHEN GROUPING(ip) = 0 THEN 1 WHEN GROUPING(model) = 0 THEN 2
            WHEN GROUPING(hr) = 0 THEN 3 WHEN GROUPING(k) = 0 THEN 4 ELSE 0 END AS view,
       COALESCE(ip, ''), COALESCE(model, ''), hr, COALESCE(k, ''),
       count(*), count(*) FILTER (WHERE "status" = 'failure'),
       COALESCE(sum("spend"), 0), COALESCE(sum("total_tokens"), 0), min(st), max(st)
FROM s
GROUP BY GROUPING SETS ((), (ip), (model), (hr), (k))`

// Exposure builds the report from "LiteLLM_SpendLogs". It only reads.
func Exposure(ctx context.Context, q Querier, eq ExposureQuery) (*ExposureReport, error) {
	keys := make([]string, 0, len(eq.Keys))
	for k := range eq.Keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var since, until any
	if !eq.Since.IsZero() {
		since = eq.Since.UTC()
	}
	if !eq.Until.IsZero() {
		until = eq.Until.UTC()
	}
	rep := &ExposureReport{Since: eq.Since.UTC(), Until: eq.Until.UTC()}
	rows, err := q.Query(ctx, exposureSQL, keys, since, until)
	if err != nil {
		return nil, fmt.Errorf("exposure report: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			view            int
			ip, model, key  string
			hr, first, last *time.Time
			g               ExposureGroup
		)
		if err := rows.Scan(&view, &ip, &model, &hr, &key, &g.Requests, &g.Failures, &g.Spend, &g.Tokens, &first, &last); err != nil {
			return nil, fmt.Errorf("exposure report: %w", err)
		}
		if first != nil {
			g.First = first.UTC()
		}
		if last != nil {
			g.Last = last.UTC()
		}
		switch view {
		case 0:
			g.Name = "total"
			rep.Total = g
		case 1:
			g.Name = ip
			rep.ByIP = append(rep.ByIP, g)
		case 2:
			g.Name = model
			rep.ByModel = append(rep.ByModel, g)
		case 3:
			if hr != nil {
				g.Name = hr.UTC().Format(time.RFC3339)
			}
			rep.ByHour = append(rep.ByHour, g)
		case 4:
			g.Name = eq.Keys[key]
			if g.Name == "" {
				g.Name = key
			}
			rep.ByKey = append(rep.ByKey, g)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("exposure report: %w", err)
	}
	byCount := func(gs []ExposureGroup) {
		sort.SliceStable(gs, func(i, j int) bool {
			if gs[i].Requests != gs[j].Requests {
				return gs[i].Requests > gs[j].Requests
			}
			return gs[i].Name < gs[j].Name
		})
	}
	byCount(rep.ByIP)
	byCount(rep.ByModel)
	byCount(rep.ByKey)
	sort.Slice(rep.ByHour, func(i, j int) bool { return rep.ByHour[i].Name < rep.ByHour[j].Name })
	return rep, nil
}

// DeletedTokens returns the old hashes that "LiteLLM_DeletedVerificationToken"
// holds with deleted_by = by (the keys a run re-issued), mapped to their
// alias ("" when none).
func DeletedTokens(ctx context.Context, q Querier, by string) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT "token", COALESCE("key_alias", '') FROM "LiteLLM_DeletedVerificationToken" WHERE "deleted_by" = $1`, by)
	if err != nil {
		return nil, fmt.Errorf("read re-issued keys: %w", err)
	}
	out := map[string]string{}
	var tok, alias string
	_, err = pgx.ForEachRow(rows, []any{&tok, &alias}, func() error {
		out[tok] = alias
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read re-issued keys: %w", err)
	}
	return out, nil
}
