package all

import (
	"strings"
	"testing"
)

// Every kind is namespaced (or the one escape hatch), documented and
// registered once; Registry panics on a duplicate.
func TestRegistry(t *testing.T) {
	reg := Registry()
	for _, s := range reg.All() {
		if s.Name != "command" && !strings.Contains(s.Name, ".") {
			t.Errorf("kind %s is not namespaced", s.Name)
		}
		if s.Summary == "" {
			t.Errorf("kind %s has no summary", s.Name)
		}
		for _, p := range s.Params {
			if p.Doc == "" {
				t.Errorf("%s.with.%s has no doc", s.Name, p.Name)
			}
		}
	}
}
