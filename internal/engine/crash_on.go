//go:build crashpoints

package engine

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// CrashPointsEnabled reports whether this binary was built with the
// test-only crash hook. Only binaries built with -tags crashpoints have it;
// `runbook version` says so, and release builds never set the tag.
const CrashPointsEnabled = true

// crashAfter is read once: RUNBOOK_TEST_CRASH_AFTER=N kills the process with
// SIGKILL right after the Nth journal record is durable, to test resume at
// every journal point.
var crashAfter, _ = strconv.ParseInt(os.Getenv("RUNBOOK_TEST_CRASH_AFTER"), 10, 64)

func crashPoint(written int64) {
	if d, ok := clockSteps[written]; ok {
		clockOffset.Add(int64(d))
		fmt.Fprintf(os.Stderr, "runbook: test hook: the wall clock steps by %s after journal record %d\n", d, written)
	}
	if crashAfter > 0 && written == crashAfter {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// RUNBOOK_TEST_CRASH_AFTER_APPLY=N kills the process right after the Nth
// Apply returns, before its outcome is journaled: the side effect happened
// and the journal only holds its intent.
var (
	crashAfterApplyN, _ = strconv.ParseInt(os.Getenv("RUNBOOK_TEST_CRASH_AFTER_APPLY"), 10, 64)
	applies             atomic.Int64
)

func crashAfterApply() {
	if crashAfterApplyN > 0 && applies.Add(1) == crashAfterApplyN {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
}

// RUNBOOK_TEST_CLOCK_STEP=K:D[,K:D...] steps the wall clock the runner
// reads (wallNow) by the duration D right after the Kth journal record is
// durable (K 0: from the start), as NTP or `date -s` steps a machine's
// clock, without touching the machine's. Malformed entries are ignored.
var (
	clockSteps  = parseClockSteps(os.Getenv("RUNBOOK_TEST_CLOCK_STEP"))
	clockOffset atomic.Int64
)

func init() { clockOffset.Store(int64(clockSteps[0])) }

func parseClockSteps(s string) map[int64]time.Duration {
	out := map[int64]time.Duration{}
	for _, part := range strings.Split(s, ",") {
		k, d, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			continue
		}
		n, err1 := strconv.ParseInt(k, 10, 64)
		dur, err2 := time.ParseDuration(d)
		if err1 == nil && err2 == nil && n >= 0 {
			out[n] += dur
		}
	}
	return out
}

// wallNow reads the wall clock, stepped by the test hook.
func wallNow() time.Time { return time.Now().Add(time.Duration(clockOffset.Load())) }
