package service

import (
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/step"
)

func TestValidateUnit(t *testing.T) {
	for _, u := range []string{"litellm", "litellm.service", "getty@tty1.service", "a:b", `foo\x2dbar.service`, "x-y_z.timer"} {
		if err := ValidateUnit(u); err != nil {
			t.Errorf("%q: %v", u, err)
		}
	}
	for _, u := range []string{
		"", "-litellm", "--help", ".service", "lite llm", "litellm;touch /tmp/x", "litellm\ntouch /tmp/x",
		"$(touch /tmp/x)", "`touch /tmp/x`", "lite'llm", `lite"llm`, "litellm|x", "lite/llm", "é",
		strings.Repeat("a", 256),
	} {
		if ValidateUnit(u) == nil {
			t.Errorf("unit %q accepted", u)
		}
		for _, s := range []*step.Spec{StopSpec, StartSpec, RestartSpec} {
			if _, err := s.New(step.Params{"unit": u}); err == nil {
				t.Errorf("%s accepted unit %q", s.Name, u)
			}
		}
	}
	if _, err := StopSpec.New(step.Params{"unit": "litellm", "manager": "docker"}); err == nil {
		t.Error("manager docker accepted")
	}
}
