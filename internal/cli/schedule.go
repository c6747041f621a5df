package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/runbook"
)

// DefaultUnitDir is where schedule install writes its units.
const DefaultUnitDir = "/etc/systemd/system"

type scheduleInstallOptions struct {
	dir        string
	binary     string
	onCalendar string
	delay      time.Duration
	envFile    string
	metricsDir string
	user       string
	force      bool
}

func (o *scheduleInstallOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", DefaultUnitDir, "directory to write the service and timer into")
	f.StringVar(&o.binary, "binary", "", "the runbook binary the service runs (default: this one)")
	f.StringVar(&o.onCalendar, "on-calendar", "daily", "when the timer fires (systemd OnCalendar=)")
	f.DurationVar(&o.delay, "randomized-delay", time.Hour, "spread the start over this long (systemd RandomizedDelaySec=)")
	f.StringVar(&o.envFile, "env-file", "", "file the service reads its environment from (VAULT_ADDR, VAULT_TOKEN, DATABASE_URL...): secrets stay out of the unit")
	f.StringVar(&o.metricsDir, "metrics-dir", envOr("RUNBOOK_METRICS_DIR", ""), "directory for the Prometheus textfile-collector metrics (default: "+DefaultMetricsDir+" when it exists)")
	f.StringVar(&o.user, "user", "", "run the service as this user (default root)")
	f.BoolVar(&o.force, "force", false, "replace units that already exist with different content")
}

func newScheduleCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Run runbooks on a timer",
	}
	o := &scheduleInstallOptions{}
	install := &cobra.Command{
		Use:   "install NAME",
		Short: "Write a systemd service and timer that run a runbook daily when it is due",
		Long: `install writes runbook-NAME.service and runbook-NAME.timer into --dir. The
timer fires daily (Persistent=true, so a day missed while the machine was off
is caught up at boot, with a randomized delay); the service runs
'runbook exec NAME --yes --if-due' with the inventory, state and records paths
given now, so the rotation happens only once the key is older than the
runbook's schedule. Overlapping runs are refused by the run lock. Nothing is
enabled: install prints the systemctl command to run.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runScheduleInstall(cmd.Context(), args[0], o)
		},
	}
	o.AddFlags(install)
	cmd.AddCommand(install)
	return cmd
}

// systemdQuote quotes one ExecStart= argument: double quotes when needed,
// backslash escapes inside, and % and $ doubled so systemd expands nothing.
func systemdQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	s = strings.ReplaceAll(s, "$", "$$")
	if s != "" && !strings.ContainsAny(s, " \t\n\"'\\;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("absolute path of %s: %w", p, err)
	}
	return a, nil
}

func (g *globals) runScheduleInstall(_ context.Context, name string, o *scheduleInstallOptions) error {
	rb, err := runbook.LoadFile(g.runbookPath(name))
	if err != nil {
		return withCode(ExitUsage, err)
	}
	if o.delay < 0 {
		return usageError("--randomized-delay must not be negative")
	}
	bin := o.binary
	if bin == "" {
		if bin, err = os.Executable(); err != nil {
			return withCode(ExitUsage, fmt.Errorf("find this binary: %w", err), "pass --binary PATH")
		}
	}
	runbooks, err := absPath(g.runbooksDir)
	if err != nil {
		return withCode(ExitUsage, err)
	}
	inv, err := absPath(g.inventoryPath())
	if err != nil {
		return withCode(ExitUsage, err)
	}
	if _, err := os.Stat(inv); err != nil {
		return withCode(ExitUsage, fmt.Errorf("inventory: %w", err), "pass -i with the inventory the timer should use")
	}
	records, err := absPath(g.recordsDir)
	if err != nil {
		return withCode(ExitUsage, err)
	}
	stateArg := g.stateURL
	if strings.Contains(stateArg, "://") {
		u, perr := url.Parse(stateArg)
		if perr != nil {
			return usageError("--state: not a URL")
		}
		if _, hasPass := u.User.Password(); hasPass {
			return withCode(ExitUsage, errors.New("the state URL holds a password, which must not go into a unit file or a command line"),
				"set RUNBOOK_STATE in the --env-file instead, and leave --state out")
		}
	} else if stateArg, err = absPath(stateArg); err != nil {
		return withCode(ExitUsage, err)
	}
	argv := []string{bin, "--runbooks", runbooks, "--inventory", inv, "--records", records}
	if stateArg != "" {
		argv = append(argv, "--state", stateArg)
	}
	argv = append(argv, "exec", rb.Name, "--yes")
	if rb.Schedule > 0 {
		argv = append(argv, "--if-due")
		if o.metricsDir != "" {
			md, err := absPath(o.metricsDir)
			if err != nil {
				return withCode(ExitUsage, err)
			}
			argv = append(argv, "--metrics-dir", md)
		}
	}
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = systemdQuote(a)
	}

	unit := "runbook-" + rb.Name
	what := "when its master key is older than " + formatDays(rb.Schedule)
	if rb.Schedule == 0 {
		what = "daily (the runbook has no schedule: its own checks decide what changes)"
	}
	var svc bytes.Buffer
	fmt.Fprintf(&svc, "[Unit]\nDescription=runbook %s (%s)\n", rb.Name, what)
	svc.WriteString("Wants=network-online.target\nAfter=network-online.target\n\n")
	svc.WriteString("[Service]\nType=oneshot\n")
	if o.user != "" {
		fmt.Fprintf(&svc, "User=%s\n", o.user)
	}
	if o.envFile != "" {
		ef, err := absPath(o.envFile)
		if err != nil {
			return withCode(ExitUsage, err)
		}
		fmt.Fprintf(&svc, "EnvironmentFile=%s\n", ef)
	}
	svc.WriteString("Environment=RUNBOOK_OPERATOR=" + systemdQuote(unit+".timer") + "\n")
	fmt.Fprintf(&svc, "ExecStart=%s\n", strings.Join(quoted, " "))
	// The runner finishes side effects in flight on the first SIGTERM.
	svc.WriteString("KillMode=mixed\nTimeoutStartSec=2h\nTimeoutStopSec=5min\n")

	var tmr bytes.Buffer
	fmt.Fprintf(&tmr, "[Unit]\nDescription=runbook %s, checked daily\n\n", rb.Name)
	fmt.Fprintf(&tmr, "[Timer]\nOnCalendar=%s\nPersistent=true\nRandomizedDelaySec=%d\nUnit=%s.service\n\n", o.onCalendar, int64(o.delay/time.Second), unit)
	tmr.WriteString("[Install]\nWantedBy=timers.target\n")

	svcPath := filepath.Join(o.dir, unit+".service")
	tmrPath := filepath.Join(o.dir, unit+".timer")
	for _, f := range []struct {
		path string
		data []byte
	}{{svcPath, svc.Bytes()}, {tmrPath, tmr.Bytes()}} {
		if old, err := os.ReadFile(f.path); err == nil && !bytes.Equal(old, f.data) && !o.force {
			return withCode(ExitUsage, fmt.Errorf("%s exists with other content", f.path), "pass --force to replace it")
		}
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{svcPath, svc.Bytes()}, {tmrPath, tmr.Bytes()}} {
		if err := writeFileAtomic(f.path, f.data, 0o644); err != nil {
			return withCode(ExitInternal, err)
		}
	}
	fmt.Fprintf(g.stdout, "wrote %s\nwrote %s\n", svcPath, tmrPath)
	fmt.Fprintf(g.stdout, "nothing is enabled yet; to start the timer run:\n  systemctl daemon-reload && systemctl enable --now %s.timer\n", unit)
	if o.envFile == "" {
		fmt.Fprintln(g.stdout, "note: no --env-file: the service must find Vault's address and token through the inventory")
	}
	return nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory and a rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".runbook-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
