package runbook

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/runbook-dev/runbook/internal/runbook/strictyaml"
)

// DecodeError is one problem in a runbook or inventory file, at a position:
//
//	FILE:LINE:COL: FIELD: MESSAGE
//	  LINE | the offending line
//	       |     ^
//
// Load and Validate return every problem they find as DecodeErrors (sorted
// by position); errors.As finds each *DecodeError in it. Inventories use
// the same type.
type DecodeError = strictyaml.Error

// DecodeErrors is a list of DecodeError, sorted by position.
type DecodeErrors = strictyaml.Errors

// ParseDuration parses a duration: Go's form ("1h30m", "200ms") plus days
// and weeks ("90d", "2w").
func ParseDuration(s string) (time.Duration, error) { return strictyaml.ParseDuration(s) }

// Digest is "sha256:" and the hex SHA-256 of a file's bytes.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// The keys each mapping of a runbook accepts. The schema test checks that
// runbook.schema.json names exactly these.
var (
	runbookKeys = []string{"name", "description", "schedule", "inputs", "phases", "steps"}
	inputKeys   = []string{"type", "description", "required", "default", "allowed"}
	stepKeys    = []string{"id", "name", "kind", "phase", "on", "with", "retry", "timeout", "when", "after", "batch"}
	retryKeys   = []string{"attempts", "initial", "max"}
	batchKeys   = []string{"parallel", "on_failure"}
)

// Input types, in the order messages list them.
var inputTypes = []string{string(InputString), string(InputInt), string(InputBool), string(InputDuration)}

// Limits on values.
const (
	maxNameLen     = 64
	maxAttempts    = 100
	maxParallel    = 1000
	secretHintText = "keep secrets out of runbooks: name them in the inventory (secrets:, vault:, database:) where they are referenced by {env:}, {file:} or {vault:}"
)

// meta is what the decoder keeps for validation: the nodes by field path
// and the file's lines.
type meta struct {
	src   *strictyaml.Source
	nodes map[string]*yaml.Node // value node by path ("steps[0].kind")
	keys  map[string]*yaml.Node // key node by path
}

func (m *meta) keep(path string, k, v *yaml.Node) {
	m.keys[path] = k
	m.nodes[path] = v
}

// Load decodes a runbook from data; name is the file name errors show.
// It checks everything that needs no step registry or inventory; Validate
// checks the rest.
func Load(name string, data []byte) (*Runbook, error) {
	root, src, perr := strictyaml.Parse(name, data)
	m := &meta{src: src, nodes: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}}
	d := &decoder{Decoder: strictyaml.Decoder{Src: src}, m: m, file: name}
	if perr != nil {
		d.Errs = append(d.Errs, perr.(strictyaml.Errors)...)
		if root == nil {
			return nil, d.Err()
		}
	}
	rb := &Runbook{File: name, Digest: Digest(data), meta: m, Pos: d.pos(root)}
	d.ScanSecrets(root, "", secretHintText)
	d.runbook(root, rb)
	if err := d.Err(); err != nil {
		return nil, err
	}
	return rb, nil
}

// LoadFile reads and decodes a runbook file.
func LoadFile(path string) (*Runbook, error) {
	data, err := strictyaml.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read runbook: %w", err)
	}
	return Load(path, data)
}

type decoder struct {
	strictyaml.Decoder
	m    *meta
	file string
}

func (d *decoder) pos(n *yaml.Node) Pos {
	return Pos{File: d.file, Line: n.Line, Col: n.Column}
}

func (d *decoder) runbook(root *yaml.Node, rb *Runbook) {
	fields := d.Mapping(root, "", runbookKeys)
	if root.Kind != yaml.MappingNode {
		return
	}
	have := map[string]bool{}
	for _, f := range fields {
		have[f.Key] = true
		d.m.keep(f.Key, f.KeyN, f.Value)
		switch f.Key {
		case "name":
			rb.Name, _ = d.ident(f.Value, "name", "runbook name", runbookNameRule)
		case "description":
			rb.Description, _ = d.Str(f.Value, "description")
		case "schedule":
			rb.Schedule, _ = d.Duration(f.Value, "schedule")
		case "inputs":
			rb.Inputs = d.inputs(f.Value)
		case "phases":
			rb.Phases = d.phases(f.Value)
		case "steps":
			rb.Steps = d.steps(f.Value)
		}
	}
	for _, k := range []string{"name", "steps"} {
		if !have[k] {
			d.Failf(root, "", "missing key %q", k)
		}
	}
}

