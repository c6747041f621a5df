package runbook

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Reference scopes. A template ${{ SCOPE.NAME }} reads one of these; there
// is deliberately no env scope: a runbook sees no ambient environment, only
// its inputs, the inventory and earlier steps.
const (
	ScopeInputs = "inputs" // ${{ inputs.NAME }}
	ScopeVars   = "vars"   // ${{ vars.NAME }}: the host's inventory variables
	ScopeHost   = "host"   // ${{ host.name }}, ${{ host.address }}
	ScopeSteps  = "steps"  // ${{ steps.ID.outputs.NAME }}
	ScopeRun    = "run"    // ${{ run.id }}
)

// Ref is one reference in a template, for example
// {Scope: "steps", Step: "newkey", Name: "version"}.
type Ref struct{ Scope, Name, Step string }

func (r Ref) String() string {
	if r.Scope == ScopeSteps {
		return "steps." + r.Step + ".outputs." + r.Name
	}
	return r.Scope + "." + r.Name
}

// Lookup resolves a reference to its value; false means it is unknown.
type Lookup func(Ref) (string, bool)

// TemplateError is a syntax or reference error in a template, at a byte
// offset of the string that holds it.
type TemplateError struct {
	Offset int
	Msg    string
}

func (e *TemplateError) Error() string { return e.Msg }

// Limits that keep the expression language total on hostile input.
const (
	maxExprDepth = 32
	maxExprLen   = 4096
)

// template is one ${{ ... }} in a string.
type template struct {
	start, end int    // byte offsets of "${{" and after "}}"
	body       string // between the braces
}

// scanTemplates finds every ${{ ... }} in s.
func scanTemplates(s string) ([]template, error) {
	var out []template
	for i := 0; ; {
		j := strings.Index(s[i:], "${{")
		if j < 0 {
			break
		}
		start := i + j
		k := strings.Index(s[start+3:], "}}")
		if k < 0 {
			return nil, &TemplateError{Offset: start, Msg: "unterminated ${{: close it with }}"}
		}
		end := start + 3 + k + 2
		out = append(out, template{start: start, end: end, body: s[start+3 : end-2]})
		i = end
	}
	return out, nil
}

// Refs parses every ${{ ... }} in s and returns the references they make,
// in order. A template may hold a reference or, in a condition, an
// expression; both are parsed.
func Refs(s string) ([]Ref, error) {
	ts, err := scanTemplates(s)
	if err != nil {
		return nil, err
	}
	var refs []Ref
	for _, t := range ts {
		x, err := parseExpr(t.body, t.start+3)
		if err != nil {
			return nil, err
		}
		refs = collectRefs(x, refs)
	}
	return refs, nil
}

// HasTemplate reports whether s holds a ${{.
func HasTemplate(s string) bool { return strings.Contains(s, "${{") }

// Expand replaces every ${{ REF }} in s by its value. A reference look does
// not know, and an expression where a value is expected, are errors. The
// result is not expanded again.
func Expand(s string, look Lookup) (string, error) {
	ts, err := scanTemplates(s)
	if err != nil {
		return "", err
	}
	if len(ts) == 0 {
		return s, nil
	}
	var b strings.Builder
	last := 0
	for _, t := range ts {
		x, err := parseExpr(t.body, t.start+3)
		if err != nil {
			return "", err
		}
		r, ok := x.(*refExpr)
		if !ok {
			return "", &TemplateError{Offset: t.start, Msg: "a template in a value holds one reference, not an expression"}
		}
		v, ok := look(r.ref)
		if !ok {
			return "", &TemplateError{Offset: r.off, Msg: "unknown reference " + r.ref.String()}
		}
		b.WriteString(s[last:t.start])
		b.WriteString(v)
		last = t.end
	}
	b.WriteString(s[last:])
	return b.String(), nil
}

