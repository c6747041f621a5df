package litellm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/runbook-dev/runbook/internal/journal"
	ll "github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
)

// ExposureSpec is the `litellm.exposure_report` kind.
var ExposureSpec = &step.Spec{
	Name:    "litellm.exposure_report",
	Summary: "report from the spend logs what was done with the compromised keys, into the incident record",
	Target:  step.Once,
	Params: []step.Param{
		{Name: "master_key_path", Type: step.String, Required: true, Doc: "Vault KV path of the master key", Validate: validVaultPrefix},
		{Name: "master_key_version", Type: step.Int, Required: true, Doc: "Vault version of the compromised master key, as ${{ steps.ID.outputs.previous_version }}"},
		{Name: "key_field", Type: step.String, Default: "key", Doc: "field of the Vault record holding the master key"},
		{Name: "since", Type: step.String, Required: true, Doc: "start of the exposure window: a time (RFC 3339) or a duration back from now (72h, 7d)"},
		{Name: "until", Type: step.String, Doc: "end of the window (default: now): a time, or a duration back from now"},
		{Name: "virtual_keys", Type: step.Bool, Default: false, Doc: "also count requests made with the virtual keys this run re-issued (their old hashes)"},
		{Name: "token_hashes", Type: step.List, Doc: "more key hashes (SHA-256 hex) to count"},
		{Name: "rows", Type: step.Int, Default: 25, Doc: "rows shown per table in the record's text"},
	},
	Outputs: []string{"requests", "addresses", "first_seen", "last_seen", "spend"},
	New:     newExposure,
}

// Exposure writes the exposure report into the incident record.
type Exposure struct {
	MasterKeyPath    string
	MasterKeyVersion int
	KeyField         string
	Since, Until     string
	VirtualKeys      bool
	TokenHashes      []string
	Rows             int

	now func() time.Time
}

var _ step.Step = (*Exposure)(nil)

func newExposure(p step.Params) (step.Step, error) {
	e := &Exposure{
		MasterKeyPath:    p.String("master_key_path"),
		MasterKeyVersion: p.Int("master_key_version"),
		KeyField:         p.String("key_field"),
		Since:            p.String("since"),
		Until:            p.String("until"),
		VirtualKeys:      p.Bool("virtual_keys"),
		TokenHashes:      p.Strings("token_hashes"),
		Rows:             p.Int("rows"),
	}
	if e.KeyField == "" {
		e.KeyField = "key"
	}
	if e.Rows <= 0 {
		e.Rows = 25
	}
	if e.MasterKeyVersion <= 0 {
		return nil, &step.ParamError{Param: "master_key_version", Err: fmt.Errorf("want a vault version (1 or more), got %d", e.MasterKeyVersion)}
	}
	now := time.Now()
	since, err := parseSince(e.Since, now)
	if err != nil {
		return nil, &step.ParamError{Param: "since", Err: err}
	}
	if e.Until != "" {
		until, err := parseSince(e.Until, now)
		if err != nil {
			return nil, &step.ParamError{Param: "until", Err: err}
		}
		if !until.After(since) {
			return nil, &step.ParamError{Param: "until", Err: errors.New("the window ends before it starts")}
		}
	}
	for _, h := range e.TokenHashes {
		if !ll.IsHashedToken(h) {
			return nil, &step.ParamError{Param: "token_hashes", Err: fmt.Errorf("%s is not a SHA-256 hex token hash", secret.Fingerprint(h))}
		}
	}
	return e, nil
}

func (e *Exposure) clock() time.Time {
	if e.now != nil {
		return e.now()
	}
	return time.Now()
}

