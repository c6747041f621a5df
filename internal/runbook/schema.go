package runbook

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/runbook-dev/runbook/internal/runbook/schema"
	"github.com/runbook-dev/runbook/internal/step"
)

// templatePattern matches a string holding a template: such a value is
// typed only after expansion, at run time.
const templatePattern = `\$\{\{`

// GenerateSchema returns the runbook schema specialised for the kinds in
// reg: kind is one of the registered names, and each kind's `with:` lists
// exactly its parameters, typed, with the required ones required, and
// on: required or forbidden by the kind's target.
//
// What is static (runbook.schema.json) is the file's shape, which the
// decoder fixes; what is generated is what the registry fixes, so adding a
// kind or a parameter never needs a schema edit.
func GenerateSchema(reg *step.Registry) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(schema.Runbook, &doc); err != nil {
		return nil, fmt.Errorf("generate schema: %w", err)
	}
	defs := doc["$defs"].(map[string]any)
	stepDef := defs["step"].(map[string]any)
	props := stepDef["properties"].(map[string]any)

	specs := reg.All()
	names := make([]any, 0, len(specs))
	var rules []any
	for _, s := range specs {
		names = append(names, s.Name)
		with, err := withSchema(s)
		if err != nil {
			return nil, fmt.Errorf("generate schema: kind %s: %w", s.Name, err)
		}
		defs["with:"+s.Name] = with
		then := map[string]any{
			"properties": map[string]any{"with": map[string]any{"$ref": "#/$defs/with:" + s.Name}},
		}
		var required []any
		for _, p := range s.Params {
			if p.Required {
				required = append(required, "with")
				break
			}
		}
		switch s.Target {
		case step.PerHost:
			required = append(required, "on")
		case step.Once:
			then["not"] = map[string]any{"required": []any{"on"}}
		}
		if len(required) > 0 {
			then["required"] = required
		}
		rules = append(rules, map[string]any{
			"if": map[string]any{
				"properties": map[string]any{"kind": map[string]any{"const": s.Name}},
				"required":   []any{"kind"},
			},
			"then": then,
		})
	}
	kind := props["kind"].(map[string]any)
	kind["enum"] = names
	if len(rules) > 0 {
		stepDef["allOf"] = rules
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("generate schema: %w", err)
	}
	return append(out, '\n'), nil
}

func withSchema(s *step.Spec) (map[string]any, error) {
	props := map[string]any{}
	var required []any
	for _, p := range s.Params {
		ps, err := paramSchema(p)
		if err != nil {
			return nil, err
		}
		props[p.Name] = ps
		if p.Required {
			required = append(required, p.Name)
		}
	}
	out := map[string]any{
		"description":          s.Summary,
		"type":                 "object",
		"additionalProperties": false,
		"properties":           props,
	}
	if len(required) > 0 {
		out["required"] = required
	}
	return out, nil
}

// paramSchema types one parameter. Every type also takes a string holding
// a template; text forms ConvertParam takes ("4000" for an int) pass too.
func paramSchema(p step.Param) (map[string]any, error) {
	tmpl := map[string]any{"type": "string", "pattern": templatePattern}
	var alts []any
	switch p.Type {
	case step.String:
		if len(p.Allowed) > 0 {
			enum := make([]any, len(p.Allowed))
			for i, a := range p.Allowed {
				enum[i] = a
			}
			alts = []any{map[string]any{"enum": enum}, tmpl}
		} else {
			alts = []any{map[string]any{"type": []any{"string", "integer"}}}
		}
	case step.Int:
		alts = []any{
			map[string]any{"type": "integer"},
			map[string]any{"type": "string", "pattern": `^\s*[-+]?[0-9]+\s*$`},
			tmpl,
		}
	case step.Bool:
		alts = []any{
			map[string]any{"type": "boolean"},
			map[string]any{"enum": []any{"true", "false"}},
			tmpl,
		}
	case step.Duration:
		alts = []any{map[string]any{"$ref": "#/$defs/duration"}, tmpl}
	case step.List:
		item := map[string]any{"type": []any{"string", "integer"}}
		alts = []any{map[string]any{"type": "string"}, map[string]any{"type": "array", "items": item}}
	default:
		return nil, fmt.Errorf("parameter %s: unknown type %q", p.Name, p.Type)
	}
	out := map[string]any{}
	if len(alts) == 1 {
		out = alts[0].(map[string]any)
	} else {
		out["anyOf"] = alts
	}
	if p.Doc != "" {
		out["description"] = p.Doc
	}
	if p.Default != nil {
		switch d := p.Default.(type) {
		case time.Duration:
			out["default"] = d.String()
		case string, int, bool, []string:
			out["default"] = d
		}
	}
	return out, nil
}