// ExpandValue expands the templates in a parameter value as written in a
// runbook: a string, or lists and mappings of them (other scalars are kept).
func ExpandValue(v any, look Lookup) (any, error) {
	switch x := v.(type) {
	case string:
		return Expand(x, look)
	case []any:
		out := make([]any, len(x))
		for i, el := range x {
			ev, err := ExpandValue(el, look)
			if err != nil {
				return nil, err
			}
			out[i] = ev
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, el := range x {
			ev, err := ExpandValue(el, look)
			if err != nil {
				return nil, err
			}
			out[k] = ev
		}
		return out, nil
	}
	return v, nil
}

// EvalWhen evaluates a condition. The language is small and total:
//
//	REF                  true unless "", "false" or "0"
//	!X                   negation
//	X == Y, X != Y       numbers compare as numbers, true/false as
//	                     booleans, anything else as strings
//	X && Y, X || Y       with && binding tighter; parentheses group
//	'text', "text"       string literals ('' is a quote inside '...')
//	true, false, 42      literals
//
// The whole condition may be wrapped in one ${{ ... }}.
func EvalWhen(expr string, look Lookup) (bool, error) {
	x, err := parseWhen(expr)
	if err != nil {
		return false, err
	}
	v, err := x.eval(look)
	if err != nil {
		return false, err
	}
	return truthy(v), nil
}

// WhenRefs returns the references a condition makes, checking its syntax.
func WhenRefs(expr string) ([]Ref, error) {
	x, err := parseWhen(expr)
	if err != nil {
		return nil, err
	}
	return collectRefs(x, nil), nil
}

// parseWhen strips an optional ${{ }} around the whole condition and parses
// it.
func parseWhen(expr string) (node, error) {
	body, off := expr, 0
	trimmed := strings.TrimSpace(expr)
	if strings.HasPrefix(trimmed, "${{") {
		ts, err := scanTemplates(expr)
		if err != nil {
			return nil, err
		}
		if len(ts) != 1 || strings.TrimSpace(expr[ts[0].end:]) != "" {
			return nil, &TemplateError{Offset: 0, Msg: "put ${{ }} around the whole condition, or leave it out"}
		}
		body, off = ts[0].body, ts[0].start+3
	} else if i := strings.Index(expr, "${{"); i >= 0 {
		return nil, &TemplateError{Offset: i, Msg: "put ${{ }} around the whole condition, or leave it out"}
	}
	return parseExpr(body, off)
}

func truthy(v string) bool {
	switch strings.ToLower(v) {
	case "", "false", "0":
		return false
	}
	return true
}

// node is a parsed expression.
type node interface {
	eval(look Lookup) (string, error)
}

type (
	refExpr struct {
		ref Ref
		off int
	}
	litExpr struct{ v string }
	notExpr struct{ x node }
	cmpExpr struct {
		ne   bool
		l, r node
	}
	logicExpr struct {
		or   bool
		l, r node
	}
)

func (e *refExpr) eval(look Lookup) (string, error) {
	v, ok := look(e.ref)
	if !ok {
		return "", &TemplateError{Offset: e.off, Msg: "unknown reference " + e.ref.String()}
	}
	return v, nil
}

func (e *litExpr) eval(Lookup) (string, error) { return e.v, nil }

func (e *notExpr) eval(look Lookup) (string, error) {
	v, err := e.x.eval(look)
	if err != nil {
		return "", err
	}
	return strconv.FormatBool(!truthy(v)), nil
}

func (e *cmpExpr) eval(look Lookup) (string, error) {
	l, err := e.l.eval(look)
	if err != nil {
		return "", err
	}
	r, err := e.r.eval(look)
	if err != nil {
		return "", err
	}
	return strconv.FormatBool(equal(l, r) != e.ne), nil
}

func (e *logicExpr) eval(look Lookup) (string, error) {
	l, err := e.l.eval(look)
	if err != nil {
		return "", err
	}
	// Evaluate both sides: an unknown reference is an error whatever the
	// other side says, so a typo never hides behind a short circuit.
	r, err := e.r.eval(look)
	if err != nil {
		return "", err
	}
	if e.or {
		return strconv.FormatBool(truthy(l) || truthy(r)), nil
	}
	return strconv.FormatBool(truthy(l) && truthy(r)), nil
}

// equal compares two values: as numbers when both are numbers, as
// booleans when both are true or false, else as strings.
func equal(a, b string) bool {
	fa, ea := strconv.ParseFloat(a, 64)
	fb, eb := strconv.ParseFloat(b, 64)
	if ea == nil && eb == nil {
		return fa == fb
	}
	ba, oka := parseBool(a)
	bb, okb := parseBool(b)
	if oka && okb {
		return ba == bb
	}
	return a == b
}

func parseBool(s string) (bool, bool) {
	switch strings.ToLower(s) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}

func collectRefs(x node, refs []Ref) []Ref {
	for _, r := range refExprs(x, nil) {
		refs = append(refs, r.ref)
	}
	return refs
}

// refExprs returns the references of x with their offsets, in order.
func refExprs(x node, out []*refExpr) []*refExpr {
	switch x := x.(type) {
	case *refExpr:
		out = append(out, x)
	case *notExpr:
		out = refExprs(x.x, out)
	case *cmpExpr:
		out = refExprs(x.r, refExprs(x.l, out))
	case *logicExpr:
		out = refExprs(x.r, refExprs(x.l, out))
	}
	return out
}

// comparisons returns the REF == 'lit' and REF != 'lit' pairs of x, so
// validation can check literals against an input's allowed values.
func comparisons(x node, out []cmpPair) []cmpPair {
	switch x := x.(type) {
	case *notExpr:
		out = comparisons(x.x, out)
	case *logicExpr:
		out = comparisons(x.r, comparisons(x.l, out))
	case *cmpExpr:
		if r, ok := x.l.(*refExpr); ok {
			if l, ok := x.r.(*litExpr); ok {
				out = append(out, cmpPair{ref: r, lit: l.v})
			}
		}
		if r, ok := x.r.(*refExpr); ok {
			if l, ok := x.l.(*litExpr); ok {
				out = append(out, cmpPair{ref: r, lit: l.v})
			}
		}
	}
	return out
}

type cmpPair struct {
	ref *refExpr
	lit string
}

// Tokens.
type tokKind int

const (
	tEOF tokKind = iota
	tRef
	tStr
	tNum
	tTrue
	tFalse
	tNot
	tEq
	tNe
	tAnd
	tOr
	tLParen
	tRParen
)

type token struct {
	kind tokKind
	text string // identifier path, literal value
	off  int
}

func lex(s string, base int) ([]token, error) {
	if len(s) > maxExprLen {
		return nil, &TemplateError{Offset: base, Msg: fmt.Sprintf("expression longer than %d bytes", maxExprLen)}
	}
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		off := base + i
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(':
			toks = append(toks, token{kind: tLParen, off: off})
			i++
		case c == ')':
			toks = append(toks, token{kind: tRParen, off: off})
			i++
		case strings.HasPrefix(s[i:], "=="):
			toks = append(toks, token{kind: tEq, off: off})
			i += 2
		case strings.HasPrefix(s[i:], "!="):
			toks = append(toks, token{kind: tNe, off: off})
			i += 2
		case c == '!':
			toks = append(toks, token{kind: tNot, off: off})
			i++
		case strings.HasPrefix(s[i:], "&&"):
			toks = append(toks, token{kind: tAnd, off: off})
			i += 2
		case strings.HasPrefix(s[i:], "||"):
			toks = append(toks, token{kind: tOr, off: off})
			i += 2
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, &TemplateError{Offset: off, Msg: "unterminated string: close it with '"}
				}
				if s[j] == '\'' {
					if j+1 < len(s) && s[j+1] == '\'' {
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			toks = append(toks, token{kind: tStr, text: b.String(), off: off})
			i = j + 1
		case c == '"':
			j := strings.IndexByte(s[i+1:], '"')
			if j < 0 {
				return nil, &TemplateError{Offset: off, Msg: `unterminated string: close it with "`}
			}
			toks = append(toks, token{kind: tStr, text: s[i+1 : i+1+j], off: off})
			i += j + 2
		case c == '-' || c >= '0' && c <= '9':
			j := i + 1
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
				j++
			}
			text := s[i:j]
			if _, err := strconv.ParseFloat(text, 64); err != nil {
				return nil, &TemplateError{Offset: off, Msg: "invalid number " + strconv.Quote(text)}
			}
			toks = append(toks, token{kind: tNum, text: text, off: off})
			i = j
		case isIdentStart(c):
			j := i + 1
			for j < len(s) && (isIdentChar(s[j]) || s[j] == '.') {
				j++
			}
			text := s[i:j]
			switch text {
			case "true":
				toks = append(toks, token{kind: tTrue, off: off})
			case "false":
				toks = append(toks, token{kind: tFalse, off: off})
			default:
				toks = append(toks, token{kind: tRef, text: text, off: off})
			}
			i = j
		default:
			r := []rune(s[i:])[0]
			msg := fmt.Sprintf("unexpected character %q", r)
			if c == '=' {
				msg = "unexpected \"=\": compare with =="
			} else if c == '&' || c == '|' {
				msg = fmt.Sprintf("unexpected %q: use && or ||", c)
			}
			return nil, &TemplateError{Offset: off, Msg: msg}
		}
	}
	return append(toks, token{kind: tEOF, off: base + len(s)}), nil
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

func isIdentChar(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '-'
}

// parseRef turns a dotted path into a reference.
func parseRef(path string, off int) (Ref, error) {
	fail := func(msg string) (Ref, error) { return Ref{}, &TemplateError{Offset: off, Msg: msg} }
	seg := strings.Split(path, ".")
	for _, s := range seg {
		if s == "" {
			return fail("invalid reference " + strconv.Quote(path))
		}
	}
	switch seg[0] {
	case ScopeInputs, ScopeVars:
		if len(seg) != 2 {
			return fail(fmt.Sprintf("invalid reference %q: want %s.NAME", path, seg[0]))
		}
		return Ref{Scope: seg[0], Name: seg[1]}, nil
	case ScopeHost:
		if len(seg) != 2 || seg[1] != "name" && seg[1] != "address" {
			return fail(fmt.Sprintf("invalid reference %q: want host.name or host.address", path))
		}
		return Ref{Scope: ScopeHost, Name: seg[1]}, nil
	case ScopeRun:
		if len(seg) != 2 || seg[1] != "id" {
			return fail(fmt.Sprintf("invalid reference %q: want run.id", path))
		}
		return Ref{Scope: ScopeRun, Name: "id"}, nil
	case ScopeSteps:
		if len(seg) != 4 || seg[2] != "outputs" {
			return fail(fmt.Sprintf("invalid reference %q: want steps.ID.outputs.NAME", path))
		}
		return Ref{Scope: ScopeSteps, Step: seg[1], Name: seg[3]}, nil
	case "env":
		return fail(fmt.Sprintf("%s: runbooks do not read the environment; declare an input, or a secret in the inventory", path))
	}
	if len(seg) == 1 {
		return fail(fmt.Sprintf("unknown name %q: quote text as '%s'", path, path))
	}
	return fail(fmt.Sprintf("unknown reference %q: use inputs., vars., host., steps.ID.outputs. or run.id", path))
}

// parser is a recursive-descent parser over tokens.
type parser struct {
	toks  []token
	i     int
	depth int
}

// parseExpr parses s, whose first byte is at offset base of its string.
func parseExpr(s string, base int) (node, error) {
	toks, err := lex(s, base)
	if err != nil {
		return nil, err
	}
	if toks[0].kind == tEOF {
		return nil, &TemplateError{Offset: base, Msg: "empty expression"}
	}
	p := &parser{toks: toks}
	x, err := p.or()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tEOF {
		return nil, &TemplateError{Offset: t.off, Msg: "unexpected " + describeTok(t) + " after a complete expression"}
	}
	return x, nil
}

var errTooDeep = errors.New("expression nested too deeply")

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxExprDepth {
		return &TemplateError{Offset: p.peek().off, Msg: errTooDeep.Error()}
	}
	return nil
}

