//go:build crashpoints

package engine

import (
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
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