// report reads the master key's hash from Vault and builds the report. It
// only reads.
func (e *Exposure) report(ctx context.Context, env *step.Env) (*ll.ExposureReport, []string, error) {
	now := e.clock()
	q := ll.ExposureQuery{Keys: map[string]string{}}
	var err error
	if q.Since, err = parseSince(e.Since, now); err != nil {
		return nil, nil, &step.ParamError{Param: "since", Err: err}
	}
	q.Until = now.UTC()
	if e.Until != "" {
		if q.Until, err = parseSince(e.Until, now); err != nil {
			return nil, nil, &step.ParamError{Param: "until", Err: err}
		}
	}
	vc, err := vaultClient(ctx, env)
	if err != nil {
		return nil, nil, err
	}
	ent, err := vc.ReadVersion(ctx, e.MasterKeyPath, e.MasterKeyVersion, readPlain...)
	if err != nil {
		return nil, nil, fmt.Errorf("read compromised master key: %w", err)
	}
	mk := ent.Secret(e.KeyField)
	if mk.IsZero() {
		return nil, nil, fmt.Errorf("read compromised master key: vault %s (version %d) has no field %q", vc.Display(e.MasterKeyPath), e.MasterKeyVersion, e.KeyField)
	}
	env.Secrets.Add(mk)
	mh := ll.HashToken(mk.Reveal())
	q.Keys[mh] = "master key " + secret.Fingerprint(mk.Reveal())
	q.Keys[ll.MasterKeySpendLogKey] = "master key (logged as " + ll.MasterKeySpendLogKey + ")"
	described := []string{q.Keys[mh], q.Keys[ll.MasterKeySpendLogKey]}

	pool, err := dbPool(ctx, env)
	if err != nil {
		return nil, nil, err
	}
	if e.VirtualKeys {
		old, err := ll.DeletedTokens(ctx, pool, RunMarker(env.RunID))
		if err != nil {
			return nil, nil, step.Retryable(err)
		}
		for h, alias := range old {
			label := "virtual key " + alias
			if alias == "" {
				label = "virtual key " + TokenFingerprint(h)
			}
			q.Keys[h] = label + " (old value)"
		}
		described = append(described, fmt.Sprintf("%d virtual keys re-issued by this run (old values)", len(old)))
	}
	for _, h := range e.TokenHashes {
		if _, ok := q.Keys[h]; !ok {
			q.Keys[h] = "key " + TokenFingerprint(h)
		}
	}
	if len(e.TokenHashes) > 0 {
		described = append(described, fmt.Sprintf("%d more key hashes", len(e.TokenHashes)))
	}
	rep, err := ll.Exposure(ctx, pool, q)
	if err != nil {
		return nil, nil, step.Retryable(err)
	}
	return rep, described, nil
}

// Check implements step.Step. It reads the spend logs; the change is always
// to record the report.
func (e *Exposure) Check(ctx context.Context, env *step.Env) (step.Observation, error) {
	rep, _, err := e.report(ctx, env)
	if err != nil {
		return step.Observation{}, err
	}
	if rep.Total.Requests == 0 {
		return step.Observation{Change: fmt.Sprintf("record exposure report (no request with the compromised keys since %s)", rep.Since.Format(time.RFC3339))}, nil
	}
	return step.Observation{Change: fmt.Sprintf("record exposure report (%d requests from %d addresses, %s to %s)",
		rep.Total.Requests, len(rep.ByIP), rep.Total.First.Format(time.RFC3339), rep.Total.Last.Format(time.RFC3339))}, nil
}

