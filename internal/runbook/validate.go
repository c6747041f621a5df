package runbook

import (
	"fmt"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/runbook/strictyaml"
	"github.com/runbook-dev/runbook/internal/step"
)

// Validate checks a decoded runbook against the step registry and, when
// inv is not nil, an inventory: kinds exist and fit their target; `with:`
// names known parameters, gives every required one, and literal values
// convert to the parameter's type and pass its checks; step ids are unique;
// references name declared inputs, earlier steps and outputs their kind
// declares, and variables every target host has; after: names earlier
// steps; phases are declared and in order; on: names inventory groups or
// hosts. Every problem is reported, each at its node.
func Validate(rb *Runbook, reg *step.Registry, inv *inventory.Inventory) error {
	v := &validator{rb: rb, reg: reg, inv: inv, m: rb.meta}
	if v.m == nil {
		v.m = &meta{src: strictyaml.NewSource(rb.File, nil), nodes: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}}
	}
	v.run()
	return v.errs.Err()
}

type validator struct {
	rb   *Runbook
	reg  *step.Registry
	inv  *inventory.Inventory
	m    *meta
	errs strictyaml.Errors

	inputs  map[string]*Input
	phases  map[string]int
	stepIdx map[string]int // first index of each id
	vars    map[*inventory.Host]map[string]string
}

// fail reports an error at the node kept for path, else at pos.
func (v *validator) fail(path string, pos Pos, field, format string, args ...any) *DecodeError {
	if v.full() {
		return &DecodeError{}
	}
	msg := fmt.Sprintf(format, args...)
	var e *DecodeError
	if n := v.m.nodes[path]; n != nil {
		e = v.m.src.ErrorNode(n, field, msg)
	} else {
		e = v.m.src.ErrorAt(pos.Line, pos.Col, field, msg)
	}
	v.errs = append(v.errs, e)
	return e
}

// failKey reports an error at the key node of path.
func (v *validator) failKey(path string, pos Pos, field, format string, args ...any) *DecodeError {
	if k := v.m.keys[path]; k != nil && !v.full() {
		e := v.m.src.ErrorNode(k, field, fmt.Sprintf(format, args...))
		v.errs = append(v.errs, e)
		return e
	}
	return v.fail(path, pos, field, format, args...)
}

// full reports whether enough errors were found to stop quoting more.
func (v *validator) full() bool { return len(v.errs) >= strictyaml.MaxCollect }

// hostVars caches the inventory's merged variables per host.
func (v *validator) hostVars(h *inventory.Host) map[string]string {
	if vars, ok := v.vars[h]; ok {
		return vars
	}
	if v.vars == nil {
		v.vars = map[*inventory.Host]map[string]string{}
	}
	vars := v.inv.HostVars(h)
	v.vars[h] = vars
	return vars
}

func suggest(e *DecodeError, s string, candidates []string) {
	if sug := strictyaml.Suggest(s, candidates); sug != "" {
		e.Msg += fmt.Sprintf("; did you mean %q?", sug)
	}
}

func (v *validator) run() {
	rb := v.rb
	v.inputs = map[string]*Input{}
	for i := range rb.Inputs {
		v.inputs[rb.Inputs[i].Name] = &rb.Inputs[i]
	}
	v.phases = map[string]int{}
	for i, p := range rb.Phases {
		v.phases[p.Name] = i
	}
	v.stepIdx = map[string]int{}
	for i, st := range rb.Steps {
		if st.ID == "" {
			continue
		}
		if j, dup := v.stepIdx[st.ID]; dup {
			path := strictyaml.Index("steps", i)
			v.fail(path+".id", st.Pos, path+".id", "duplicate step id %s (first at line %d)", strictyaml.Quote(st.ID), v.idLine(j))
			continue
		}
		v.stepIdx[st.ID] = i
	}
	lastPhase, lastPhaseName := -1, ""
	for i := range rb.Steps {
		if v.full() {
			return
		}
		st := &rb.Steps[i]
		path := strictyaml.Index("steps", i)
		lastPhase, lastPhaseName = v.phase(st, path, lastPhase, lastPhaseName)
		v.step(i, st, path)
	}
}

