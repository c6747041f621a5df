// Package cli is the runbook command line: one file per verb, and the only
// package that prints.
package cli

import (
	"context"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// globals are the flags every verb shares.
type globals struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	runbooksDir string
	inventory   string
	stateURL    string
	recordsDir  string
	output      string // text or json
	operator    string
	parallel    int
}

func (g *globals) addFlags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&g.runbooksDir, "runbooks", envOr("RUNBOOK_RUNBOOKS", "runbooks"), "directory of runbooks looked up by name ($RUNBOOK_RUNBOOKS)")
	f.StringVarP(&g.inventory, "inventory", "i", envOr("RUNBOOK_INVENTORY", "inventory.yaml"), "inventory file, or an environment name looked up as inventories/NAME.yaml ($RUNBOOK_INVENTORY)")
	f.StringVar(&g.stateURL, "state", envOr("RUNBOOK_STATE", defaultStateDir()), "state store: a directory, or a postgres:// URL for a shared store ($RUNBOOK_STATE)")
	f.StringVar(&g.recordsDir, "records", envOr("RUNBOOK_RECORDS", "records"), "directory for incident records ($RUNBOOK_RECORDS)")
	f.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	f.StringVar(&g.operator, "operator", envOr("RUNBOOK_OPERATOR", ""), "who runs this, for the journal and record ($RUNBOOK_OPERATOR; default: the login user)")
	f.IntVar(&g.parallel, "parallel", 0, "hosts worked on at once per step (default 64; a step's batch.parallel can lower it)")
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func defaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "runbook")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "runbook")
	}
	return ".runbook-state"
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "runbook",
		Short: "Run incident-response and key-rotation runbooks against LiteLLM gateways",
		Long: `runbook runs YAML runbooks of idempotent steps: containment over SSH, a new
master key in Vault, re-issued virtual keys, zero-downtime rollout, and an
incident record. Every run is journaled and can be resumed after a crash.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(g.stdin)
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	g.addFlags(root)
	root.AddCommand(
		newValidateCommand(g),
		newListCommand(g),
		newPlanCommand(g),
		newExecCommand(g),
		newResumeCommand(g),
		newRollbackCommand(g),
		newRunsCommand(g),
		newRecordCommand(g),
		newKindsCommand(g),
		newSchemaCommand(g),
		newKeysCommand(g),
		newDueCommand(g),
		newScheduleCommand(g),
		newAuditCommand(g),
		newDrillCommand(g),
		newVersionCommand(g),
	)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(ExitUsage, err, "see 'runbook "+c.Name()+" --help'")
	})
	return root
}

// Main runs the command line and returns the exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{stdin: stdin, stdout: stdout, stderr: stderr}
	root := newRootCommand(g)
	root.SetArgs(args)
	// Signals are handled where side effects happen (execute); elsewhere the
	// default (exit) is right, since nothing is in flight.
	err := root.ExecuteContext(context.Background())
	if err != nil {
		printError(stderr, err)
	}
	return exitCode(err)
}
