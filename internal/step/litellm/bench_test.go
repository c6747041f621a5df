package litellm

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/secret"
)

// BenchmarkReissue re-issues every key of a database of 1,000 and 10,000
// keys, Vault writes included. Each iteration is a new run, so every key
// is selected again; from the second on, alias paths already hold a version
// and are written with check-and-set over it.
//
//	go test -run '^$' -bench Reissue -benchtime 3x ./internal/step/litellm/
func BenchmarkReissue(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			w := newWorld(b, worldOpts{seed: lab.SeedConfig{Keys: n, SpendLogsPerKey: -1, MasterKeyRequests: 1}})
			ctx := context.Background()
			var total time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w.masker = &secret.Masker{}
				s := newStep(b, ReissueSpec, map[string]any{"all": true})
				t0 := time.Now()
				out, err := s.Apply(ctx, w.env(fmt.Sprintf("bench-%d-%d", n, i)))
				total += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if out["count"] != strconv.Itoa(n) {
					b.Fatalf("count %s", out["count"])
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/total.Seconds(), "keys/s")
		})
	}
}