func (v *validator) idLine(i int) int {
	if n := v.m.nodes[strictyaml.Index("steps", i)+".id"]; n != nil {
		return n.Line
	}
	return v.rb.Steps[i].Pos.Line
}

func (v *validator) phase(st *Step, path string, last int, lastName string) (int, string) {
	if st.Phase == "" {
		if len(v.rb.Phases) > 0 {
			v.fail(path, st.Pos, path, "missing key %q: this runbook declares phases", "phase")
		}
		return last, lastName
	}
	idx, ok := v.phases[st.Phase]
	if !ok {
		names := make([]string, len(v.rb.Phases))
		for i, p := range v.rb.Phases {
			names[i] = p.Name
		}
		e := v.fail(path+".phase", st.Pos, path+".phase", "unknown phase %s", strictyaml.Quote(st.Phase))
		if len(names) == 0 {
			e.Hint = "declare it under phases:, with a time target, as in contain: 5m"
		} else {
			suggest(e, st.Phase, names)
		}
		return last, lastName
	}
	if idx < last {
		v.fail(path+".phase", st.Pos, path+".phase", "phase %s comes after phase %s: steps follow the order of phases:", strictyaml.Quote(st.Phase), strictyaml.Quote(lastName))
		return last, lastName
	}
	return idx, st.Phase
}

func (v *validator) step(i int, st *Step, path string) {
	var spec *step.Spec
	if st.Kind != "" && v.reg != nil {
		s, ok := v.reg.Lookup(st.Kind)
		if !ok {
			e := v.fail(path+".kind", st.Pos, path+".kind", "unknown step kind %s", strictyaml.Quote(st.Kind))
			var names []string
			for _, s := range v.reg.All() {
				names = append(names, s.Name)
			}
			suggest(e, st.Kind, names)
			if e.Hint == "" && !strings.Contains(e.Msg, "did you mean") {
				e.Hint = "runbook kinds lists them"
			}
		} else {
			spec = s
		}
	}

	if spec != nil {
		switch {
		case spec.Target == step.PerHost && len(st.On) == 0 && v.m.nodes[path+".on"] == nil:
			v.fail(path+".kind", st.Pos, path, "kind %s runs on hosts: add on: with a group or host", spec.Name)
		case spec.Target == step.Once && v.m.nodes[path+".on"] != nil:
			v.fail(path+".on", st.Pos, path+".on", "kind %s runs once, on the runner: remove on:", spec.Name)
		}
		v.with(st, spec, path)
	}
	if v.m.nodes[path+".batch"] != nil && len(st.On) == 0 && v.m.nodes[path+".on"] == nil {
		v.failKey(path+".batch", st.Pos, path+".batch", "batch applies to steps with on:")
	}

	// Targets.
	var hosts []*inventory.Host
	if v.inv != nil && len(st.On) > 0 {
		known := true
		for j, t := range st.On {
			if v.inv.Has(t) {
				continue
			}
			known = false
			ep := path + ".on"
			if _, ok := v.m.nodes[strictyaml.Index(ep, j)]; ok {
				ep = strictyaml.Index(ep, j)
			}
			e := v.fail(ep, st.Pos, ep, "unknown group or host %s in inventory %s", strictyaml.Quote(t), v.inv.File)
			suggest(e, t, v.inv.Targets())
		}
		if known {
			hosts, _ = v.inv.Resolve(st.On)
		}
	}

	// after:
	for j, id := range st.After {
		ep := path + ".after"
		if _, ok := v.m.nodes[strictyaml.Index(ep, j)]; ok {
			ep = strictyaml.Index(ep, j)
		}
		k, ok := v.stepIdx[id]
		switch {
		case !ok:
			e := v.fail(ep, st.Pos, ep, "unknown step %s", strictyaml.Quote(id))
			suggest(e, id, v.earlierIDs(i))
		case k == i:
			v.fail(ep, st.Pos, ep, "a step cannot come after itself")
		case k > i:
			v.fail(ep, st.Pos, ep, "step %s comes later: after: names earlier steps", strictyaml.Quote(id))
		}
	}

	// References in with: and when:.
	ctx := refCtx{i: i, st: st, path: path, hosts: hosts}
	keys := make([]string, 0, len(st.With))
	for k := range st.With {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v.valueRefs(ctx, strictyaml.Join(path+".with", k), st.With[k].V, st.With[k].Pos, 0)
	}
	if st.When != "" {
		wp := path + ".when"
		x, err := parseWhen(st.When)
		if err == nil {
			for _, r := range refExprs(x, nil) {
				v.ref(ctx, wp, st.When, r.ref, r.off, st.Pos)
			}
			for _, c := range comparisons(x, nil) {
				in := v.inputs[c.ref.ref.Name]
				if c.ref.ref.Scope == ScopeInputs && in != nil && len(in.Allowed) > 0 && !contains(in.Allowed, c.lit) {
					v.refFail(wp, st.When, c.ref.off, st.Pos, "%s is never equal to %s: allowed values are %s",
						c.ref.ref, strictyaml.Quote(c.lit), strings.Join(in.Allowed, ", "))
				}
			}
		}
	}
}

