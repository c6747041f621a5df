package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// ifDueOptions are exec's flags for a scheduled run.
type ifDueOptions struct {
	ifDue      bool
	metricsDir string
}

func (o *ifDueOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&o.ifDue, "if-due", false, "run only when the master key in Vault is older than the runbook's schedule; otherwise say when it is due and exit 0 (no lock, no journal)")
	cmd.Flags().StringVar(&o.metricsDir, "metrics-dir", envOr("RUNBOOK_METRICS_DIR", ""), "with --if-due: directory for the Prometheus textfile-collector file runbook_NAME.prom ($RUNBOOK_METRICS_DIR; default "+DefaultMetricsDir+" when it exists)")
}

// metricsTarget returns the directory for metrics and whether it may be
// created; "" when no metrics are written.
func (o *ifDueOptions) metricsTarget() (string, bool) {
	if o.metricsDir != "" {
		return o.metricsDir, true
	}
	if fi, err := os.Stat(DefaultMetricsDir); err == nil && fi.IsDir() {
		return DefaultMetricsDir, false
	}
	return "", false
}

// runExecIfDue is exec --if-due: it checks the key's age against the
// runbook's schedule before anything else. When the key is fresh it prints
// when it will be due and returns: no lock is taken and no journal written.
// When it is due, the run goes ahead as a plain exec. Either way the
// textfile-collector metrics are updated.
func (g *globals) runExecIfDue(ctx context.Context, name string, o *execOptions) error {
	l, err := g.load(name)
	if err != nil {
		return err
	}
	rb := l.rb
	if rb.Schedule <= 0 {
		return withCode(ExitUsage, fmt.Errorf("runbook %s has no schedule, so --if-due cannot say when it is due", rb.Name), "add 'schedule: 90d' to the runbook, or run it without --if-due")
	}
	inputs, err := resolveInputs(rb, o.inputs, o.reason)
	if err != nil {
		return err
	}
	vc, err := vaultClient(ctx, l.inv)
	if err != nil {
		return withCode(ExitFailed, fmt.Errorf("check whether %s is due: %w", rb.Name, err))
	}
	now := time.Now()
	st, err := runbookDue(ctx, vc, rb, inputs, now)
	if err != nil {
		return withCode(ExitFailed, fmt.Errorf("check whether %s is due: %w", rb.Name, err))
	}

	dir, create := o.ifDue.metricsTarget()
	m := scheduleMetrics{}
	if dir != "" {
		m = readScheduleMetrics(metricsFile(dir, rb.Name))
	}
	m.Runbook, m.Schedule, m.Check = rb.Name, rb.Schedule, now
	m.KeyAge, m.haveKeyAge, m.Due = st.Age, true, st.Due
	writeMetrics := func() error {
		if dir == "" {
			return nil
		}
		if _, err := writeScheduleMetrics(dir, create, m); err != nil {
			return withCode(ExitInternal, err)
		}
		return nil
	}

	if !st.Due {
		if g.output == "json" {
			b, _ := json.Marshal(map[string]any{
				"event": "not_due", "runbook": rb.Name, "path": st.Display, "version": st.Version,
				"key_age_seconds": int64(st.Age / time.Second), "schedule": formatDays(rb.Schedule),
				"last_rotation": st.Last.Format(time.RFC3339), "next_rotation": st.Next.Format(time.RFC3339),
			})
			fmt.Fprintln(g.stdout, string(b))
		} else {
			fmt.Fprintf(g.stdout, "%s is not due: the master key at %s (version %d) is %s old; the schedule is %s, so it is due in %s, at %s\n",
				rb.Name, st.Display, st.Version, formatAge(st.Age), formatDays(rb.Schedule), formatAge(st.Next.Sub(now)), st.Next.Format(time.RFC3339))
		}
		return writeMetrics()
	}

	if g.output != "json" {
		fmt.Fprintf(g.stdout, "%s is due: the master key at %s (version %d) is %s old; the schedule is %s\n",
			rb.Name, st.Display, st.Version, formatAge(st.Age), formatDays(rb.Schedule))
	}
	// The attempt is on record before the run, so a run that dies midway
	// still shows an attempt without a success.
	m.Attempt = now
	if err := writeMetrics(); err != nil {
		return err
	}

	run := *o
	run.ifDue.ifDue = false
	runErr := g.runExec(ctx, name, &run)

	var ee *exitError
	lockHeld := errors.As(runErr, &ee) && ee.code == ExitLockHeld
	switch {
	case runErr == nil:
		m.Success, m.LastFailure = time.Now(), false
	case lockHeld:
		// Another run is rotating: this attempt neither failed nor succeeded.
	default:
		m.LastFailure = true
	}
	if after, err := runbookDue(ctx, vc, rb, inputs, time.Now()); err == nil {
		m.KeyAge, m.Due = after.Age, after.Due
	}
	return errors.Join(runErr, writeMetrics())
}
