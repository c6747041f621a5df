package audit

import (
	"context"
	"fmt"
	"time"

	"github.com/runbook-dev/runbook/internal/litellm"
)

// masterKey is one version of the master key, known by its hash alone.
type masterKey struct {
	Version int
	Current bool
	Hash    string // litellm.HashToken of the key
}

// earlierVersions is how many versions before the current one are also
// looked for in configuration files.
const earlierVersions = 5

// masterKeys reads the master key's versions from Vault (current first)
// and checks the current one's age against the policy.
func masterKeys(ctx context.Context, env Env, cfg Config) ([]masterKey, Result) {
	r := Result{Check: CheckMasterKeyAge, Target: cfg.MasterKeyPath}
	vc, err := env.Vault(ctx)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return nil, r
	}
	cur, err := vc.ReadCurrent(ctx, cfg.MasterKeyPath)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return nil, r
	}
	key := cur.Secret("key")
	if key.IsZero() {
		r.Status, r.Reason = Warn, fmt.Sprintf("version %d has no field \"key\"", cur.Version)
		return nil, r
	}
	if env.Masker != nil {
		env.Masker.Add(key)
	}
	keys := []masterKey{{Version: cur.Version, Current: true, Hash: litellm.HashToken(key.Reveal())}}
	created := cur.Created
	if md, err := vc.Metadata(ctx, cfg.MasterKeyPath); err == nil {
		if vi, ok := md.Version(cur.Version); ok && !vi.Created.IsZero() {
			created = vi.Created
		}
		n := 0
		for i := len(md.Versions) - 1; i >= 0 && n < earlierVersions; i-- {
			vi := md.Versions[i]
			if vi.Version == cur.Version || vi.Deleted() {
				continue
			}
			e, err := vc.ReadVersion(ctx, cfg.MasterKeyPath, vi.Version)
			if err != nil {
				continue
			}
			if k := e.Secret("key"); !k.IsZero() {
				if env.Masker != nil {
					env.Masker.Add(k)
				}
				keys = append(keys, masterKey{Version: vi.Version, Hash: litellm.HashToken(k.Reveal())})
				n++
			}
		}
	}
	if created.IsZero() {
		r.Status, r.Reason = Warn, fmt.Sprintf("version %d has no creation time in Vault's metadata", cur.Version)
		return keys, r
	}
	a := cfg.Now.Sub(created)
	r.Details = []string{fmt.Sprintf("version %d, created %s, fingerprint %s", cur.Version, created.UTC().Format(time.RFC3339), key.Fingerprint())}
	if a > cfg.MasterKeyMaxAge {
		r.Status, r.Reason = Fail, fmt.Sprintf("current version %d is %s old, over the policy of %s: rotate it (runbook exec rotate-master)", cur.Version, age(a), age(cfg.MasterKeyMaxAge))
		return keys, r
	}
	r.Status, r.Reason = Pass, fmt.Sprintf("current version %d is %s old (policy %s)", cur.Version, age(a), age(cfg.MasterKeyMaxAge))
	return keys, r
}

const overAgeSQL = `
SELECT COALESCE(key_alias, ''), COALESCE(key_name, ''), token, COALESCE(team_id, ''),
       COALESCE(last_rotation_at, created_at) AS since
FROM ` + litellm.TableVerificationToken + `
WHERE COALESCE(last_rotation_at, created_at) < $1
  AND blocked IS NOT TRUE
  AND (expires IS NULL OR expires > $2)
ORDER BY since, token`

// maxDetails bounds the keys a result lists by name.
const maxDetails = 50

