//go:build crashpoints

package engine

import (
	"os"
	"strconv"
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
