package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/lab"
)

// labDirEnv names the lab directory for drain and undrain when --dir is
// not given; the lab's env file exports it.
const labDirEnv = "RUNBOOK_LAB_DIR"

type drainOptions struct {
	dirOptions
	timeout time.Duration
	undrain bool
}

func (o *drainOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.dir, "dir", ".lab", "the lab's directory (without --dir: $"+labDirEnv+" when set)")
	f.DurationVar(&o.timeout, "timeout", lab.DrainTimeout, "give up when nginx's old workers have not exited after this long")
}

// labDir is --dir when given, else $RUNBOOK_LAB_DIR when set, else the
// flag's default.
func (o *drainOptions) labDir(cmd *cobra.Command) string {
	if !cmd.Flags().Changed("dir") {
		if d := os.Getenv(labDirEnv); d != "" {
			return d
		}
	}
	return o.dir
}

// newDrainCommand is `drain`, or with undrain `undrain`.
func newDrainCommand(out io.Writer, undrain bool) *cobra.Command {
	o := &drainOptions{undrain: undrain}
	use, short := "drain GATEWAY", "Take a gateway (gw1 or its address) out of the lab's nginx; returns once no nginx worker can send it a request"
	if undrain {
		use, short = "undrain GATEWAY", "Put a gateway (gw1 or its address) back into the lab's nginx"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDrain(cmd.Context(), out, o.labDir(cmd), args[0], o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func runDrain(ctx context.Context, out io.Writer, dir, gateway string, o *drainOptions) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	lab.DrainTimeout = o.timeout
	l, err := lab.Load(dir)
	if err != nil {
		return err
	}
	start := time.Now()
	what := "drained from"
	if o.undrain {
		what = "back in"
		err = l.Undrain(ctx, gateway)
	} else {
		err = l.Drain(ctx, gateway)
	}
	if err != nil {
		return err
	}
	for _, g := range l.Gateways {
		if g.Address == gateway {
			gateway = g.Name + " (" + g.Address + ")"
		}
	}
	fmt.Fprintf(out, "# %s %s nginx (%s)\n", gateway, what, time.Since(start).Round(time.Millisecond))
	return nil
}
