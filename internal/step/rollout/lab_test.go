package rollout

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/step/service"
	stepvault "github.com/runbook-dev/runbook/internal/step/vault"
	"github.com/runbook-dev/runbook/internal/vault"
)

// The lab tests run the kind against three gateways (network namespaces
// with OpenSSH, a systemctl stand-in and a LiteLLM-compatible gateway on
// port 4000, gw2 through a sudo user) behind the lab's nginx, with Vault
// and PostgreSQL. They go through the whole life of a master key: the salt
// key pinned, a scheduled rotation under load, a rotation that halts at a
// gateway and is rolled back, and a compromise where each gateway's
// containment is lifted once it passes its gate.

type labRun struct {
	t        *testing.T
	l        *lab.Lab
	d        *labDeps
	masker   *secret.Masker
	runID    string
	drain    []string
	undr     []string
	drainLog string
	loadKey  secret.Value
	// secrets are every key the test knows, to look for in argv, logs,
	// notes and errors (the argv watcher reads them as they grow).
	mu      sync.Mutex
	secrets []secret.Value
}

func (r *labRun) addSecret(v secret.Value) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secrets = append(r.secrets, v)
}

func (r *labRun) known() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([][]byte, 0, len(r.secrets))
	for _, s := range r.secrets {
		out = append(out, s.Bytes())
	}
	return out
}

func (r *labRun) env(stepID string) runEnv { return newEnv(r.runID, stepID, r.d, r.masker) }

// vaultKey reads version n of the master key.
func (r *labRun) vaultKey(n int) secret.Value {
	r.t.Helper()
	e, err := r.d.vc.ReadVersion(context.Background(), "litellm/master", n, vault.PlainFields...)
	if err != nil {
		r.t.Fatal(err)
	}
	return e.Secret("key")
}

// newMasterKey runs vault.master_key (mode new) as a run of its own (the
// kind finds a key its run already wrote) and returns the version.
func (r *labRun) newMasterKey(stepID string) int {
	r.t.Helper()
	st, err := stepvault.MasterKeySpec.New(step.Params{})
	if err != nil {
		r.t.Fatal(err)
	}
	env := r.env(stepID).env
	env.RunID = newRunID() + "-" + stepID
	_, out, err := apply(context.Background(), st, env)
	if err != nil {
		r.t.Fatal(err)
	}
	v, _ := strconv.Atoi(out["version"])
	r.addSecret(r.vaultKey(v))
	return v
}

func (r *labRun) rollout(p step.Params) *Rollout {
	r.t.Helper()
	st, err := Spec.New(p)
	if err != nil {
		r.t.Fatal(err)
	}
	ro := st.(*Rollout)
	ro.ProbeInterval = 100 * time.Millisecond
	return ro
}