// Apply implements step.Step: it builds the report again and records it.
// The note carries the run id as report_id; a run that records it twice
// (a crash between the note and the journal's done) records the same
// report.
func (e *Exposure) Apply(ctx context.Context, env *step.Env) (step.Outputs, error) {
	rep, described, err := e.report(ctx, env)
	if err != nil {
		return nil, err
	}
	n := exposureNote(env, rep, described, e.Rows)
	if err := note(ctx, env, n); err != nil {
		return nil, err
	}
	return step.Outputs{
		"requests":   strconv.FormatInt(rep.Total.Requests, 10),
		"addresses":  strconv.Itoa(len(rep.ByIP)),
		"first_seen": n.Fields["first_seen"],
		"last_seen":  n.Fields["last_seen"],
		"spend":      n.Fields["spend"],
	}, nil
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func fmtSpend(f float64) string { return strconv.FormatFloat(f, 'f', 6, 64) }

// exposureNote renders the report as fields and a text table. Nothing in it
// is secret: keys are named by label and fingerprint.
func exposureNote(env *step.Env, rep *ll.ExposureReport, described []string, rows int) journal.Note {
	top := func(gs []ll.ExposureGroup, n int) string {
		var parts []string
		for i, g := range gs {
			if i == n {
				parts = append(parts, fmt.Sprintf("+%d more", len(gs)-n))
				break
			}
			parts = append(parts, fmt.Sprintf("%s (%d)", g.Name, g.Requests))
		}
		return strings.Join(parts, ", ")
	}
	fields := map[string]string{
		"report_id":  env.RunID,
		"since":      fmtTime(rep.Since),
		"until":      fmtTime(rep.Until),
		"keys":       strings.Join(described, "; "),
		"requests":   strconv.FormatInt(rep.Total.Requests, 10),
		"failures":   strconv.FormatInt(rep.Total.Failures, 10),
		"spend":      fmtSpend(rep.Total.Spend),
		"tokens":     strconv.FormatInt(rep.Total.Tokens, 10),
		"first_seen": fmtTime(rep.Total.First),
		"last_seen":  fmtTime(rep.Total.Last),
		"addresses":  strconv.Itoa(len(rep.ByIP)),
		"by_address": top(rep.ByIP, 10),
		"by_model":   top(rep.ByModel, 10),
		"by_key":     top(rep.ByKey, 10),
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Exposure window: %s to %s (UTC)\n", fmtTime(rep.Since), fmtTime(rep.Until))
	fmt.Fprintf(&b, "Keys: %s\n", strings.Join(described, "; "))
	if rep.Total.Requests == 0 {
		b.WriteString("No request made with these keys is in the spend logs for this window.\n")
		return journal.Note{Kind: "exposure_report", Fields: fields, Text: b.String()}
	}
	fmt.Fprintf(&b, "Requests: %d (%d failed), %d tokens, spend %s\n", rep.Total.Requests, rep.Total.Failures, rep.Total.Tokens, fmtSpend(rep.Total.Spend))
	fmt.Fprintf(&b, "First seen %s, last seen %s\n", fmtTime(rep.Total.First), fmtTime(rep.Total.Last))
	table := func(title, col string, gs []ll.ExposureGroup, limit int) {
		fmt.Fprintf(&b, "\n%s\n", title)
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  %s\tREQUESTS\tFAILED\tTOKENS\tSPEND\tFIRST\tLAST\n", col)
		for i, g := range gs {
			if i == limit {
				fmt.Fprintf(tw, "  (%d more)\t\t\t\t\t\t\n", len(gs)-limit)
				break
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%s\t%s\t%s\n", g.Name, g.Requests, g.Failures, g.Tokens, fmtSpend(g.Spend), fmtTime(g.First), fmtTime(g.Last))
		}
		_ = tw.Flush()
	}
	for _, g := range rep.ByKey {
		if strings.Contains(g.Name, ll.MasterKeySpendLogKey) {
			fmt.Fprintf(&b, "Note: %d requests are logged as %s, which does not tell master keys apart: those after the rotation may have used the new key.\n",
				g.Requests, ll.MasterKeySpendLogKey)
		}
	}
	table("By requester address", "ADDRESS", rep.ByIP, rows)
	table("By model", "MODEL", rep.ByModel, rows)
	table("By key", "KEY", rep.ByKey, rows)
	table("By hour", "HOUR", rep.ByHour, 24*14)
	return journal.Note{Kind: "exposure_report", Fields: fields, Text: b.String()}
}