// VirtualKeyAge reports usable virtual keys (not blocked, not expired)
// whose last rotation, or creation when never rotated, is older than the
// policy.
func VirtualKeyAge(ctx context.Context, env Env, cfg Config) Result {
	cfg = cfg.Defaults(env.Inventory)
	r := Result{Check: CheckVirtualKeyAge, Target: "database"}
	db, err := env.DB(ctx)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return r
	}
	var total int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM `+litellm.TableVerificationToken+` WHERE blocked IS NOT TRUE AND (expires IS NULL OR expires > $1)`, cfg.Now).Scan(&total); err != nil {
		r.Status, r.Reason = Warn, "cannot check: count virtual keys: "+env.mask(err)
		return r
	}
	rows, err := db.Query(ctx, overAgeSQL, cfg.Now.Add(-cfg.VirtualKeyMaxAge), cfg.Now)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: list virtual keys: "+env.mask(err)
		return r
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var alias, name, token, team string
		var since time.Time
		if err := rows.Scan(&alias, &name, &token, &team, &since); err != nil {
			r.Status, r.Reason = Warn, "cannot check: read virtual keys: "+env.mask(err)
			return r
		}
		n++
		if len(r.Details) < maxDetails {
			r.Details = append(r.Details, fmt.Sprintf("%s: %s since rotation", keyLabel(alias, name, token, team), age(cfg.Now.Sub(since))))
		}
	}
	if err := rows.Err(); err != nil {
		r.Status, r.Reason = Warn, "cannot check: read virtual keys: "+env.mask(err)
		return r
	}
	if n > 0 {
		r.Status, r.Reason = Fail, fmt.Sprintf("%d of %d usable virtual keys are older than %s: rotate them (runbook exec rotate-virtual-keys)", n, total, age(cfg.VirtualKeyMaxAge))
		return r
	}
	r.Status, r.Reason = Pass, fmt.Sprintf("all %d usable virtual keys rotated within %s", total, age(cfg.VirtualKeyMaxAge))
	return r
}

// keyLabel names a key without revealing it: alias, else display name,
// else the hash's prefix (the key's fingerprint).
func keyLabel(alias, name, token, team string) string {
	l := alias
	if l == "" {
		l = name
	}
	if l == "" && len(token) >= 16 {
		l = "sha256:" + token[:16]
	}
	if team != "" {
		l += " (team " + team + ")"
	}
	return l
}

const rateSQL = `
SELECT s.api_key, COALESCE(v.key_alias, ''), COALESCE(v.key_name, ''), COALESCE(v.team_id, ''),
       max(s.n) AS peak, count(*) AS hours
FROM (
  SELECT api_key, date_trunc('hour', "startTime") AS hour, count(*) AS n
  FROM ` + litellm.TableSpendLogs + `
  WHERE "startTime" >= $1 AND "startTime" <= $2
  GROUP BY api_key, hour
  HAVING count(*) > $3
) s
LEFT JOIN ` + litellm.TableVerificationToken + ` v ON v.token = s.api_key
GROUP BY s.api_key, v.key_alias, v.key_name, v.team_id
ORDER BY peak DESC, s.api_key`

// RequestRate reports keys that made more than the threshold of requests
// in any hour of the window, by the spend logs.
func RequestRate(ctx context.Context, env Env, cfg Config, master []masterKey) Result {
	cfg = cfg.Defaults(env.Inventory)
	r := Result{Check: CheckRequestRate, Target: "database"}
	db, err := env.DB(ctx)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return r
	}
	rows, err := db.Query(ctx, rateSQL, cfg.Now.Add(-cfg.Window), cfg.Now, cfg.RequestsPerHour)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: read spend logs: "+env.mask(err)
		return r
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var hash, alias, name, team string
		var peak, hours int64
		if err := rows.Scan(&hash, &alias, &name, &team, &peak, &hours); err != nil {
			r.Status, r.Reason = Warn, "cannot check: read spend logs: "+env.mask(err)
			return r
		}
		label := keyLabel(alias, name, hash, team)
		if hash == litellm.MasterKeySpendLogKey {
			label = "the master key"
		}
		for _, mk := range master {
			if mk.Hash == hash {
				label = fmt.Sprintf("the master key (version %d)", mk.Version)
			}
		}
		n++
		if len(r.Details) < maxDetails {
			r.Details = append(r.Details, fmt.Sprintf("%s: peak %d requests in an hour, %d hours over", label, peak, hours))
		}
	}
	if err := rows.Err(); err != nil {
		r.Status, r.Reason = Warn, "cannot check: read spend logs: "+env.mask(err)
		return r
	}
	if n > 0 {
		r.Status, r.Reason = Fail, fmt.Sprintf("%d keys made more than %d requests in an hour in the last %s: check whether they leaked", n, cfg.RequestsPerHour, age(cfg.Window))
		return r
	}
	r.Status, r.Reason = Pass, fmt.Sprintf("no key made more than %d requests in an hour in the last %s", cfg.RequestsPerHour, age(cfg.Window))
	return r
}

func (env Env) mask(err error) string {
	if env.Masker == nil {
		return err.Error()
	}
	return env.Masker.MaskString(err.Error())
}