func (p *parser) or() (node, error) {
	x, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.peek().kind == tOr {
		p.next()
		y, err := p.and()
		if err != nil {
			return nil, err
		}
		x = &logicExpr{or: true, l: x, r: y}
	}
	return x, nil
}

func (p *parser) and() (node, error) {
	x, err := p.cmp()
	if err != nil {
		return nil, err
	}
	for p.peek().kind == tAnd {
		p.next()
		y, err := p.cmp()
		if err != nil {
			return nil, err
		}
		x = &logicExpr{l: x, r: y}
	}
	return x, nil
}

func (p *parser) cmp() (node, error) {
	x, err := p.unary()
	if err != nil {
		return nil, err
	}
	if k := p.peek().kind; k == tEq || k == tNe {
		p.next()
		y, err := p.unary()
		if err != nil {
			return nil, err
		}
		x = &cmpExpr{ne: k == tNe, l: x, r: y}
		if k := p.peek().kind; k == tEq || k == tNe {
			return nil, &TemplateError{Offset: p.peek().off, Msg: "comparisons do not chain: use && between them"}
		}
	}
	return x, nil
}

func (p *parser) unary() (node, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	t := p.next()
	switch t.kind {
	case tNot:
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		return &notExpr{x: x}, nil
	case tLParen:
		x, err := p.or()
		if err != nil {
			return nil, err
		}
		if c := p.next(); c.kind != tRParen {
			return nil, &TemplateError{Offset: c.off, Msg: "missing ): got " + describeTok(c)}
		}
		return x, nil
	case tStr, tNum:
		return &litExpr{v: t.text}, nil
	case tTrue:
		return &litExpr{v: "true"}, nil
	case tFalse:
		return &litExpr{v: "false"}, nil
	case tRef:
		r, err := parseRef(t.text, t.off)
		if err != nil {
			return nil, err
		}
		return &refExpr{ref: r, off: t.off}, nil
	}
	return nil, &TemplateError{Offset: t.off, Msg: "expected a value, got " + describeTok(t)}
}

func describeTok(t token) string {
	switch t.kind {
	case tEOF:
		return "end of expression"
	case tRef:
		return strconv.Quote(t.text)
	case tStr:
		return "string"
	case tNum:
		return "number " + t.text
	case tTrue:
		return "true"
	case tFalse:
		return "false"
	case tNot:
		return `"!"`
	case tEq:
		return `"=="`
	case tNe:
		return `"!="`
	case tAnd:
		return `"&&"`
	case tOr:
		return `"||"`
	case tLParen:
		return `"("`
	}
	return `")"`
}