// envFile reads a gateway's environment file from the root namespace.
func envFile(t testing.TB, g *lab.Gateway, suffix string) *litellm.EnvFile {
	t.Helper()
	b, err := os.ReadFile(g.EnvPath() + suffix)
	if err != nil {
		t.Fatal(err)
	}
	f, err := litellm.ParseEnvFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func lookup(f *litellm.EnvFile, name string) secret.Value { v, _ := f.Lookup(name); return v }

// accepts asks gateway g directly whether it accepts key.
func accepts(g *lab.Gateway, key secret.Value) int {
	h := litellm.ProbeHTTP(context.Background(), &http.Client{Timeout: 3 * time.Second}, g.URL(), []secret.Value{key})
	return h.Models[0]
}

func gatewayPID(t testing.TB, g *lab.Gateway) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(g.RunDir, "litellm.pid"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func portState(g *lab.Gateway) string {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(g.Address, "4000"), 1500*time.Millisecond)
	if err == nil {
		c.Close()
		return "open"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "refused"
	}
	return err.Error()
}

// noSecrets fails when any known key is in one of the texts.
func (r *labRun) noSecrets(what string, texts ...string) {
	r.t.Helper()
	for _, s := range r.known() {
		for _, txt := range texts {
			if len(s) > 0 && strings.Contains(txt, string(s)) {
				r.t.Errorf("a key appears in %s", what)
			}
		}
	}
}

func notesText(ns []recordedNote) string {
	var b strings.Builder
	for _, n := range ns {
		fmt.Fprintf(&b, "%s %s %s %s %v\n", n.Step, n.Host, n.Note.Kind, n.Note.Text, n.Note.Fields)
	}
	return b.String()
}

// hostStates reads the key_version notes: host -> state and version.
func hostStates(ns []recordedNote) map[string][2]string {
	out := map[string][2]string{}
	for _, n := range ns {
		if n.Note.Kind == "key_version" {
			out[n.Host] = [2]string{n.Note.Fields["state"], n.Note.Fields["version"]}
		}
	}
	return out
}

func newRunID() string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// nginxDrain writes the drain script: it marks a gateway down in the lab
// nginx's upstream (or back up) and reloads nginx, whose old workers
// finish their requests before they exit.
func nginxDrain(t testing.TB, l *lab.Lab) (drain, undrain []string, logPath string) {
	t.Helper()
	dir := t.TempDir()
	logPath = filepath.Join(dir, "drain.log")
	script := filepath.Join(dir, "lb")
	conf := filepath.Join(l.Nginx.Dir, "nginx.conf")
	text := fmt.Sprintf(`#!/bin/sh
set -eu
case $1 in
drain) sed -i "s|server $2:4000 max_fails|server $2:4000 down max_fails|" %[1]q ;;
undrain) sed -i "s|server $2:4000 down max_fails|server $2:4000 max_fails|" %[1]q ;;
*) exit 2 ;;
esac
echo "$1 $3" >>%[2]q
kill -HUP %[3]d
`, conf, logPath, l.Nginx.PID)
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{script, "drain", "{address}", "{host}"}, []string{script, "undrain", "{address}", "{host}"}, logPath
}

func TestRolloutLab(t *testing.T) {
	l := labtest.Full(t, 3)
	r := &labRun{t: t, l: l, d: newLabDeps(t, l), masker: &secret.Masker{}, runID: newRunID()}
	r.masker.Add(l.MasterKey)
	r.addSecret(l.MasterKey)
	r.drain, r.undr, r.drainLog = nginxDrain(t, l)
	r.loadKey = loadKey(t, l)
	r.addSecret(r.loadKey)
	var v1, v2 int

	if !t.Run("scheduled rotation under load", func(t *testing.T) {
		r.t = t
		ctx := context.Background()
		watch := watchArgv(l, r.known)
		load := startLoad(l.Nginx.Addr, r.loadKey, 8, 2000, 500000, 3*time.Minute)

		// 1. Pin the salt key to the master key every gateway runs.
		pin := r.rollout(step.Params{"salt": SaltPin, "drain": r.drain, "undrain": r.undr, "settle": 300 * time.Millisecond, "deadline": 30 * time.Second})
		e := r.env("pin-salt")
		t0 := time.Now()
		change, out, err := apply(ctx, pin, e.env)
		if err != nil {
			t.Fatal(err)
		}
		tPin := time.Since(t0)
		v1, _ = strconv.Atoi(out["version"])
		if v1 != 1 || out["changed"] != "3" || !strings.Contains(change, "pin LITELLM_SALT_KEY") {
			t.Fatalf("pin: version %d, changed %s: %s", v1, out["changed"], change)
		}

		// 2. A new master key, pending in Vault, then rolled out.
		v2 = r.newMasterKey("newkey")
		ro := r.rollout(step.Params{"version": v2, "drain": r.drain, "undrain": r.undr, "settle": 300 * time.Millisecond, "deadline": 30 * time.Second})
		e2 := r.env("rollout")
		t0 = time.Now()
		change2, out2, err := apply(ctx, ro, e2.env)
		if err != nil {
			t.Fatal(err)
		}
		tRoll := time.Since(t0)
		load.Finish()
		watch.finish()
		if out2["version"] != strconv.Itoa(v2) || out2["previous_version"] != strconv.Itoa(v1) || out2["changed"] != "3" {
			t.Fatalf("rollout outputs: %v", out2)
		}
		t.Logf("pin salt on 3 gateways: %v; rotation to version %d on 3 gateways: %v", tPin.Round(time.Millisecond), v2, tRoll.Round(time.Millisecond))
		t.Logf("load through nginx: %d requests in %v, %d failed %v", load.Total.Load(), load.Elapsed().Round(time.Millisecond), load.Failed.Load(), load.Failures())
		if load.Total.Load() < 2000 {
			t.Errorf("only %d requests during the rotation", load.Total.Load())
		}
		if load.Failed.Load() != 0 {
			t.Errorf("%d requests failed during the rotation: %v", load.Failed.Load(), load.Failures())
		}
		t.Logf("argv: %d samples of every process, %d command lines inside gateway namespaces: %v", watch.samples, watch.inGW, watch.gwCommands)
		if len(watch.leaks) > 0 {
			t.Errorf("a key was in a process's argv: %v", watch.leaks)
		}
		if watch.inGW == 0 {
			t.Error("the argv sampler saw nothing inside the gateways")
		}

		// The files: 0600, root's, the new key with the salt pinned to the
		// old one, the previous version kept beside it.
		k1, k2 := r.vaultKey(v1), r.vaultKey(v2)
		for _, g := range l.Gateways {
			for _, suffix := range []string{"", ".prev"} {
				fi, err := os.Stat(g.EnvPath() + suffix)
				if err != nil {
					t.Fatal(err)
				}
				st := fi.Sys().(*syscall.Stat_t)
				if fi.Mode().Perm() != 0o600 || st.Uid != 0 || st.Gid != 0 {
					t.Errorf("%s%s: mode %v, owner %d:%d", g.EnvPath(), suffix, fi.Mode().Perm(), st.Uid, st.Gid)
				}
			}
			f := envFile(t, g, "")
			if !lookup(f, litellm.EnvMasterKey).Equal(k2) || !lookup(f, litellm.EnvSaltKey).Equal(k1) {
				t.Errorf("%s: the file does not hold version %d with the salt pinned to version %d", g.Name, v2, v1)
			}
			if lookup(f, litellm.EnvDatabaseURL).Reveal() != l.GatewayDatabaseURL {
				t.Errorf("%s: DATABASE_URL changed", g.Name)
			}
			if p := envFile(t, g, ".prev"); !lookup(p, litellm.EnvMasterKey).Equal(k1) {
				t.Errorf("%s: litellm.env.prev does not hold version %d", g.Name, v1)
			}
			if accepts(g, k2) != 200 || accepts(g, k1) != 401 {
				t.Errorf("%s: version %d %d, version %d %d", g.Name, v2, accepts(g, k2), v1, accepts(g, k1))
			}
			if left, _ := filepath.Glob(filepath.Join(g.Dir, ".litellm.env.*")); len(left) > 0 {
				t.Errorf("%s: temporary files left: %v", g.Name, left)
			}
		}

		// A second run changes nothing.
		again, err := ro.Check(ctx, r.env("rollout").env)
		if err != nil || !again.OK() {
			t.Fatalf("second check: %v: %s", err, again.Change)
		}
		notes := r.d.takeNotes()
		states := hostStates(notes)
		for _, g := range l.Gateways {
			if states[g.Name] != [2]string{StateRotated, strconv.Itoa(v2)} {
				t.Errorf("%s: note says %v", g.Name, states[g.Name])
			}
		}
		r.noSecrets("logs, notes, plans or outputs", e.logText(), e2.logText(), notesText(notes), change, change2, fmt.Sprint(out, out2))

		// The rotation is complete: make version 2 current.
		st, _ := stepvault.MasterKeySpec.New(step.Params{"mode": "promote", "version": v2})
		if _, _, err := apply(ctx, st, r.env("newkey").env); err != nil {
			t.Fatal(err)
		}
	}) {
		return
	}

	var v3 int
	if !t.Run("a gateway fails its gate: halt and roll back", func(t *testing.T) {
		r.t = t
		ctx := context.Background()
		gw1, gw2, gw3 := l.Gateways[0], l.Gateways[1], l.Gateways[2]
		k2 := r.vaultKey(v2)
		// gw2's configuration sets the master key inline: it wins over
		// the environment, so gw2 comes back on the old key.
		conf, err := os.ReadFile(gw2.ConfigPath())
		if err != nil {
			t.Fatal(err)
		}
		bad := strings.Replace(string(conf), "master_key: os.environ/LITELLM_MASTER_KEY", "master_key: "+k2.Reveal(), 1)
		if err := os.WriteFile(gw2.ConfigPath(), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(gw2.ConfigPath(), conf, 0o644)
		gw2Before, _ := os.ReadFile(gw2.EnvPath())
		gw3Before, _ := os.ReadFile(gw3.EnvPath())
		gw3Stat, _ := os.Stat(gw3.EnvPath())
		gw3PID := gatewayPID(t, gw3)
		os.Remove(r.drainLog)

		v3 = r.newMasterKey("newkey3")
		k3 := r.vaultKey(v3)
		load := startLoad(l.Nginx.Addr, r.loadKey, 8, 500, 500000, 2*time.Minute)
		watch := watchArgv(l, r.known)
		ro := r.rollout(step.Params{"version": v3, "drain": r.drain, "undrain": r.undr, "settle": 300 * time.Millisecond, "deadline": 5 * time.Second})
		e := r.env("rollout3")
		t0 := time.Now()
		_, _, err = apply(ctx, ro, e.env)
		took := time.Since(t0)
		load.Finish()
		watch.finish()
		var halt *HaltError
		if !errors.As(err, &halt) || halt.Host != "gw2" {
			t.Fatalf("want a halt at gw2, got %v", err)
		}
		if step.IsRetryable(err) {
			t.Error("a halted rollout is retryable")
		}
		t.Logf("halted after %v: %v", took.Round(time.Millisecond), err)
		t.Logf("load through nginx: %d requests, %d failed %v", load.Total.Load(), load.Failed.Load(), load.Failures())
		if load.Failed.Load() != 0 {
			t.Errorf("%d requests failed during the halted rollout", load.Failed.Load())
		}
		if len(watch.leaks) > 0 {
			t.Errorf("a key was in a process's argv: %v", watch.leaks)
		}
		want := map[string][2]string{
			"gw1": {StateRotated, strconv.Itoa(v3)},
			"gw2": {StateRolledBack, strconv.Itoa(v2)},
			"gw3": {StateUntouched, strconv.Itoa(v2)},
		}
		notes := r.d.takeNotes()
		if got := hostStates(notes); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("notes say %v, want %v", got, want)
		}
		for _, h := range halt.Hosts {
			if w := want[h.Host]; h.State != w[0] || h.Version != w[1] {
				t.Errorf("halt error: %v", h)
			}
		}
		r.noSecrets("the halt error, logs or notes", err.Error(), e.logText(), notesText(notes))

		// gw1 runs the new key; gw2 its previous file, serving on the old
		// key; gw3 was never touched, not even drained.
		if accepts(gw1, k3) != 200 || accepts(gw2, k2) != 200 || accepts(gw2, k3) != 401 || accepts(gw3, k2) != 200 {
			t.Error("the gateways do not run the keys the record says")
		}
		if got, _ := os.ReadFile(gw2.EnvPath()); !bytes.Equal(got, gw2Before) {
			t.Error("gw2's environment file is not its previous one")
		}
		if fi, _ := os.Stat(gw2.EnvPath()); fi.Mode().Perm() != 0o600 {
			t.Errorf("gw2's restored file is %v", fi.Mode().Perm())
		}
		got3, _ := os.ReadFile(gw3.EnvPath())
		st3, _ := os.Stat(gw3.EnvPath())
		if !bytes.Equal(got3, gw3Before) || !st3.ModTime().Equal(gw3Stat.ModTime()) || !os.SameFile(st3, gw3Stat) || gatewayPID(t, gw3) != gw3PID {
			t.Error("gw3 was touched")
		}
		if log, _ := os.ReadFile(r.drainLog); strings.Contains(string(log), "gw3") || !strings.Contains(string(log), "drain gw2") {
			t.Errorf("drain log:\n%s", log)
		}

		// With gw2's configuration fixed, the rollback mode puts version
		// 2 back everywhere; a second run changes nothing.
		os.WriteFile(gw2.ConfigPath(), conf, 0o644)
		rb := r.rollout(step.Params{"mode": ModeRollback, "version": v3, "deadline": 30 * time.Second})
		change, out, err := apply(ctx, rb, r.env("rollback").env)
		if err != nil {
			t.Fatal(err)
		}
		if out["version"] != strconv.Itoa(v2) || out["changed"] != "1" || !strings.HasPrefix(change, "roll back to") || !strings.Contains(change, "gw1: version 3 → version 2") {
			t.Errorf("rollback: %v: %s", out, change)
		}
		for _, g := range l.Gateways {
			if accepts(g, k2) != 200 || accepts(g, k3) != 401 {
				t.Errorf("%s does not run version %d after the rollback", g.Name, v2)
			}
		}
		if again, err := rb.Check(ctx, r.env("rollback").env); err != nil || !again.OK() {
			t.Fatalf("second check: %v: %s", err, again.Change)
		}
		r.d.takeNotes()
	}) {
		return
	}

	t.Run("compromise: containment lifted per host after its gate", func(t *testing.T) {
		r.t = t
		ctx := context.Background()
		// Contain: the proxy's port dropped (loopback stays open, so the
		// gate can probe through SSH) and the proxy stopped.
		for _, h := range r.d.hosts {
			tr, err := r.d.Transport(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []struct {
				spec *step.Spec
				p    step.Params
			}{
				{firewall.DropSpec, step.Params{"port": "4000", "tag": "contain"}},
				{service.StopSpec, step.Params{"unit": "litellm"}},
			} {
				st, err := s.spec.New(s.p)
				if err != nil {
					t.Fatal(err)
				}
				env := r.env("contain").env
				env.Host, env.Transport = h.Name, tr
				if _, _, err := apply(ctx, st, env); err != nil {
					t.Fatalf("%s on %s: %v", s.spec.Name, h.Name, err)
				}
			}
		}
		for _, g := range l.Gateways {
			if s := portState(g); s != "timeout" {
				t.Fatalf("%s: port 4000 %s after containment", g.Name, s)
			}
		}
		v4 := r.newMasterKey("newkey4")
		k4 := r.vaultKey(v4)

		// The default min_healthy refuses a fleet that is down.
		strict := r.rollout(step.Params{"version": v4, "probe": ProbeSSH, "salt": SaltIgnore, "deadline": 2 * time.Second})
		if _, _, err := apply(ctx, strict, r.env("strict").env); err == nil || !strings.Contains(err.Error(), "min_healthy") {
			t.Fatalf("a stopped fleet with the default min_healthy: %v", err)
		}
		for _, g := range l.Gateways {
			if f := envFile(t, g, ""); !lookup(f, litellm.EnvMasterKey).Equal(r.vaultKey(v2)) {
				t.Fatalf("%s was changed by a rollout that halted before it", g.Name)
			}
		}
		r.d.takeNotes()

		ro := r.rollout(step.Params{"version": v4, "probe": ProbeSSH, "salt": SaltIgnore, "min_healthy": 0,
			"lift_run_id": r.runID, "lift_tag": "contain", "deadline": 30 * time.Second})
		order := map[string]int{"gw1": 0, "gw2": 1, "gw3": 2}
		var seen []string
		ro.testHookAfterGate = func(host string) {
			// The host passed its gate: it is still contained; the hosts
			// before it are open, those after it still stopped.
			for _, g := range l.Gateways {
				s := portState(g)
				switch {
				case order[g.Name] < order[host] && s != "open":
					t.Errorf("while %s is checked, %s (done before) is %s", host, g.Name, s)
				case order[g.Name] >= order[host] && s != "timeout":
					t.Errorf("while %s is checked, %s is %s, not contained", host, g.Name, s)
				}
			}
			seen = append(seen, host)
		}
		watch := watchArgv(l, r.known)
		e := r.env("rollout4")
		t0 := time.Now()
		change, out, err := apply(ctx, ro, e.env)
		watch.finish()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("compromise rollout (start, gate through SSH, lift) on 3 gateways: %v", time.Since(t0).Round(time.Millisecond))
		if strings.Join(seen, ",") != "gw1,gw2,gw3" || out["changed"] != "3" || !strings.Contains(change, "lift the firewall rules") {
			t.Errorf("hosts %v, outputs %v: %s", seen, out, change)
		}
		for _, g := range l.Gateways {
			if s := portState(g); s != "open" {
				t.Errorf("%s: port 4000 %s after the rollout", g.Name, s)
			}
			if accepts(g, k4) != 200 || accepts(g, r.vaultKey(v2)) != 401 {
				t.Errorf("%s does not run version %d", g.Name, v4)
			}
		}
		if len(watch.leaks) > 0 {
			t.Errorf("a key was in a process's argv: %v", watch.leaks)
		}
		t.Logf("argv: %d samples, %d command lines inside gateway namespaces: %v", watch.samples, watch.inGW, watch.gwCommands)
		if again, err := ro.Check(ctx, r.env("rollout4").env); err != nil || !again.OK() {
			t.Fatalf("second check: %v: %s", err, again.Change)
		}
		r.noSecrets("logs or notes", e.logText(), notesText(r.d.takeNotes()), change)
	})
}