// identRule says which characters a kind of name takes.
type identRule struct {
	first, rest func(r rune) bool
	text        string
}

func lowerDigit(r rune) bool { return r >= 'a' && r <= 'z' || r >= '0' && r <= '9' }

var (
	runbookNameRule = identRule{
		first: lowerDigit,
		rest:  func(r rune) bool { return lowerDigit(r) || r == '-' },
		text:  `use a-z, 0-9 and "-", starting with a letter or digit`,
	}
	stepIDRule = identRule{
		first: lowerDigit,
		rest:  func(r rune) bool { return lowerDigit(r) || r == '-' || r == '_' },
		text:  `use a-z, 0-9, "-" and "_", starting with a letter or digit`,
	}
	inputNameRule = identRule{
		first: func(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_' },
		rest: func(r rune) bool {
			return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
		},
		text: `use letters, digits, "_" and "-", starting with a letter or "_"`,
	}
	kindRule = identRule{
		first: func(r rune) bool { return r >= 'a' && r <= 'z' },
		rest:  func(r rune) bool { return lowerDigit(r) || r == '_' || r == '.' },
		text:  `use a-z, 0-9, "_" and ".", as in service.stop`,
	}
	targetRule = identRule{
		first: func(r rune) bool {
			return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_'
		},
		rest: func(r rune) bool {
			return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.'
		},
		text: `use letters, digits, ".", "_" and "-"`,
	}
)

// identProblem says what is wrong with s as a name under rule, or "".
func identProblem(s string, rule identRule) string {
	if s == "" {
		return "empty name"
	}
	if n := utf8.RuneCountInString(s); n > maxNameLen {
		return fmt.Sprintf("name longer than %d characters", maxNameLen)
	}
	for i, r := range []rune(s) {
		ok := rule.rest(r)
		if i == 0 {
			ok = rule.first(r)
		}
		if !ok {
			where := fmt.Sprintf("character %d", i+1)
			if i == 0 {
				where = "first character"
			}
			what := fmt.Sprintf("%q", r)
			if r > utf8.RuneSelf {
				what += fmt.Sprintf(" (U+%04X)", r)
			}
			return fmt.Sprintf("%s %s is not allowed: %s", where, what, rule.text)
		}
	}
	return ""
}

// ident decodes a name that must follow rule.
func (d *decoder) ident(n *yaml.Node, path, what string, rule identRule) (string, bool) {
	s, ok := d.Str(n, path)
	if !ok {
		return "", false
	}
	if p := identProblem(s, rule); p != "" {
		d.Failf(n, path, "invalid %s %s: %s", what, strictyaml.Quote(s), p)
		return "", false
	}
	return s, true
}

func (d *decoder) inputs(n *yaml.Node) []Input {
	var out []Input
	for _, f := range d.Mapping(n, "inputs", nil) {
		path := strictyaml.Join("inputs", f.Key)
		d.m.keep(path, f.KeyN, f.Value)
		in := Input{Name: f.Key, Type: InputString, Pos: d.pos(f.KeyN)}
		if p := identProblem(f.Key, inputNameRule); p != "" {
			d.Failf(f.KeyN, "inputs", "invalid input name %s: %s", strictyaml.Quote(f.Key), p)
		}
		var def *yaml.Node
		var allowed []*yaml.Node
		typeOK := true
		for _, g := range d.Mapping(f.Value, path, inputKeys) {
			gp := strictyaml.Join(path, g.Key)
			d.m.keep(gp, g.KeyN, g.Value)
			switch g.Key {
			case "type":
				s, ok := d.Str(g.Value, gp)
				if !ok {
					typeOK = false
					continue
				}
				if !contains(inputTypes, s) {
					typeOK = false
					e := d.Failf(g.Value, gp, "unknown input type %s: want one of %s", strictyaml.Quote(s), strings.Join(inputTypes, ", "))
					if sug := strictyaml.Suggest(s, inputTypes); sug != "" {
						e.Msg += fmt.Sprintf("; did you mean %q?", sug)
					}
					continue
				}
				in.Type = InputType(s)
			case "description":
				in.Description, _ = d.Str(g.Value, gp)
			case "required":
				in.Required, _ = d.Bool(g.Value, gp)
			case "default":
				def = g.Value
			case "allowed":
				if g.Value.Kind != yaml.SequenceNode || len(g.Value.Content) == 0 {
					d.Failf(g.Value, gp, "want a non-empty list of values, got %s", strictyaml.Describe(g.Value))
					continue
				}
				allowed = g.Value.Content
			}
		}
		if f.Value.Kind != yaml.MappingNode || !typeOK {
			out = append(out, in)
			continue
		}
		for i, a := range allowed {
			if v, ok := d.inputValue(in.Type, a, strictyaml.Index(path+".allowed", i)); ok {
				in.Allowed = append(in.Allowed, v)
			}
		}
		if def != nil {
			if v, ok := d.inputValue(in.Type, def, path+".default"); ok {
				in.Default, in.HasDefault = v, true
				if in.Required {
					d.Failf(def, path+".default", "a required input has no default: drop one of them")
				}
				if len(in.Allowed) > 0 && !contains(in.Allowed, v) {
					d.Failf(def, path+".default", "default %s is not one of the allowed values (%s)", strictyaml.Quote(v), strings.Join(in.Allowed, ", "))
				}
			}
		}
		out = append(out, in)
	}
	return out
}

// inputValue decodes a default or allowed value of an input of type t, as
// its canonical text.
func (d *decoder) inputValue(t InputType, n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || strictyaml.IsNull(n) {
		d.Failf(n, path, "want a %s value, got %s", t, strictyaml.Describe(n))
		return "", false
	}
	v, err := CheckInput(t, n.Value)
	if t == InputString && n.Tag == "!!bool" {
		err = fmt.Errorf("want a string, got %s: quote it", strictyaml.Describe(n))
	}
	if t == InputDuration && (n.Tag == "!!int" || n.Tag == "!!float") {
		err = fmt.Errorf("duration %s needs a unit, as in %ss or %sm", strictyaml.Quote(n.Value), n.Value, n.Value)
	}
	if err != nil {
		d.Failf(n, path, "%v", err)
		return "", false
	}
	return v, true
}

// CheckInput checks the text of an input's value against its type and
// returns its canonical form ("4000", "true", "1h30m" as written).
func CheckInput(t InputType, s string) (string, error) {
	switch t {
	case InputInt:
		v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return "", fmt.Errorf("want an integer, got %s", strictyaml.Quote(s))
		}
		return strconv.FormatInt(v, 10), nil
	case InputBool:
		b, ok := parseBool(strings.TrimSpace(s))
		if !ok {
			return "", fmt.Errorf("want true or false, got %s", strictyaml.Quote(s))
		}
		return strconv.FormatBool(b), nil
	case InputDuration:
		if _, err := strictyaml.ParseDuration(strings.TrimSpace(s)); err != nil {
			return "", err
		}
		return strings.TrimSpace(s), nil
	}
	return s, nil
}

