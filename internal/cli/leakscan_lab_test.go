package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/vault"
)

// TestLeakScanShippedRunbooks runs compromise-master and then
// rotate-master, the way a responder and the timer do, on one lab under
// the leak watch (leakscan_watch_test.go): no secret generated or read in
// either run is in an output, the journal, a record, a temporary file, a
// lab log or any process's command line sampled during the runs, files
// holding one on the gateways are 0600, and PostgreSQL's data files (after
// a checkpoint) hold no key in the clear. The reason and the operator are
// hostile text: shell metacharacters, a newline and quotes that would
// create files in a canary directory if any shell, on the runner's host
// or on a gateway (the gateways share the host's /tmp), ever evaluated
// them.
func TestLeakScanShippedRunbooks(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up the lab")
	}
	lb := labtest.Full(t, 3)
	ctx := context.Background()
	w := newWorkdir(t, "", nil)
	canary := t.TempDir()
	hostile := "key in a paste; $(touch " + canary + "/dollar) `touch " + canary + "/backtick`" +
		"\n'; touch " + canary + "/quote; echo '\" && touch " + canary + "/and | touch " + canary + "/pipe"

	watch := watchLeaks(t, lb, w.bin)
	env := append(labRunbookEnv(t, lb), watch.env()...)
	env = append(env, "RUNBOOK_OPERATOR=ops$(touch "+canary+"/operator)")
	outputs := map[string][]byte{}
	for _, rb := range []string{"compromise-master", "rotate-master"} {
		out, errOut, code := w.run(env, "exec", rb, "--yes", "--reason", hostile)
		outputs[rb+" stdout"], outputs[rb+" stderr"] = []byte(out), []byte(errOut)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s%s", rb, code, out, errOut)
		}
	}
	out, errOut, code := w.run(env, "record", "--last")
	outputs["record stdout"], outputs["record stderr"] = []byte(out), []byte(errOut)
	if code != 0 {
		t.Errorf("record --last: exit %d\n%s", code, errOut)
	}

	// Every secret the runs generated or read: the master key's versions,
	// the re-issued virtual keys (labSecrets adds the lab's own).
	vc, err := vault.New(ctx, vault.Config{Address: lb.Vault.Addr, Token: lb.Vault.RootToken})
	if err != nil {
		t.Fatal(err)
	}
	md, err := vc.Metadata(ctx, "litellm/master")
	if err != nil {
		t.Fatal(err)
	}
	var secrets []secret.Value
	for _, v := range md.Versions {
		e, err := vc.ReadVersion(ctx, "litellm/master", v.Version)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, e.Secret("key"))
	}
	if len(md.Versions) != 3 {
		t.Errorf("%d master-key versions after two rotations, want 3", len(md.Versions))
	}
	reissued := 0
	for _, k := range lb.Seed.Keys {
		name := k.Alias
		if name == "" {
			name = k.Hash
		}
		e, err := vc.Read(ctx, "litellm/virtual-keys/"+name)
		if errors.Is(err, vault.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, e.Secret("key"))
		reissued++
	}
	if reissued != len(lb.Seed.Keys) {
		t.Errorf("%d of %d virtual keys re-issued", reissued, len(lb.Seed.Keys))
	}
	watch.finish(t, secrets, outputs, w.dir)

	// No key in the clear in PostgreSQL's files.
	conn := connectDB(t, lb.DatabaseURL)
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	m := newLeakMatcher(append(secrets, labSecrets(lb)...))
	var files, bytes int
	_ = filepath.WalkDir(filepath.Join(lb.Postgres.Dir, "data"), func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		files++
		bytes += len(b)
		for _, fp := range m.find(b) {
			t.Errorf("leak scan: secret %s in the clear in %s", fp, p)
		}
		return nil
	})
	t.Logf("PostgreSQL's data files: %d files, %d bytes scanned", files, bytes)

	// No hostile text was ever run as a command.
	left, _ := os.ReadDir(canary)
	for _, e := range left {
		t.Errorf("the hostile reason or operator ran a command: %s was created", e.Name())
	}
	leakSummary(t)
}
