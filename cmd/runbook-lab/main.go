// Command runbook-lab brings the runbook lab up and down: gateway hosts in
// network namespaces (OpenSSH, iptables, a LiteLLM-compatible gateway),
// nginx in front of them, PostgreSQL with LiteLLM's schema and seeded keys,
// and a Vault server core.
//
//	runbook-lab up [--gateways N] [--keys N] [--dir .lab] [--salt-key]
//	runbook-lab env [--dir .lab]
//	runbook-lab status [--dir .lab]
//	runbook-lab down [--dir .lab]
//	runbook-lab drain GATEWAY [--dir DIR] [--timeout 30s]
//	runbook-lab undrain GATEWAY [--dir DIR] [--timeout 30s]
//	runbook-lab build-vault
//
// drain and undrain take the lab from $RUNBOOK_LAB_DIR (which the lab's env
// file exports) when --dir is not given; the other commands read --dir
// alone, default .lab.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := newRootCommand(os.Stdout)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "runbook-lab: error: %v\n", err)
		if lab.IsMissing(err) {
			fmt.Fprintln(os.Stderr, "runbook-lab: hint: run as root with openssh-server, iptables, nginx, postgresql and sudo installed")
		}
		os.Exit(1)
	}
}

func newRootCommand(out io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "runbook-lab",
		Short:         "Bring the runbook lab up and down",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.AddCommand(newUpCommand(out), newDownCommand(out), newEnvCommand(out), newStatusCommand(out), newBuildVaultCommand(out),
		newDrainCommand(out, false), newDrainCommand(out, true))
	return root
}

type dirOptions struct{ dir string }

func (o *dirOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.dir, "dir", ".lab", "the lab's directory")
}

type upOptions struct {
	dirOptions
	gateways  int
	keys      int
	saltKey   bool
	noVault   bool
	noNginx   bool
	noPG      bool
	timeout   time.Duration
	gatewayBn string
}

func (o *upOptions) AddFlags(cmd *cobra.Command) {
	o.dirOptions.AddFlags(cmd)
	f := cmd.Flags()
	f.IntVar(&o.gateways, "gateways", 3, "number of gateway hosts")
	f.IntVar(&o.keys, "keys", 50, "number of seeded virtual keys")
	f.BoolVar(&o.saltKey, "salt-key", false, "set LITELLM_SALT_KEY on the gateways")
	f.BoolVar(&o.noVault, "no-vault", false, "do not start Vault")
	f.BoolVar(&o.noNginx, "no-nginx", false, "do not start nginx")
	f.BoolVar(&o.noPG, "no-postgres", false, "do not start PostgreSQL (and so no gateway processes)")
	f.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up after this long (a cold Vault build takes minutes)")
	f.StringVar(&o.gatewayBn, "gateway-binary", "", "run this LiteLLM-compatible gateway instead of building cmd/litellm-gateway")
}

func newUpCommand(out io.Writer) *cobra.Command {
	o := &upOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Bring the lab up (or reuse the healthy one in --dir), print the inventory path and the environment",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runUp(cmd.Context(), out, o) },
	}
	o.AddFlags(cmd)
	return cmd
}

func runUp(ctx context.Context, out io.Writer, o *upOptions) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	cfg := lab.Full(o.dir, o.gateways)
	cfg.Keys = o.keys
	cfg.SaltKey = o.saltKey
	cfg.Vault = !o.noVault
	cfg.Nginx = !o.noNginx
	cfg.Postgres = !o.noPG
	cfg.GatewayBinary = o.gatewayBn
	start := time.Now()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "# lab up in %s (%d gateways, %s)\n", l.Dir, len(l.Gateways), time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(out, "# inventory: %s\n", l.InventoryPath)
	fmt.Fprintf(out, "# environment (also in %s):\n", l.EnvPath)
	for _, line := range l.EnvLines() {
		fmt.Fprintln(out, line)
	}
	return nil
}

func newDownCommand(out io.Writer) *cobra.Command {
	o := &dirOptions{}
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Tear the lab down: no namespace, process, veth or allocation is left",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := lab.Down(o.dir); err != nil {
				return err
			}
			fmt.Fprintf(out, "# lab in %s is down\n", o.dir)
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func newEnvCommand(out io.Writer) *cobra.Command {
	o := &dirOptions{}
	cmd := &cobra.Command{
		Use:   "env",
		Short: "Print the export lines for the running lab",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			l, err := lab.Load(o.dir)
			if err != nil {
				return err
			}
			for _, line := range l.EnvLines() {
				fmt.Fprintln(out, line)
			}
			return nil
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func newStatusCommand(out io.Writer) *cobra.Command {
	o := &dirOptions{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what runs in the lab",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runStatus(cmd.Context(), out, o) },
	}
	o.AddFlags(cmd)
	return cmd
}

func runStatus(ctx context.Context, out io.Writer, o *dirOptions) error {
	l, err := lab.Load(o.dir)
	if err != nil {
		return err
	}
	st := l.Status(ctx)
	fmt.Fprintf(out, "lab %s (block %d, prefix %s)\n", l.Dir, l.Block, l.Prefix)
	for _, g := range st.Gateways {
		fmt.Fprintf(out, "  %-5s %-15s ns %-12s user %-6s sshd %-4s litellm %s\n",
			g.Name, g.Address, g.Namespace, g.User, word(g.SSHD), g.LiteLLM)
	}
	if l.Nginx != nil {
		drained := ""
		if len(l.Nginx.Drained) > 0 {
			drained = " (drained: " + strings.Join(l.Nginx.Drained, ", ") + ")"
		}
		fmt.Fprintf(out, "  nginx     %s %s%s\n", l.Nginx.Addr, word(st.Nginx), drained)
	}
	if l.Postgres != nil {
		fmt.Fprintf(out, "  postgres  127.0.0.1:%d %s\n", l.Postgres.Port, word(st.Postgres))
	}
	if l.Vault != nil {
		fmt.Fprintf(out, "  vault     %s %s\n", strings.TrimPrefix(l.Vault.Addr, "http://"), word(st.Vault))
	}
	fmt.Fprintf(out, "  inventory %s\n", l.InventoryPath)
	if !st.Healthy() {
		return errors.New("the lab is not healthy: run runbook-lab up to rebuild it")
	}
	return nil
}

func word(ok bool) string {
	if ok {
		return "up"
	}
	return "down"
}

func newBuildVaultCommand(out io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "build-vault",
		Short: "Build the lab's Vault server (cached by its go.sum; a cold build takes minutes)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			path, err := lab.VaultBinary(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s (%s)\n", path, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
}
