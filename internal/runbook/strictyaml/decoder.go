package strictyaml

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Decoder decodes nodes of one file and collects every error it meets.
type Decoder struct {
	Src  *Source
	Errs Errors

	// secret holds the nodes ScanSecrets reported: other errors about
	// them would only repeat that the value has no place here.
	secret map[*yaml.Node]bool
}

// Add records an error.
func (d *Decoder) Add(e *Error) {
	if !d.Full() {
		d.Errs = append(d.Errs, e)
	}
}

// Full reports whether the decoder has collected MaxCollect errors: from
// then on it records no more.
func (d *Decoder) Full() bool { return len(d.Errs) >= MaxCollect }

// Failf records an error at node n. It returns the error so the caller can
// add to it; once the decoder is full, that error is not recorded.
func (d *Decoder) Failf(n *yaml.Node, field, format string, args ...any) *Error {
	if d.Full() {
		return &Error{}
	}
	e := d.Src.ErrorNode(n, field, fmt.Sprintf(format, args...))
	switch {
	case n != nil && n.Kind == yaml.AliasNode: // Parse reported it
	case n != nil && BadTag(n): // Parse reported it
	case d.secret[n]: // ScanSecrets reported it
	default:
		d.Add(e)
	}
	return e
}

// Err returns the collected errors, sorted, or nil.
func (d *Decoder) Err() error { return d.Errs.Err() }

// Field is one key and value of a mapping.
type Field struct {
	Key   string
	KeyN  *yaml.Node
	Value *yaml.Node
}

// Join builds a field path: Join("steps[0]", "with") is "steps[0].with".
func Join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Index builds a path to a list element: "steps[2]".
func Index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// MappingOrNull is Mapping, except that a null node (a key with nothing
// after it) is an empty mapping.
func (d *Decoder) MappingOrNull(n *yaml.Node, path string, known []string) []Field {
	if n == nil || IsNull(n) {
		return nil
	}
	return d.Mapping(n, path, known)
}

// Mapping returns the fields of mapping n in order. It reports a node that
// is not a mapping and every key not in known (when known is not nil).
func (d *Decoder) Mapping(n *yaml.Node, path string, known []string) []Field {
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.Failf(n, path, "want a mapping, got %s", Describe(n))
		return nil
	}
	out := make([]Field, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			continue // reported by Parse
		}
		if known != nil && !contains(known, k.Value) {
			if d.Full() {
				continue
			}
			e := d.Failf(k, path, "unknown key %s", Quote(k.Value))
			if s := Suggest(k.Value, known); s != "" {
				e.Msg += fmt.Sprintf("; did you mean %q?", s)
			} else {
				e.Hint = "allowed keys: " + strings.Join(known, ", ")
			}
			continue
		}
		out = append(out, Field{Key: k.Value, KeyN: k, Value: v})
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// IsNull reports whether n is a null scalar (absent value, ~ or null).
func IsNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// Describe names what a node is, for "want X, got Y" messages.
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!null":
		return "nothing"
	case "!!bool":
		return "a boolean (" + n.Value + ")"
	case "!!int":
		return "an integer (" + n.Value + ")"
	case "!!float":
		return "a number (" + n.Value + ")"
	}
	return "a string " + Quote(n.Value)
}

// Str decodes a string. Plain numbers and timestamps are taken as their
// text; booleans, null, lists and mappings are errors.
func (d *Decoder) Str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Tag == "!!bool" {
		d.Failf(n, path, "want a string, got %s", Describe(n))
		return "", false
	}
	return n.Value, true
}

// Int decodes a decimal integer in [lo, hi].
func (d *Decoder) Int(n *yaml.Node, path string, lo, hi int) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		d.Failf(n, path, "want an integer, got %s", Describe(n))
		return 0, false
	}
	v, err := strconv.ParseInt(n.Value, 10, 64)
	if err != nil || v < int64(lo) || v > int64(hi) {
		d.Failf(n, path, "want an integer from %d to %d, got %s", lo, hi, Quote(n.Value))
		return 0, false
	}
	return int(v), true
}

// Bool decodes true or false.
func (d *Decoder) Bool(n *yaml.Node, path string) (bool, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		d.Failf(n, path, "want true or false, got %s", Describe(n))
		return false, false
	}
	return strings.EqualFold(n.Value, "true"), true
}