func (v *validator) earlierIDs(i int) []string {
	var out []string
	for j := 0; j < i && j < len(v.rb.Steps); j++ {
		out = append(out, v.rb.Steps[j].ID)
	}
	return out
}

// with checks parameters against the kind's specs.
func (v *validator) with(st *Step, spec *step.Spec, path string) {
	names := make([]string, 0, len(spec.Params))
	for _, p := range spec.Params {
		names = append(names, p.Name)
	}
	keys := make([]string, 0, len(st.With))
	for k := range st.With {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		val := st.With[k]
		kp := strictyaml.Join(path+".with", k)
		p, ok := spec.Param(k)
		if !ok {
			e := v.failKey(kp, val.Pos, path+".with", "unknown parameter %s for kind %s", strictyaml.Quote(k), spec.Name)
			suggest(e, k, names)
			if !strings.Contains(e.Msg, "did you mean") {
				if len(names) == 0 {
					e.Hint = "kind " + spec.Name + " takes no parameters"
				} else {
					e.Hint = "parameters of " + spec.Name + ": " + strings.Join(names, ", ")
				}
			}
			continue
		}
		if hasTemplateValue(val.V) {
			if p.Type != step.List {
				if _, isStr := val.V.(string); !isStr {
					v.fail(kp, val.Pos, kp, "want %s, got %s", typeText(p.Type), describe(val.V))
				}
			}
			continue // checked after expansion, at run time
		}
		if _, err := ConvertParam(p, val.V); err != nil {
			v.fail(kp, val.Pos, kp, "%v", err)
		}
	}
	for _, p := range spec.Params {
		if !p.Required {
			continue
		}
		if _, ok := st.With[p.Name]; ok {
			continue
		}
		if v.m.nodes[path+".with."+p.Name] != nil {
			continue // given, but its value was refused already
		}
		if _, ok := v.m.keys[path+".with"]; ok {
			v.failKey(path+".with", st.Pos, path+".with", "missing parameter %q for kind %s", p.Name, spec.Name)
		} else {
			v.fail(path, st.Pos, path, "missing parameter %q for kind %s: add with: { %s: ... }", p.Name, spec.Name, p.Name)
		}
	}
}

func typeText(t step.ParamType) string {
	switch t {
	case step.Int:
		return "an integer"
	case step.Bool:
		return "true or false"
	case step.Duration:
		return "a duration"
	case step.List:
		return "a list of strings"
	}
	return "a string"
}

func hasTemplateValue(v any) bool {
	switch x := v.(type) {
	case string:
		return HasTemplate(x)
	case []any:
		for _, e := range x {
			if hasTemplateValue(e) {
				return true
			}
		}
	case map[string]any:
		for _, e := range x {
			if hasTemplateValue(e) {
				return true
			}
		}
	}
	return false
}

// refCtx is the step whose references are checked.
type refCtx struct {
	i     int
	st    *Step
	path  string
	hosts []*inventory.Host // resolved targets, when an inventory is given
}