func (d *decoder) phases(n *yaml.Node) []Phase {
	var out []Phase
	for _, f := range d.Mapping(n, "phases", nil) {
		path := strictyaml.Join("phases", f.Key)
		d.m.keep(path, f.KeyN, f.Value)
		if p := identProblem(f.Key, stepIDRule); p != "" {
			d.Failf(f.KeyN, "phases", "invalid phase name %s: %s", strictyaml.Quote(f.Key), p)
			continue
		}
		target, ok := d.Duration(f.Value, path)
		if !ok {
			continue
		}
		out = append(out, Phase{Name: f.Key, Target: target, Pos: d.pos(f.KeyN)})
	}
	return out
}

func (d *decoder) steps(n *yaml.Node) []Step {
	if n.Kind != yaml.SequenceNode {
		d.Failf(n, "steps", "want a list of steps, got %s", strictyaml.Describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		d.Failf(n, "steps", "a runbook needs at least one step")
		return nil
	}
	out := make([]Step, 0, len(n.Content))
	for i, sn := range n.Content {
		out = append(out, d.step(sn, strictyaml.Index("steps", i)))
	}
	return out
}

func (d *decoder) step(n *yaml.Node, path string) Step {
	st := Step{Pos: d.pos(n)}
	d.m.nodes[path] = n
	if n.Kind != yaml.MappingNode {
		d.Failf(n, path, "want a step (a mapping with id, kind, ...), got %s", strictyaml.Describe(n))
		return st
	}
	have := map[string]bool{}
	for _, f := range d.Mapping(n, path, stepKeys) {
		fp := strictyaml.Join(path, f.Key)
		d.m.keep(fp, f.KeyN, f.Value)
		have[f.Key] = true
		switch f.Key {
		case "id":
			st.ID, _ = d.ident(f.Value, fp, "step id", stepIDRule)
		case "name":
			st.Name, _ = d.Str(f.Value, fp)
		case "kind":
			st.Kind, _ = d.ident(f.Value, fp, "kind", kindRule)
		case "phase":
			st.Phase, _ = d.Str(f.Value, fp)
		case "on":
			names, nodes := d.Strings(f.Value, fp, true)
			if len(names) == 0 && f.Value.Kind == yaml.SequenceNode {
				d.Failf(f.Value, fp, "empty list: name a group or host, or leave on: out for a step that runs once")
			}
			for i, s := range names {
				ep := fp
				if f.Value.Kind == yaml.SequenceNode {
					ep = strictyaml.Index(fp, i)
				}
				d.m.nodes[ep] = nodes[i]
				switch {
				case HasTemplate(s):
					d.Failf(nodes[i], ep, "on: takes group or host names, not templates")
				case identProblem(s, targetRule) != "":
					d.Failf(nodes[i], ep, "invalid group or host name %s: %s", strictyaml.Quote(s), identProblem(s, targetRule))
				default:
					st.On = append(st.On, s)
				}
			}
		case "with":
			st.With = d.with(f.Value, fp)
		case "retry":
			st.Retry = d.retry(f.Value, fp)
		case "timeout":
			st.Timeout, _ = d.Duration(f.Value, fp)
		case "when":
			st.When = d.when(f.Value, fp)
		case "after":
			ids, nodes := d.Strings(f.Value, fp, true)
			for i, s := range ids {
				ep := fp
				if f.Value.Kind == yaml.SequenceNode {
					ep = strictyaml.Index(fp, i)
				}
				d.m.nodes[ep] = nodes[i]
				st.After = append(st.After, s)
			}
		case "batch":
			st.Batch = d.batch(f.Value, fp)
		}
	}
	if st.Batch.OnFailure == "" {
		st.Batch.OnFailure = OnFailureAbort
	}
	for _, k := range []string{"id", "kind"} {
		if !have[k] {
			d.Failf(n, path, "missing key %q", k)
		}
	}
	return st
}

func (d *decoder) with(n *yaml.Node, path string) map[string]Value {
	out := map[string]Value{}
	for _, f := range d.Mapping(n, path, nil) {
		fp := strictyaml.Join(path, f.Key)
		d.m.keep(fp, f.KeyN, f.Value)
		v, ok := d.value(f.Value, fp, 0)
		if ok {
			out[f.Key] = Value{V: v, Pos: d.pos(f.Value)}
		}
	}
	return out
}

// value decodes a parameter value as written: string, int, bool, float64,
// []any or map[string]any. Templates in strings are checked for syntax.
func (d *decoder) value(n *yaml.Node, path string, depth int) (any, bool) {
	if depth > strictyaml.MaxDepth {
		return nil, false // reported by Parse
	}
	switch n.Kind {
	case yaml.SequenceNode:
		out := make([]any, 0, len(n.Content))
		ok := true
		for i, c := range n.Content {
			v, cok := d.value(c, strictyaml.Index(path, i), depth+1)
			ok = ok && cok
			out = append(out, v)
		}
		return out, ok
	case yaml.MappingNode:
		out := map[string]any{}
		ok := true
		for _, f := range d.Mapping(n, path, nil) {
			v, cok := d.value(f.Value, strictyaml.Join(path, f.Key), depth+1)
			ok = ok && cok
			out[f.Key] = v
		}
		return out, ok
	case yaml.ScalarNode:
		if strictyaml.BadTag(n) {
			return nil, false // reported by Parse
		}
	default:
		return nil, false // aliases: reported by Parse
	}
	switch n.Tag {
	case "!!null":
		d.Failf(n, path, "no value: write one, or leave the key out")
		return nil, false
	case "!!bool":
		return strings.EqualFold(n.Value, "true"), true
	case "!!int":
		v, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
		if err != nil || v > math.MaxInt || v < math.MinInt {
			d.Failf(n, path, "integer %s is out of range", strictyaml.Quote(n.Value))
			return nil, false
		}
		return int(v), true
	case "!!float":
		v, err := strconv.ParseFloat(n.Value, 64)
		if err != nil {
			d.Failf(n, path, "invalid number %s", strictyaml.Quote(n.Value))
			return nil, false
		}
		return v, true
	}
	if err := checkValueTemplates(n.Value); err != nil {
		d.templateError(n, path, n.Value, err)
		return nil, false
	}
	return n.Value, true
}

// checkValueTemplates checks that every template in a value parses and
// holds one reference, as Expand needs.
func checkValueTemplates(s string) error {
	ts, err := scanTemplates(s)
	if err != nil {
		return err
	}
	for _, t := range ts {
		x, err := parseExpr(t.body, t.start+3)
		if err != nil {
			return err
		}
		if _, ok := x.(*refExpr); !ok {
			return &TemplateError{Offset: t.start, Msg: "a template in a value holds one reference, not an expression"}
		}
	}
	return nil
}

// templateError reports a template error at the column of the offending
// part of the string when it can be found on the source line.
func (d *decoder) templateError(n *yaml.Node, path, s string, err error) {
	d.Add(templateErr(d.Src, n, path, s, err))
}

func templateErr(src *strictyaml.Source, n *yaml.Node, path, s string, err error) *DecodeError {
	line, col := n.Line, n.Column
	if te, ok := err.(*TemplateError); ok {
		line, col = locate(src, n, s, te.Offset)
	}
	return src.ErrorAt(line, col, path, err.Error())
}

// locate finds the source position of byte offset off of the string s
// held by node n: for the text from the start of the template (or of s)
// to the offset, it looks for that text on the lines the node spans. When
// it cannot find it (escapes, folding), the node's own position is used.
func locate(src *strictyaml.Source, n *yaml.Node, s string, off int) (int, int) {
	if off < 0 || off > len(s) {
		return n.Line, n.Column
	}
	start := strings.LastIndex(s[:off], "${{")
	if start < 0 {
		start = 0
	}
	// The needle runs from the template's start to the offset, cut at the
	// end of the line it starts on.
	needle := s[start:]
	if i := strings.IndexByte(needle, '\n'); i >= 0 {
		needle = needle[:i]
	}
	rel := off - start
	if rel > len(needle) {
		return n.Line, n.Column
	}
	lines := strings.Count(s, "\n") + 2
	for l := n.Line; l < n.Line+lines; l++ {
		text := src.Line(l)
		from := 0
		if l == n.Line {
			from = runeOffset(text, n.Column-1)
		}
		if from > len(text) {
			continue
		}
		if i := strings.Index(text[from:], needle); i >= 0 {
			return l, utf8.RuneCountInString(text[:from+i+rel]) + 1
		}
	}
	return n.Line, n.Column
}

// runeOffset returns the byte offset of rune n of s.
func runeOffset(s string, n int) int {
	for i := range s {
		if n == 0 {
			return i
		}
		n--
	}
	return len(s)
}

func (d *decoder) retry(n *yaml.Node, path string) *Retry {
	r := &Retry{}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		r.Attempts, _ = d.Int(n, path, 1, maxAttempts)
		return r
	}
	if n.Kind != yaml.MappingNode {
		d.Failf(n, path, "want a number of attempts or a mapping with attempts, initial and max, got %s", strictyaml.Describe(n))
		return nil
	}
	var maxN *yaml.Node
	for _, f := range d.Mapping(n, path, retryKeys) {
		fp := strictyaml.Join(path, f.Key)
		d.m.keep(fp, f.KeyN, f.Value)
		switch f.Key {
		case "attempts":
			r.Attempts, _ = d.Int(f.Value, fp, 1, maxAttempts)
		case "initial":
			r.Initial, _ = d.Duration(f.Value, fp)
		case "max":
			r.Max, _ = d.Duration(f.Value, fp)
			maxN = f.Value
		}
	}
	if r.Initial > 0 && r.Max > 0 && r.Max < r.Initial {
		d.Failf(maxN, path+".max", "max backoff %v is shorter than initial %v", r.Max, r.Initial)
	}
	return r
}

func (d *decoder) batch(n *yaml.Node, path string) Batch {
	var b Batch
	for _, f := range d.Mapping(n, path, batchKeys) {
		fp := strictyaml.Join(path, f.Key)
		d.m.keep(fp, f.KeyN, f.Value)
		switch f.Key {
		case "parallel":
			b.Parallel, _ = d.Int(f.Value, fp, 1, maxParallel)
		case "on_failure":
			s, ok := d.Str(f.Value, fp)
			if !ok {
				continue
			}
			if s != OnFailureAbort && s != OnFailureContinue {
				d.Failf(f.Value, fp, "want %s or %s, got %s", OnFailureAbort, OnFailureContinue, strictyaml.Quote(s))
				continue
			}
			b.OnFailure = s
		}
	}
	return b
}

func (d *decoder) when(n *yaml.Node, path string) string {
	if strictyaml.BadTag(n) {
		return "" // reported by Parse
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!bool" {
		return strings.ToLower(n.Value)
	}
	s, ok := d.Str(n, path)
	if !ok {
		return ""
	}
	if _, err := parseWhen(s); err != nil {
		d.templateError(n, path, s, err)
		return ""
	}
	return s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