// Duration decodes a duration (see ParseDuration) that must be positive.
func (d *Decoder) Duration(n *yaml.Node, path string) (time.Duration, bool) {
	if n.Kind == yaml.ScalarNode && (n.Tag == "!!int" || n.Tag == "!!float") {
		d.Failf(n, path, "duration %s needs a unit, as in %ss or %sm", Quote(n.Value), n.Value, n.Value)
		return 0, false
	}
	s, ok := d.Str(n, path)
	if !ok {
		return 0, false
	}
	v, err := ParseDuration(s)
	if err != nil {
		d.Failf(n, path, "%v", err)
		return 0, false
	}
	if v <= 0 {
		d.Failf(n, path, "duration must be positive, got %s", Quote(s))
		return 0, false
	}
	return v, true
}

// Strings decodes a list of strings; with scalarOK a single string is a
// list of one. It returns the nodes of the elements alongside.
func (d *Decoder) Strings(n *yaml.Node, path string, scalarOK bool) ([]string, []*yaml.Node) {
	if scalarOK && n.Kind == yaml.ScalarNode && !IsNull(n) {
		s, ok := d.Str(n, path)
		if !ok {
			return nil, nil
		}
		return []string{s}, []*yaml.Node{n}
	}
	if n.Kind != yaml.SequenceNode {
		want := "a list of strings"
		if scalarOK {
			want = "a string or a list of strings"
		}
		d.Failf(n, path, "want %s, got %s", want, Describe(n))
		return nil, nil
	}
	var out []string
	var nodes []*yaml.Node
	for i, c := range n.Content {
		s, ok := d.Str(c, Index(path, i))
		if ok {
			out = append(out, s)
			nodes = append(nodes, c)
		}
	}
	return out, nodes
}

// ParseDuration parses a duration: Go's form ("1h30m", "200ms") plus days
// ("d", 24h) and weeks ("w", 7d), as in "90d" or "1w2d12h".
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	neg := false
	if s[0] == '-' || s[0] == '+' {
		neg = s[0] == '-'
		s = s[1:]
		if s == "" {
			return 0, fmt.Errorf("invalid duration %s: want a duration like 30s, 5m, 1h30m, 90d or 2w", Quote(orig))
		}
	}
	var total time.Duration
	rest := ""
	for s != "" {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 || i == len(s) || (s[i] != 'd' && s[i] != 'w') {
			rest = s
			break
		}
		n, err := strconv.ParseInt(s[:i], 10, 64)
		unit := 24 * time.Hour
		if s[i] == 'w' {
			unit = 7 * 24 * time.Hour
		}
		if err != nil || n > int64(math.MaxInt64/unit) || total > math.MaxInt64-time.Duration(n)*unit {
			return 0, fmt.Errorf("duration %s is too long", Quote(orig))
		}
		total += time.Duration(n) * unit
		s = s[i+1:]
	}
	if rest != "" {
		if strings.ContainsAny(rest, "+-") {
			return 0, fmt.Errorf("invalid duration %s: want a duration like 30s, 5m, 1h30m, 90d or 2w", Quote(orig))
		}
		v, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %s: want a duration like 30s, 5m, 1h30m, 90d or 2w", Quote(orig))
		}
		if total > math.MaxInt64-v {
			return 0, fmt.Errorf("duration %s is too long", Quote(orig))
		}
		total += v
	}
	if neg {
		total = -total
	}
	return total, nil
}

// Suggest returns the candidate closest to s when it is close enough to be
// a likely typo, else "".
func Suggest(s string, candidates []string) string {
	best, bestD := "", 3
	if len(s) > 64 || len(candidates) > 200 {
		return "" // not worth the time on a hostile file
	}
	for _, c := range candidates {
		if d := distance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD > len(s)/2 && bestD > 1 {
		return ""
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			c := 1
			if ra[i-1] == rb[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// ScanSecrets reports every scalar under n (keys included) that looks like
// key material, without the value: the snippet shows the marker instead.
func (d *Decoder) ScanSecrets(n *yaml.Node, path, hint string) {
	switch n.Kind {
	case yaml.ScalarNode:
		if what, ok := LooksSecret(n.Value); ok && !d.Full() {
			e := d.Src.SecretErrorNode(n, path, "value looks like "+what+": secrets are never written inline")
			e.Hint = hint
			d.Add(e)
			if d.secret == nil {
				d.secret = map[*yaml.Node]bool{}
			}
			d.secret[n] = true
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := Join(path, k.Value)
			if _, ok := LooksSecret(k.Value); ok {
				p = path
			}
			d.ScanSecrets(k, path, hint)
			d.ScanSecrets(v, p, hint)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			d.ScanSecrets(c, Index(path, i), hint)
		}
	}
}
