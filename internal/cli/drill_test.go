package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
)

func TestDrillRefusesProduction(t *testing.T) {
	abs, err := filepath.Abs("../../runbooks")
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkdir(t, "", map[string]string{"inventory.yaml": "environment: production\nvars:\n  litellm_unit: litellm\n  litellm_port: \"4000\"\ngroups:\n  gateways:\nhosts:\n  gw1:\n    address: 198.18.250.2\n    groups: [gateways]\n"})
	out, errOut, code := w.run([]string{"RUNBOOK_RUNBOOKS=" + abs}, "drill", "contain", "--yes")
	if code != ExitUsage || !strings.Contains(errOut, "environment is production") {
		t.Fatalf("drill on production: exit %d\n%s%s", code, out, errOut)
	}
	if runs := w.runs(); len(runs) != 0 {
		t.Fatalf("a refused drill left %d runs", len(runs))
	}
}

// TestDrillOnTheLab drills compromise-master against the lab: the journal
// header says Drill, and a drill report lies beside the record with every
// phase's time against its target.
func TestDrillOnTheLab(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the lab")
	}
	lb := labtest.Full(t, 3)
	w := newWorkdir(t, "", nil)
	env := labRunbookEnv(t, lb)
	start := time.Now()
	out, errOut, code := w.run(env, "drill", "compromise-master", "--yes")
	t.Logf("drill of compromise-master on 3 gateways: %v", time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("drill: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "drill report: ") {
		t.Errorf("no drill report line:\n%s", out)
	}
	runs := w.runs()
	if len(runs) != 1 {
		t.Fatalf("%d runs", len(runs))
	}
	recs := w.journal(runs[0].RunID)
	if h := recs[0].Header; h == nil || !h.Drill || !strings.HasPrefix(h.Reason, "drill of compromise-master") {
		t.Fatalf("journal header: %+v", recs[0].Header)
	}
	reps, _ := filepath.Glob(filepath.Join(w.dir, "records", "*-compromise-master-*.drill.json"))
	if len(reps) != 1 {
		t.Fatalf("%d drill reports", len(reps))
	}
	b, err := os.ReadFile(reps[0])
	if err != nil {
		t.Fatal(err)
	}
	var rep drillReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Status != "succeeded" || !rep.TargetsMet || len(rep.Phases) != 3 || len(rep.Needed) != 0 || len(rep.Failed) != 0 {
		t.Errorf("drill report: %s", b)
	}
	for _, s := range rep.Steps {
		if s.Outcome != "changed" && s.Outcome != "ok" {
			t.Errorf("step %s: %s", s.ID, s.Outcome)
		}
	}
	md, err := os.ReadFile(strings.TrimSuffix(reps[0], ".json") + ".md")
	if err != nil || !strings.Contains(string(md), "## Phase times") {
		t.Errorf("markdown report: %v\n%s", err, md)
	}
	t.Logf("report:\n%s", md)
	leakScan(t, []secret.Value{lb.MasterKey}, map[string][]byte{"stdout": []byte(out), "stderr": []byte(errOut)}, w.dir)
}
