package cli

import (
	"context"
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	statefs "github.com/runbook-dev/runbook/internal/state/fs"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"runbook": func() { os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the end-to-end scripts in testdata/script: each is a
// small session with the runbook command and its expected output.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Setenv("RUNBOOK_STATE", env.WorkDir+"/state")
			env.Setenv("RUNBOOK_RECORDS", env.WorkDir+"/records")
			env.Setenv("RUNBOOK_OPERATOR", "tester")
			env.Setenv("RUNBOOK_INVENTORY", env.WorkDir+"/inventory.yaml")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			// lastrun sets $RUNID to the newest run in the state store.
			"lastrun": func(ts *testscript.TestScript, neg bool, args []string) {
				store, err := statefs.Open(ts.Getenv("RUNBOOK_STATE"))
				ts.Check(err)
				defer store.Close()
				runs, err := store.Runs(context.Background())
				ts.Check(err)
				if len(runs) == 0 {
					ts.Fatalf("no runs")
				}
				ts.Setenv("RUNID", runs[0].RunID)
			},
		},
	})
}
