package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/record"
)

type drillOptions struct {
	execOptions
	allowProduction bool
}

func (o *drillOptions) AddFlags(cmd *cobra.Command) {
	o.planOptions.AddFlags(cmd)
	cmd.Flags().BoolVarP(&o.yes, "yes", "y", false, "run without showing the plan and asking first")
	cmd.Flags().BoolVar(&o.acceptNewHostKeys, "accept-new-host-keys", false, "accept and journal the keys of hosts that known_hosts does not list (a changed key is never accepted)")
	cmd.Flags().BoolVar(&o.allowProduction, "allow-production", false, "allow a drill against an inventory whose environment is production")
}

func newDrillCommand(g *globals) *cobra.Command {
	o := &drillOptions{}
	cmd := &cobra.Command{
		Use:   "drill NAME",
		Short: "Rehearse a runbook for real against a staging inventory, with a drill report",
		Long: `drill runs a runbook for real, as exec does, against the given inventory
(normally staging: -i staging), with the journal and the record marked as a
drill. Beside the incident record it writes a drill report (NAME.drill.md and
.drill.json): each phase's time against its target, what failed, and what a
real incident would have needed (the steps that failed, were skipped or never
ran). An inventory whose environment is production is refused unless
--allow-production is given. To see the plan without changing anything, run
'runbook exec NAME --dry-run -i staging'.
The exit status is that of the run; a drill whose phases miss their targets
exits 6.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runDrill(cmd.Context(), args[0], o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func (g *globals) runDrill(ctx context.Context, name string, o *drillOptions) error {
	l, err := g.load(name)
	if err != nil {
		return err
	}
	if strings.EqualFold(l.inv.Environment, "production") && !o.allowProduction {
		return withCode(ExitUsage, fmt.Errorf("refusing a drill against %s: its environment is production", l.inv.File),
			"drill against staging (-i staging), or pass --allow-production")
	}
	if o.reason == "" {
		o.reason = "drill of " + l.rb.Name + " on " + envName(l)
	}
	store, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	before := map[string]bool{}
	runs, err := store.Runs(ctx)
	store.Close()
	if err != nil {
		return withCode(ExitInternal, fmt.Errorf("list runs: %w", err))
	}
	for _, r := range runs {
		before[r.RunID] = true
	}
	eo := o.execOptions
	eo.drill = true
	runErr := g.runExec(ctx, name, &eo)

	// Find the run this drill made; none when it never started (refused,
	// lock held).
	store, err = g.openStore(ctx)
	if err != nil {
		return errors.Join(runErr, err)
	}
	defer store.Close()
	runs, err = store.Runs(ctx)
	if err != nil {
		return errors.Join(runErr, withCode(ExitInternal, fmt.Errorf("list runs: %w", err)))
	}
	runID := ""
	for _, r := range runs {
		if !before[r.RunID] && r.Runbook == l.rb.Name {
			runID = r.RunID
		}
	}
	if runID == "" {
		return runErr
	}
	recs, err := store.Journal(context.WithoutCancel(ctx), runID)
	if err != nil {
		return errors.Join(runErr, withCode(ExitInternal, fmt.Errorf("read journal of %s: %w", runID, err)))
	}
	rep, err := buildDrillReport(recs)
	if err != nil {
		return errors.Join(runErr, withCode(ExitInternal, err))
	}
	js, md, err := rep.write(g.recordsDir)
	if err != nil {
		return errors.Join(runErr, withCode(ExitInternal, err))
	}
	if g.output == "json" {
		b, _ := json.Marshal(map[string]any{"event": "drill_report", "run_id": runID, "json": js, "markdown": md, "targets_met": rep.TargetsMet, "needed": len(rep.Needed)})
		fmt.Fprintln(g.stdout, string(b))
	} else {
		fmt.Fprintf(g.stdout, "drill report: %s\n", md)
		for _, p := range rep.Phases {
			fmt.Fprintf(g.stdout, "  phase %-10s %-10s target %-6s met %s\n", p.Name, p.Duration, orDash(p.Target), p.Met)
		}
		if len(rep.Needed) > 0 {
			fmt.Fprintf(g.stdout, "  %d steps would have needed a hand in a real incident (see the report)\n", len(rep.Needed))
		}
	}
	if runErr == nil && !rep.TargetsMet {
		return withCode(ExitAuditFailed, fmt.Errorf("drill %s: a phase missed its time target", runID))
	}
	return runErr
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// drillReport is what a drill showed, from its journal alone.
type drillReport struct {
	RunID       string         `json:"run_id"`
	Runbook     string         `json:"runbook"`
	Environment string         `json:"environment"`
	Status      string         `json:"status"`
	Started     time.Time      `json:"started"`
	Duration    string         `json:"duration"`
	Phases      []drillPhase   `json:"phases"`
	TargetsMet  bool           `json:"targets_met"`
	Failed      []drillFailure `json:"failed,omitempty"`
	Steps       []drillStep    `json:"steps"`
	// Needed lists what a real incident would have needed beyond the
	// runbook: each step that failed, was skipped or never ran.
	Needed   []string `json:"needed,omitempty"`
	BaseName string   `json:"-"`
}

type drillPhase struct {
	Name     string  `json:"name"`
	Target   string  `json:"target,omitempty"`
	Duration string  `json:"duration"`
	Seconds  float64 `json:"seconds"`
	Met      string  `json:"met"` // yes, no, n/a (no target, or the phase never ran)
}

type drillFailure struct {
	Step  string `json:"step"`
	Host  string `json:"host,omitempty"`
	Error string `json:"error"`
}

type drillStep struct {
	ID      string `json:"id"`
	Phase   string `json:"phase,omitempty"`
	Kind    string `json:"kind"`
	Outcome string `json:"outcome"` // changed, ok, skipped, failed, incomplete, not run
}

func buildDrillReport(recs []journal.Record) (*drillReport, error) {
	rec, err := record.Build(recs)
	if err != nil {
		return nil, err
	}
	h := recs[0].Header
	rep := &drillReport{
		RunID: rec.RunID, Runbook: rec.Runbook, Environment: rec.Environment, Status: rec.Status,
		Started: rec.Started, Duration: time.Duration(rec.Duration).Round(time.Millisecond).String(),
		TargetsMet: true, BaseName: rec.BaseName(),
	}
	for _, p := range rec.Phases {
		d := time.Duration(p.Duration)
		rep.Phases = append(rep.Phases, drillPhase{Name: p.Name, Target: p.Target, Duration: d.Round(time.Millisecond).String(), Seconds: d.Seconds(), Met: p.Met})
		if p.Met == "no" {
			rep.TargetsMet = false
			rep.Needed = append(rep.Needed, fmt.Sprintf("phase %s took %s, over its target of %s", p.Name, time.Duration(p.Duration).Round(time.Second), p.Target))
		}
	}
	seen := map[string]map[journal.Type]bool{}
	for _, r := range recs[1:] {
		if r.Step == "" {
			continue
		}
		if seen[r.Step] == nil {
			seen[r.Step] = map[journal.Type]bool{}
		}
		seen[r.Step][r.Type] = true
		if r.Type == journal.TFailed {
			rep.Failed = append(rep.Failed, drillFailure{Step: r.Step, Host: r.Host, Error: r.Error})
		}
	}
	for _, s := range h.Steps {
		t := seen[s.ID]
		out := "not run"
		switch {
		case t[journal.TFailed]:
			out = "failed"
		case t[journal.TIntent] && !t[journal.TDone]:
			out = "incomplete"
		case t[journal.TDone]:
			out = "changed"
		case t[journal.TOK]:
			out = "ok"
		case t[journal.TSkipped]:
			out = "skipped"
		}
		rep.Steps = append(rep.Steps, drillStep{ID: s.ID, Phase: s.Phase, Kind: s.Kind, Outcome: out})
		switch out {
		case "failed", "incomplete":
			rep.Needed = append(rep.Needed, fmt.Sprintf("step %s (%s, phase %s) %s: a responder would have had to do it by hand, then 'runbook resume'", s.ID, s.Kind, orDash(s.Phase), out))
		case "skipped", "not run":
			rep.Needed = append(rep.Needed, fmt.Sprintf("step %s (%s, phase %s) was %s: in a real incident it would not have happened", s.ID, s.Kind, orDash(s.Phase), out))
		}
	}
	sort.SliceStable(rep.Failed, func(i, j int) bool { return rep.Failed[i].Step < rep.Failed[j].Step })
	return rep, nil
}

func (r *drillReport) markdown() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Drill report: %s on %s\n\n", r.Runbook, orDash(r.Environment))
	fmt.Fprintf(&b, "- Run: `%s` (%s), started %s, took %s\n", r.RunID, r.Status, r.Started.UTC().Format(time.RFC3339), r.Duration)
	met := "yes"
	if !r.TargetsMet {
		met = "no"
	}
	fmt.Fprintf(&b, "- Every phase within its target: %s\n\n", met)
	b.WriteString("## Phase times\n\n| Phase | Took | Target | Met |\n|---|---|---|---|\n")
	for _, p := range r.Phases {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", p.Name, p.Duration, orDash(p.Target), p.Met)
	}
	b.WriteString("\n## Steps\n\n| Step | Phase | Kind | Outcome |\n|---|---|---|---|\n")
	for _, s := range r.Steps {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", s.ID, orDash(s.Phase), s.Kind, s.Outcome)
	}
	b.WriteString("\n## What failed\n\n")
	if len(r.Failed) == 0 {
		b.WriteString("Nothing.\n")
	}
	for _, f := range r.Failed {
		fmt.Fprintf(&b, "- %s on %s: %s\n", f.Step, orDash(f.Host), strings.ReplaceAll(f.Error, "\n", " "))
	}
	b.WriteString("\n## What a real incident would have needed\n\n")
	if len(r.Needed) == 0 {
		b.WriteString("Nothing beyond the runbook: every step ran and every phase met its target.\n")
	}
	for _, n := range r.Needed {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	return []byte(b.String())
}

// write puts the report beside the run's incident record.
func (r *drillReport) write(dir string) (jsonPath, mdPath string, err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", "", fmt.Errorf("write drill report: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", "", fmt.Errorf("write drill report: %w", err)
	}
	jsonPath = filepath.Join(dir, r.BaseName+".drill.json")
	mdPath = filepath.Join(dir, r.BaseName+".drill.md")
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o640); err != nil {
		return "", "", fmt.Errorf("write drill report: %w", err)
	}
	if err := os.WriteFile(mdPath, r.markdown(), 0o640); err != nil {
		return "", "", fmt.Errorf("write drill report: %w", err)
	}
	return jsonPath, mdPath, nil
}
