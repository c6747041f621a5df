package record

import (
	"bytes"
	"fmt"
	"strings"
	"time"
)

// Markdown renders the record for a post-incident review.
func (r *Record) Markdown() []byte {
	var b bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05.000Z")
	}
	title := "Incident record"
	if r.Drill {
		title = "Drill record"
	}
	p("# %s: %s (%s)\n\n", title, r.Runbook, r.Status)
	p("| | |\n|---|---|\n")
	p("| Run | `%s` |\n", r.RunID)
	p("| Status | **%s** |\n", r.Status)
	p("| Environment | %s |\n", cell(r.Environment))
	p("| Operator | %s on %s |\n", cell(r.Operator), cell(r.Hostname))
	if r.Reason != "" {
		p("| Reason | %s |\n", cell(r.Reason))
	}
	p("| Started (UTC) | %s |\n", ts(r.Started))
	p("| Ended (UTC) | %s |\n", ts(r.Ended))
	p("| Duration | %s |\n", time.Duration(r.Duration).Round(time.Millisecond))
	if r.Attempts > 1 {
		p("| Attempts | %d (resumed) |\n", r.Attempts)
	}
	p("| Runbook digest | `%s` |\n", r.RunbookDigest)
	p("| Inventory | %s (`%s`) |\n", cell(r.InventoryFile), r.InventoryDigest)
	p("\n")

	if len(r.Inputs) > 0 {
		p("## Inputs\n\n| Input | Value |\n|---|---|\n")
		for _, k := range sortedKeys(r.Inputs) {
			p("| %s | %s |\n", cell(k), cell(r.Inputs[k]))
		}
		p("\n")
	}
	if len(r.Phases) > 0 {
		p("## Phases\n\n| Phase | Duration | Target | Met |\n|---|---|---|---|\n")
		for _, ph := range r.Phases {
			p("| %s | %s | %s | %s |\n", cell(ph.Name), time.Duration(ph.Duration).Round(time.Millisecond), ph.Target, ph.Met)
		}
		p("\n")
	}
	p("## What changed\n\n")
	if len(r.Changes) == 0 {
		p("Nothing changed.\n\n")
	} else {
		p("| Time (UTC) | Step | Host | Change |\n|---|---|---|---|\n")
		for _, c := range r.Changes {
			p("| %s | %s | %s | %s |\n", ts(c.Time), cell(c.Step), cell(orDash(c.Host)), cell(c.Change))
		}
		p("\n")
	}
	if len(r.Errors) > 0 {
		p("## Errors\n\n| Time (UTC) | Step | Host | Error |\n|---|---|---|---|\n")
		for _, c := range r.Errors {
			p("| %s | %s | %s | %s |\n", ts(c.Time), cell(orDash(c.Step)), cell(orDash(c.Host)), cell(c.Error))
		}
		p("\n")
	}
	if len(r.Fingerprints) > 0 {
		p("## Key fingerprints\n\nFingerprints only; no key value is ever recorded.\n\n| Key | Fingerprint | Step |\n|---|---|---|\n")
		for _, f := range r.Fingerprints {
			p("| %s | `%s` | %s |\n", cell(f.Name), f.Fingerprint, cell(f.Step))
		}
		p("\n")
	}
	for _, n := range r.Notes {
		p("## %s", n.Kind)
		if n.Step != "" {
			p(" (%s)", n.Step)
		}
		p("\n\n")
		if strings.Contains(n.Text, "\n") {
			// Reports are aligned text tables: keep them as they are.
			p("~~~text\n%s\n~~~\n\n", strings.TrimRight(strings.ReplaceAll(n.Text, "~~~", "- - -"), "\n"))
		} else if n.Text != "" {
			p("%s\n\n", n.Text)
		}
		if len(n.Fields) > 0 {
			p("| Field | Value |\n|---|---|\n")
			for _, k := range sortedKeys(n.Fields) {
				p("| %s | %s |\n", cell(k), cell(n.Fields[k]))
			}
			p("\n")
		}
	}
	if len(r.FollowUps) > 0 {
		p("## Follow-ups\n\n")
		for _, f := range r.FollowUps {
			p("- [ ] %s\n", f)
		}
		p("\n")
	}
	p("## Timeline\n\n| Time (UTC) | Began | Event | Step | Host | Detail |\n|---|---|---|---|---|---|\n")
	for _, e := range r.Timeline {
		detail := e.Change
		if e.Error != "" {
			detail = e.Error
		}
		p("| %s | %s | %s | %s | %s | %s |\n", ts(e.Time), ts(e.Began), e.Event, cell(orDash(e.Step)), cell(orDash(e.Host)), cell(detail))
	}
	p("\n## Journal\n\n%d records, final hash `%s`, chain %s.\n", r.Journal.Records, r.Journal.FinalHash, verified(r.Journal.Verified))
	return b.Bytes()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func verified(ok bool) string {
	if ok {
		return "verified"
	}
	return "NOT verified"
}
