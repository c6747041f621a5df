package litellm

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/secret"
)

// BenchmarkReissue re-issues every key of a database of 1,000 and 10,000
// keys, Vault writes included. Each iteration is a new run, so every key
// is selected again; from the second on, alias paths already hold a version
// and are read, then written with check-and-set over it.
//
// Besides wall time it reports the CPU time the runner and the Vault server
// spend per key, which does not depend on what else the machine runs:
//
//	go test -run '^$' -bench Reissue -benchtime 3x ./internal/step/litellm/
func BenchmarkReissue(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			w := newWorld(b, worldOpts{seed: lab.SeedConfig{Keys: n, SpendLogsPerKey: -1, MasterKeyRequests: 1}})
			ctx := context.Background()
			var total, runnerCPU, vaultCPU time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w.masker = &secret.Masker{}
				s := newStep(b, ReissueSpec, map[string]any{"all": true})
				r0, v0 := selfCPU(), procCPU(w.vault.PID)
				t0 := time.Now()
				out, err := s.Apply(ctx, w.env(fmt.Sprintf("bench-%d-%d", n, i)))
				total += time.Since(t0)
				runnerCPU += selfCPU() - r0
				vaultCPU += procCPU(w.vault.PID) - v0
				if err != nil {
					b.Fatal(err)
				}
				if out["count"] != strconv.Itoa(n) {
					b.Fatalf("count %s", out["count"])
				}
				for _, line := range strings.Split(w.logs.String(), "\n") {
					if i := strings.Index(line, "count="); i >= 0 && strings.Contains(line, "re-issued virtual keys") {
						b.Log(line[i:])
					}
				}
				w.logs.Reset()
			}
			keys := float64(n) * float64(b.N)
			b.ReportMetric(keys/total.Seconds(), "keys/s")
			b.ReportMetric(float64(runnerCPU.Microseconds())/keys, "runner-cpu-µs/key")
			b.ReportMetric(float64(vaultCPU.Microseconds())/keys, "vault-cpu-µs/key")
		})
	}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is a process's user and system time from /proc (clock ticks of
// 10ms).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}
