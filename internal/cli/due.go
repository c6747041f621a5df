package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// The master key kind whose path says which key a scheduled runbook rotates.
const (
	masterKeyKind        = "vault.master_key"
	defaultMasterKeyPath = "litellm/master"
)

// dueStatus is how old the key a scheduled runbook rotates is, read from
// Vault.
type dueStatus struct {
	Runbook  string
	Schedule time.Duration
	Path     string // KV v2 path under the mount
	Display  string // mount/path
	Version  int    // the current version
	Last     time.Time
	Next     time.Time
	Age      time.Duration
	Due      bool
}

// masterKeyPath returns the Vault path of the key runbook rb rotates: the
// path parameter of its first vault.master_key step (its default when
// unset), with a ${{ inputs.NAME }} reference resolved from inputs.
func masterKeyPath(rb *runbook.Runbook, inputs map[string]string) (string, error) {
	for _, s := range rb.Steps {
		if s.Kind != masterKeyKind {
			continue
		}
		v, ok := s.With["path"]
		if !ok {
			return defaultMasterKeyPath, nil
		}
		p, ok := v.V.(string)
		if !ok {
			return "", fmt.Errorf("runbook %s: step %s: path is not a string", rb.Name, s.ID)
		}
		return resolveInputRef(p, inputs)
	}
	return "", fmt.Errorf("runbook %s has a schedule but no %s step, so no key whose age says when it is due", rb.Name, masterKeyKind)
}

// resolveInputRef resolves a value that is a plain string or exactly one
// ${{ inputs.NAME }} reference.
func resolveInputRef(p string, inputs map[string]string) (string, error) {
	if !strings.Contains(p, "${{") {
		return p, nil
	}
	t := strings.TrimSpace(p)
	if strings.HasPrefix(t, "${{") && strings.HasSuffix(t, "}}") {
		ref := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(t, "${{"), "}}"))
		if name, ok := strings.CutPrefix(ref, "inputs."); ok {
			if v, set := inputs[name]; set && v != "" {
				return v, nil
			}
			return "", fmt.Errorf("the master key path refers to input %s, which has no value", name)
		}
	}
	return "", fmt.Errorf("the master key path %q must be a plain path or ${{ inputs.NAME }}", p)
}

// keyDue reads the current version of the key at path and says whether it
// is older than schedule. The key's age runs from the earlier of the
// version's creation time in Vault and the path's custom metadata
// rotated_at (a key imported into Vault may carry the time it was really
// made there). Only metadata and the version number are used; the value is
// read by ReadCurrent as a secret and never leaves it.
func keyDue(ctx context.Context, vc *vault.Client, path string, schedule time.Duration, now time.Time) (*dueStatus, error) {
	cur, err := vc.ReadCurrent(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("read the current master key's version: %w", err)
	}
	last := cur.Created
	if s := cur.CustomMetadata[vault.MetaRotatedAt]; s != "" {
		if t, perr := time.Parse(time.RFC3339, s); perr == nil && (last.IsZero() || t.Before(last)) {
			last = t
		}
	}
	if last.IsZero() {
		return nil, fmt.Errorf("vault %s version %d: no creation time", vc.Display(path), cur.Version)
	}
	st := &dueStatus{
		Schedule: schedule, Path: path, Display: vc.Display(path), Version: cur.Version,
		Last: last.UTC(), Next: last.Add(schedule).UTC(), Age: now.Sub(last),
	}
	st.Due = !now.Before(st.Next)
	return st, nil
}

// vaultClient connects to the inventory's Vault for a check that runs no
// step.
func vaultClient(ctx context.Context, inv *inventory.Inventory) (*vault.Client, error) {
	d := newDeps(inv, &secret.Masker{}, nil, nil, false)
	defer d.Close()
	vc, err := d.Vault(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to vault: %w", err)
	}
	return vc, nil
}

// runbookDue loads nothing: it checks a loaded runbook's key.
func runbookDue(ctx context.Context, vc *vault.Client, rb *runbook.Runbook, inputs map[string]string, now time.Time) (*dueStatus, error) {
	path, err := masterKeyPath(rb, inputs)
	if err != nil {
		return nil, err
	}
	st, err := keyDue(ctx, vc, path, rb.Schedule, now)
	if err != nil {
		return nil, err
	}
	st.Runbook = rb.Name
	return st, nil
}