// valueRefs checks the references in a parameter value. Nested values are
// located at the top-level parameter's node.
func (v *validator) valueRefs(ctx refCtx, path string, val any, pos Pos, depth int) {
	if depth > strictyaml.MaxDepth {
		return
	}
	switch x := val.(type) {
	case string:
		ts, err := scanTemplates(x)
		if err != nil {
			return // reported by Load
		}
		for _, t := range ts {
			e, err := parseExpr(t.body, t.start+3)
			if err != nil {
				continue
			}
			r, ok := e.(*refExpr)
			if !ok {
				v.refFail(path, x, t.start, pos, "a template in a value holds one reference, not an expression")
				continue
			}
			v.ref(ctx, path, x, r.ref, r.off, pos)
		}
	case []any:
		for _, e := range x {
			v.valueRefs(ctx, path, e, pos, depth+1)
		}
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v.valueRefs(ctx, path, x[k], pos, depth+1)
		}
	}
}

// refFail reports an error at byte offset off of string s held at path.
func (v *validator) refFail(path, s string, off int, pos Pos, format string, args ...any) {
	if v.full() {
		return
	}
	msg := fmt.Sprintf(format, args...)
	n := v.m.nodes[path]
	if n == nil || n.Kind != yaml.ScalarNode || n.Value != s {
		v.fail(path, pos, path, "%s", msg)
		return
	}
	v.errs = append(v.errs, templateErr(v.m.src, n, path, s, &TemplateError{Offset: off, Msg: msg}))
}

// ref checks one reference.
func (v *validator) ref(ctx refCtx, path, s string, r Ref, off int, pos Pos) {
	fail := func(format string, args ...any) { v.refFail(path, s, off, pos, format, args...) }
	switch r.Scope {
	case ScopeInputs:
		if v.inputs[r.Name] == nil {
			names := make([]string, 0, len(v.inputs))
			for n := range v.inputs {
				names = append(names, n)
			}
			sort.Strings(names)
			msg := fmt.Sprintf("unknown input %s", strictyaml.Quote(r.Name))
			if sug := strictyaml.Suggest(r.Name, names); sug != "" {
				msg += fmt.Sprintf("; did you mean %q?", sug)
			} else {
				msg += ": declare it under inputs:"
			}
			fail("%s", msg)
		}
	case ScopeSteps:
		k, ok := v.stepIdx[r.Step]
		switch {
		case !ok:
			msg := fmt.Sprintf("unknown step %s", strictyaml.Quote(r.Step))
			if sug := strictyaml.Suggest(r.Step, v.earlierIDs(ctx.i)); sug != "" {
				msg += fmt.Sprintf("; did you mean %q?", sug)
			}
			fail("%s", msg)
		case k == ctx.i:
			fail("a step cannot use its own outputs")
		case k > ctx.i:
			fail("step %s runs later: a step uses outputs of earlier steps", strictyaml.Quote(r.Step))
		default:
			if v.reg == nil {
				return
			}
			other := v.rb.Steps[k]
			if spec, ok := v.reg.Lookup(other.Kind); ok && !spec.HasOutput(r.Name) {
				if len(spec.Outputs) == 0 {
					fail("step %s (kind %s) has no outputs", strictyaml.Quote(r.Step), spec.Name)
				} else {
					msg := fmt.Sprintf("step %s (kind %s) has no output %s", strictyaml.Quote(r.Step), spec.Name, strictyaml.Quote(r.Name))
					if sug := strictyaml.Suggest(r.Name, spec.Outputs); sug != "" {
						msg += fmt.Sprintf("; did you mean %q?", sug)
					} else {
						msg += "; it has " + strings.Join(spec.Outputs, ", ")
					}
					fail("%s", msg)
				}
			}
		}
	case ScopeHost:
		if len(ctx.st.On) == 0 && v.m.nodes[ctx.path+".on"] == nil {
			fail("%s is known only in steps with on:", r)
		}
	case ScopeVars:
		if v.inv == nil {
			return
		}
		if len(ctx.st.On) == 0 {
			if _, ok := v.inv.Vars[r.Name]; !ok {
				fail("variable %s is not set in inventory %s (a step without on: sees the inventory's vars)", strictyaml.Quote(r.Name), v.inv.File)
			}
			return
		}
		for _, h := range ctx.hosts {
			if _, ok := v.hostVars(h)[r.Name]; !ok {
				fail("variable %s is not set for host %s in inventory %s", strictyaml.Quote(r.Name), h.Name, v.inv.File)
				return
			}
		}
	}
}
