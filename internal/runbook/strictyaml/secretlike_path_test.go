package strictyaml

import "testing"

// Paths with long generated parts (test directories, release names) are not
// taken for keys; the specific detectors still find keys inside them.
func TestPathsAreNotRandomKeys(t *testing.T) {
	for _, s := range []string{
		"/tmp/TestResumeSkipsDoneWorkAndRechecksIntents2388147217/001/h1.log",
		"DIR/TestCrashAtEveryJournalPointThenResume1234567890/x",
	} {
		if what, ok := LooksSecret(s); ok {
			t.Errorf("%s looks like %s", s, what)
		}
	}
	if _, ok := LooksSecret("/etc/keys/sk-0123456789abcdefABCDEF"); !ok {
		t.Error("an API key inside a path is not found")
	}
}
