//go:build !crashpoints

package engine

import "time"

// crashPoint is a no-op in every build but the test build tagged
// "crashpoints" (see crash_on.go).
func crashPoint(int64) {}

// crashAfterApply is a no-op outside the crashpoints test build.
func crashAfterApply() {}

// CrashPointsEnabled reports whether this binary was built with the
// test-only crash hook.
const CrashPointsEnabled = false

// wallNow reads the wall clock (the crashpoints build can step it).
func wallNow() time.Time { return time.Now() }
