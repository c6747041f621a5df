package lab_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
)

// BenchmarkLabUp20 times bringing up a full lab of 20 gateways: hosts with
// sshd, nginx, PostgreSQL (initdb, schema, 50 seeded keys), Vault and 20
// running gateway processes. Building the Vault server and the gateway is
// done before the clock starts; tearing down is not timed.
func BenchmarkLabUp20(b *testing.B) { benchmarkUp(b, 20) }

// BenchmarkLabUp3 is the size `make lab` brings up.
func BenchmarkLabUp3(b *testing.B) { benchmarkUp(b, 3) }

func benchmarkUp(b *testing.B, n int) {
	cfg := lab.Full("", n)
	if err := lab.Available(cfg); err != nil {
		labtest.Missing(b, "lab infrastructure is missing: "+err.Error())
	}
	ctx := context.Background()
	if _, err := lab.VaultBinary(ctx); err != nil {
		b.Fatal(err)
	}
	bin, err := lab.GatewayBinary(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cfg.GatewayBinary = bin
	cfg.Owner = os.Getpid()
	b.ResetTimer()
	b.StopTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		dir, err := os.MkdirTemp("", "rbl")
		if err != nil {
			b.Fatal(err)
		}
		cfg.Dir = dir
		start := time.Now()
		b.StartTimer()
		_, err = lab.Up(ctx, cfg)
		b.StopTimer()
		total += time.Since(start)
		if derr := lab.Down(dir); derr != nil {
			b.Error(derr)
		}
		_ = os.RemoveAll(dir)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/up")
}
