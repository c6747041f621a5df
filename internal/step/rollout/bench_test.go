package rollout

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/step"
	stepvault "github.com/runbook-dev/runbook/internal/step/vault"
)

// BenchmarkRotationUnderLoad rotates the master key of three gateways
// behind nginx (drained and put back one at a time) while eight clients
// send requests with a virtual key through nginx, each on its own
// connection. It reports the requests sent during each rotation and the
// ones that failed, which must be none.
//
//	go test -run '^$' -bench RotationUnderLoad -benchtime 3x ./internal/step/rollout/
func BenchmarkRotationUnderLoad(b *testing.B) {
	l := labtest.Full(b, 3)
	d := newLabDeps(b, l)
	masker := &secret.Masker{}
	drain, undrain, _ := nginxDrain(b, l)
	key := loadKey(b, l)
	ctx := context.Background()
	params := step.Params{"drain": drain, "undrain": undrain, "settle": 300 * time.Millisecond, "deadline": 30 * time.Second}

	pin := step.Params{"salt": SaltPin}
	for k, v := range params {
		pin[k] = v
	}
	st, err := Spec.New(pin)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := apply(ctx, st, newEnv(newRunID(), "pin-salt", d, masker).env); err != nil {
		b.Fatal(err)
	}

	var requests, failed int64
	var took time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		mk, _ := stepvault.MasterKeySpec.New(step.Params{})
		_, out, err := apply(ctx, mk, newEnv(newRunID(), "newkey", d, masker).env)
		if err != nil {
			b.Fatal(err)
		}
		version, _ := strconv.Atoi(out["version"])
		p := step.Params{"version": version}
		for k, v := range params {
			p[k] = v
		}
		st, err := Spec.New(p)
		if err != nil {
			b.Fatal(err)
		}
		e := newEnv(newRunID(), "rollout", d, masker)
		load := startLoad(l.Nginx.Addr, key, 8, 0, 1<<40, 5*time.Minute)
		b.StartTimer()
		t0 := time.Now()
		_, res, err := apply(ctx, st, e.env)
		took += time.Since(t0)
		b.StopTimer()
		load.Finish()
		if err != nil {
			b.Fatal(err)
		}
		if res["changed"] != "3" {
			b.Fatalf("rotation %d changed %s gateways", i+1, res["changed"])
		}
		requests += load.Total.Load()
		failed += load.Failed.Load()
		if load.Failed.Load() > 0 {
			b.Errorf("rotation %d: %d of %d requests failed: %v", i+1, load.Failed.Load(), load.Total.Load(), load.Failures())
		}
		for _, line := range strings.Split(strings.TrimSpace(e.logText()), "\n") {
			if strings.Contains(line, "passed the health gate") {
				b.Log(line)
			}
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(requests)/float64(b.N), "requests/op")
	b.ReportMetric(float64(failed)/float64(b.N), "failed/op")
	b.ReportMetric(took.Seconds()/float64(b.N), "s/rotation")
}
