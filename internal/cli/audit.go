package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/audit"
	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/vault"
)

type auditOptions struct {
	masterKeyPath    string
	masterKeyMaxAge  string
	virtualKeyMaxAge string
	requestsPerHour  int
	window           string
}

func (o *auditOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.masterKeyPath, "master-key-path", "", "the master key's path under the KV v2 mount (default: the inventory's vault prefix + /master)")
	f.StringVar(&o.masterKeyMaxAge, "master-key-max-age", "90d", "rotation policy for the master key (e.g. 90d, 2160h)")
	f.StringVar(&o.virtualKeyMaxAge, "virtual-key-max-age", "90d", "rotation policy for virtual keys")
	f.IntVar(&o.requestsPerHour, "requests-per-hour", 1000, "report keys with more requests than this in any hour of the window")
	f.StringVar(&o.window, "window", "24h", "how far back the request-rate check looks")
}

func newAuditCommand(g *globals) *cobra.Command {
	o := &auditOptions{}
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Check key hygiene and the deployment's security checklist",
		Long: `audit runs the security checklist against the inventory and changes nothing:
  master-key-age          the current master key in Vault against the policy
  virtual-key-age         usable virtual keys not rotated within the policy
  request-rate            keys over the requests-per-hour threshold (spend logs)
  master-key-in-config    the master key in the client configuration files a
                          host's client_config_files variable names (comma-
                          separated absolute paths); files are read over SSH
                          and candidate tokens compared by SHA-256 on the
                          runner: the key is never sent to a host
  containment-lifted      firewall DROP rules from runbook runs still in place
  vault-token-privileges  the runner's token has no capability outside its
                          prefix (sys/capabilities-self)
Each check passes, warns (could not check, or worth a look) or fails. The
exit status is 6 when any check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.runAudit(cmd.Context(), o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

// parseDays accepts Go durations and a number of days ("90d").
func parseDays(flag, s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		var n int
		if _, err := fmt.Sscanf(d, "%d", &n); err == nil && n > 0 && fmt.Sprint(n) == d {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return 0, usageError("--%s %q: want a positive duration such as 90d or 36h", flag, s)
	}
	return v, nil
}

func (g *globals) runAudit(ctx context.Context, o *auditOptions) error {
	var cfg audit.Config
	var err error
	if cfg.MasterKeyMaxAge, err = parseDays("master-key-max-age", o.masterKeyMaxAge); err != nil {
		return err
	}
	if cfg.VirtualKeyMaxAge, err = parseDays("virtual-key-max-age", o.virtualKeyMaxAge); err != nil {
		return err
	}
	if cfg.Window, err = parseDays("window", o.window); err != nil {
		return err
	}
	if o.requestsPerHour <= 0 {
		return usageError("--requests-per-hour %d: want a positive number", o.requestsPerHour)
	}
	cfg.RequestsPerHour = o.requestsPerHour
	cfg.MasterKeyPath = o.masterKeyPath
	inv, err := inventory.LoadFile(g.inventoryPath())
	if err != nil {
		return withCode(ExitUsage, err)
	}
	masker := &secret.Masker{}
	d := newDeps(inv, masker, nil, g.stdin, false)
	defer d.Close()
	env := audit.Env{
		Inventory: inv,
		Vault:     d.Vault,
		DB:        func(ctx context.Context) (*pgxpool.Pool, error) { return d.DB(ctx) },
		Transport: func(ctx context.Context, h *inventory.Host) (transport.Transport, error) { return d.For(ctx, h) },
		VaultConfig: func() (vault.Config, error) {
			return vault.ConfigFromInventory(inv.Vault, func(ref inventory.SecretRef) (secret.Value, error) {
				v, err := vault.ResolveSecretRef(ctx, ref, nil)
				masker.Add(v)
				return v, err
			})
		},
		Masker: masker,
	}
	results := audit.Run(ctx, env, cfg)
	counts := audit.Counts(results)
	if g.output == "json" {
		enc := json.NewEncoder(masker.Writer(g.stdout))
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{
			"inventory":   inv.File,
			"environment": inv.Environment,
			"results":     results,
			"pass":        counts[audit.Pass], "warn": counts[audit.Warn], "fail": counts[audit.Fail],
		}); err != nil {
			return withCode(ExitInternal, fmt.Errorf("write audit: %w", err))
		}
	} else {
		renderAudit(masker.Writer(g.stdout), envName(&loaded{inv: inv}), results)
	}
	if audit.Failed(results) {
		return withCode(ExitAuditFailed, fmt.Errorf("audit: %d of %d checks failed", counts[audit.Fail], len(results)))
	}
	return nil
}

func renderAudit(w io.Writer, env string, rs []audit.Result) {
	fmt.Fprintf(w, "audit of %s\n", env)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tTARGET\tREASON")
	for _, r := range rs {
		target := r.Target
		if target == "" {
			target = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.ToUpper(string(r.Status)), r.Check, target, r.Reason)
		for _, d := range r.Details {
			fmt.Fprintf(tw, "\t\t\t  %s\n", d)
		}
	}
	tw.Flush()
	c := audit.Counts(rs)
	fmt.Fprintf(w, "%d passed, %d warned, %d failed\n", c[audit.Pass], c[audit.Warn], c[audit.Fail])
}
