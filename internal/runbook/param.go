package runbook

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/internal/runbook/strictyaml"
	"github.com/runbook-dev/runbook/internal/step"
)

// ConvertParam converts a parameter value, as written or after template
// expansion, to the Go type its spec names: string, int, bool,
// time.Duration or []string. Text converts where it reads unambiguously
// ("4000" to 4000, "true" to true, "30s" to 30s, one string to a list of
// one). It then checks Allowed and the spec's own Validate.
//
// Validation calls it on literal values and the engine on expanded ones,
// so a value refused at run time is refused before anything runs.
func ConvertParam(p step.Param, v any) (any, error) {
	out, err := convert(p.Type, v)
	if err != nil {
		return nil, err
	}
	if len(p.Allowed) > 0 {
		var vals []string
		switch x := out.(type) {
		case string:
			vals = []string{x}
		case []string:
			vals = x
		}
		for _, s := range vals {
			if !contains(p.Allowed, s) {
				return nil, fmt.Errorf("%s is not one of %s", strictyaml.Quote(s), strings.Join(p.Allowed, ", "))
			}
		}
	}
	if p.Validate != nil {
		if err := p.Validate(out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func convert(t step.ParamType, v any) (any, error) {
	switch t {
	case step.String:
		switch x := v.(type) {
		case string:
			return x, nil
		case int:
			return strconv.Itoa(x), nil
		}
		return nil, fmt.Errorf("want a string, got %s", describe(v))
	case step.Int:
		switch x := v.(type) {
		case int:
			return x, nil
		case int64:
			if x > math.MaxInt || x < math.MinInt {
				return nil, fmt.Errorf("integer %d is out of range", x)
			}
			return int(x), nil
		case string:
			n, err := strconv.Atoi(strings.TrimSpace(x))
			if err != nil {
				return nil, fmt.Errorf("want an integer, got %s", describe(v))
			}
			return n, nil
		}
		return nil, fmt.Errorf("want an integer, got %s", describe(v))
	case step.Bool:
		switch x := v.(type) {
		case bool:
			return x, nil
		case string:
			if b, ok := parseBool(strings.TrimSpace(x)); ok {
				return b, nil
			}
		}
		return nil, fmt.Errorf("want true or false, got %s", describe(v))
	case step.Duration:
		switch x := v.(type) {
		case time.Duration:
			return x, nil
		case int:
			return nil, fmt.Errorf("duration \"%d\" needs a unit, as in %ds or %dm", x, x, x)
		case string:
			d, err := strictyaml.ParseDuration(strings.TrimSpace(x))
			if err != nil {
				return nil, err
			}
			if d < 0 {
				return nil, fmt.Errorf("duration must not be negative, got %s", strictyaml.Quote(x))
			}
			return d, nil
		}
		return nil, fmt.Errorf("want a duration, got %s", describe(v))
	case step.List:
		switch x := v.(type) {
		case []string:
			return x, nil
		case string:
			return []string{x}, nil
		case []any:
			out := make([]string, 0, len(x))
			for i, e := range x {
				switch s := e.(type) {
				case string:
					out = append(out, s)
				case int:
					out = append(out, strconv.Itoa(s))
				default:
					return nil, fmt.Errorf("element %d: want a string, got %s", i, describe(e))
				}
			}
			return out, nil
		}
		return nil, fmt.Errorf("want a list of strings, got %s", describe(v))
	}
	return nil, fmt.Errorf("unknown parameter type %q", t)
}

// describe names a value's type (and short values) for messages.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "nothing"
	case string:
		return "a string " + strictyaml.Quote(x)
	case bool:
		return fmt.Sprintf("a boolean (%t)", x)
	case int, int64:
		return fmt.Sprintf("an integer (%d)", x)
	case float64:
		return fmt.Sprintf("a number (%g)", x)
	case []any, []string:
		return "a list"
	case map[string]any:
		return "a mapping"
	case time.Duration:
		return "a duration (" + x.String() + ")"
	}
	return fmt.Sprintf("a %T", v)
}