// formatAge prints a duration in days and hours, or seconds below a minute.
func formatAge(d time.Duration) string {
	neg := d < 0
	if neg {
		d = -d
	}
	var s string
	switch {
	case d >= 24*time.Hour:
		s = fmt.Sprintf("%dd%dh", d/(24*time.Hour), (d%(24*time.Hour))/time.Hour)
	case d >= time.Minute:
		s = d.Truncate(time.Minute).String()
	default:
		s = d.Truncate(time.Second).String()
	}
	if neg {
		return "-" + s
	}
	return s
}

type dueOptions struct{}

func (o *dueOptions) AddFlags(cmd *cobra.Command) {}

func newDueCommand(g *globals) *cobra.Command {
	o := &dueOptions{}
	cmd := &cobra.Command{
		Use:   "due",
		Short: "List the scheduled runbooks with their last and next rotation",
		Long: `due lists every runbook in the runbooks directory that has a schedule, with the
age of the master key it rotates (read from Vault's version metadata) and when
the next rotation is due. It exits 6 when a rotation is overdue or its key's age
cannot be read, so a monitoring check can run it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runDue(cmd.Context(), o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

type dueRow struct {
	Runbook  string `json:"runbook"`
	Schedule string `json:"schedule"`
	Path     string `json:"path,omitempty"`
	Version  int    `json:"version,omitempty"`
	Last     string `json:"last_rotation,omitempty"`
	Next     string `json:"next_rotation,omitempty"`
	AgeSec   int64  `json:"key_age_seconds,omitempty"`
	Status   string `json:"status"` // ok, overdue, error
	Error    string `json:"error,omitempty"`
}

func (g *globals) runDue(ctx context.Context, _ *dueOptions) error {
	files, err := filepath.Glob(filepath.Join(g.runbooksDir, "*.yaml"))
	if err != nil {
		return withCode(ExitUsage, fmt.Errorf("list runbooks in %s: %w", g.runbooksDir, err))
	}
	sort.Strings(files)
	var scheduled []*runbook.Runbook
	for _, f := range files {
		rb, err := runbook.LoadFile(f)
		if err != nil {
			return withCode(ExitUsage, err, "run 'runbook validate "+f+"'")
		}
		if rb.Schedule > 0 {
			scheduled = append(scheduled, rb)
		}
	}
	if len(scheduled) == 0 {
		if g.output == "json" {
			fmt.Fprintln(g.stdout, "[]")
		} else {
			fmt.Fprintf(g.stdout, "no runbook in %s has a schedule\n", g.runbooksDir)
		}
		return nil
	}
	inv, err := inventory.LoadFile(g.inventoryPath())
	if err != nil {
		return withCode(ExitUsage, err)
	}
	vc, vcErr := vaultClient(ctx, inv)
	now := time.Now()
	rows := make([]dueRow, 0, len(scheduled))
	bad := 0
	for _, rb := range scheduled {
		r := dueRow{Runbook: rb.Name, Schedule: formatDays(rb.Schedule)}
		var st *dueStatus
		err := vcErr
		if err == nil {
			var inputs map[string]string
			inputs, err = resolveInputs(rb, nil, "")
			if err == nil {
				st, err = runbookDue(ctx, vc, rb, inputs, now)
			}
		}
		switch {
		case err != nil:
			r.Status, r.Error = "error", err.Error()
			bad++
		default:
			r.Path, r.Version = st.Display, st.Version
			r.Last, r.Next = st.Last.Format(time.RFC3339), st.Next.Format(time.RFC3339)
			r.AgeSec = int64(st.Age / time.Second)
			r.Status = "ok"
			if st.Due {
				r.Status = "overdue"
				bad++
			}
		}
		rows = append(rows, r)
	}
	if g.output == "json" {
		b, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return withCode(ExitInternal, err)
		}
		fmt.Fprintln(g.stdout, string(b))
	} else {
		tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RUNBOOK\tSCHEDULE\tKEY\tAGE\tLAST ROTATION\tNEXT ROTATION\tSTATUS")
		for _, r := range rows {
			if r.Status == "error" {
				fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\terror: %s\n", r.Runbook, r.Schedule, r.Error)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s v%d\t%s\t%s\t%s\t%s\n", r.Runbook, r.Schedule, r.Path, r.Version,
				formatAge(time.Duration(r.AgeSec)*time.Second), r.Last, r.Next, r.Status)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if bad > 0 {
		return withCode(ExitAuditFailed, errors.New(plural(bad, "scheduled rotation is", "scheduled rotations are")+" overdue or unreadable"),
			"run 'runbook exec NAME --if-due --yes' for each, or see why its key cannot be read")
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
