package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Limits on what a file may hold. Runbooks and inventories are small,
// hand-written files; anything beyond these is a mistake or an attack.
const (
	MaxSize  = 1 << 20 // bytes
	MaxDepth = 32      // nested mappings and sequences
)

// Parse parses one YAML document and returns its top node. It refuses, with
// an Error each:
//   - files over MaxSize, invalid UTF-8, UTF-16, NUL and other control
//     characters, bidirectional and invisible formatting characters;
//   - YAML syntax errors (tabs in indentation get their own message);
//   - more than one document, or none;
//   - anchors and aliases (no alias bombs, no action at a distance);
//   - nesting deeper than MaxDepth;
//   - duplicate or non-scalar mapping keys, merge keys, and tags other than
//     YAML's own scalar, mapping and sequence tags.
//
// The returned Source quotes lines for later errors. On error the node may
// be nil; when it is not, it is still unsafe to decode.
func Parse(file string, data []byte) (*yaml.Node, *Source, error) {
	if len(data) > MaxSize {
		e := &Error{File: file, Line: 1, Col: 1, caret: -1, Msg: fmt.Sprintf("file is larger than the limit of %d bytes (1 MiB)", MaxSize)}
		return nil, NewSource(file, nil), Errors{e}
	}
	src := NewSource(file, data)
	if bytes.HasPrefix(data, []byte{0xff, 0xfe}) || bytes.HasPrefix(data, []byte{0xfe, 0xff}) {
		e := src.ErrorAt(1, 1, "", "file is UTF-16: save it as UTF-8")
		e.Snippet, e.caret = "", -1
		return nil, src, Errors{e}
	}
	if err := checkText(src, data); err != nil {
		return nil, src, Errors{err}
	}
	text := bytes.TrimPrefix(data, utf8BOM)

	dec := yaml.NewDecoder(bytes.NewReader(text))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, src, Errors{src.ErrorAt(1, 1, "", "file is empty")}
		}
		return nil, src, Errors{syntaxError(src, text, err)}
	}
	var errs Errors
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		errs = append(errs, src.ErrorNode(&extra, "", "more than one YAML document: a file holds one"))
	} else if !errors.Is(err, io.EOF) {
		errs = append(errs, syntaxError(src, text, err))
	}
	if len(doc.Content) == 0 {
		return nil, src, append(errs, src.ErrorAt(1, 1, "", "file is empty"))
	}
	root := doc.Content[0]
	w := walker{src: src}
	w.walk(root, 1)
	errs = append(errs, w.errs...)
	for _, first := range []struct {
		e *Error
		n int
	}{{w.anchor, w.anchors}, {w.alias, w.aliases}} {
		if first.e != nil {
			if first.n > 1 {
				first.e.Msg += fmt.Sprintf(" (%d more in this file)", first.n-1)
			}
			errs = append(errs, first.e)
		}
	}
	if len(errs) > 0 {
		return root, src, errs.Sorted()
	}
	return root, src, nil
}

// checkText refuses bytes that have no place in a hand-written YAML file
// or that would make the file read differently from how it parses.
func checkText(src *Source, data []byte) *Error {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		var msg string
		switch {
		case r == utf8.RuneError && size <= 1:
			msg = "invalid UTF-8"
		case r == 0:
			msg = "NUL byte: this is not a text file"
		case r == '\n':
			line, col = line+1, 1
			i += size
			continue
		case r == '\t' || r == '\r':
		case r == 0xfeff && i == 0: // a byte order mark
		default:
			msg = badRune(r)
		}
		if msg != "" {
			return src.ErrorAt(line, col, "", msg)
		}
		i += size
		col++
	}
	return nil
}

var lineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns the YAML library's error into an Error. The library
// gives a line but no column; the column is that of the first tab in the
// line's indentation when there is one, else of its first character.
// badRune says why r has no place in text a person wrote and reads, or
// returns "": control characters (line feed and tab aside),
// separators, and bidirectional and invisible formatting characters.
func badRune(r rune) string {
	switch {
	case r == '\n' || r == '\t':
	case r == 0:
		return "NUL character is not allowed"
	case r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f:
		return fmt.Sprintf("control character U+%04X is not allowed", r)
	case r == 0x2028 || r == 0x2029:
		return fmt.Sprintf("line separator U+%04X is not allowed", r)
	case r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 || r == 0x200e || r == 0x200f || r == 0x061c:
		return fmt.Sprintf("bidirectional control character U+%04X is not allowed: it makes the text read differently from how it parses", r)
	case r >= 0x200b && r <= 0x200d || r == 0x2060 || r == 0xfeff || r == 0x00ad:
		return fmt.Sprintf("invisible character U+%04X is not allowed", r)
	}
	return ""
}

// checkScalar refuses a scalar whose value, once YAML's escapes are read
// ("\e", "\0", "\u202e" in double quotes), holds what checkText refuses
// in the file's bytes: such text would reach terminals, journals and
// records.
func (w *walker) checkScalar(n *yaml.Node) {
	if n.Style&(yaml.DoubleQuotedStyle) == 0 {
		return // only double quotes have escapes; the bytes were checked
	}
	for _, r := range n.Value {
		if msg := badRune(r); msg != "" {
			w.add(n, msg+" (written as an escape)")
			return
		}
	}
}

func syntaxError(src *Source, text []byte, err error) *Error {
	msg := err.Error()
	line := 0
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if strings.HasPrefix(msg, "exceeded max depth") {
		l, c := deepestBracket(text)
		return src.ErrorAt(l, c, "", fmt.Sprintf("nesting deeper than %d levels", MaxDepth))
	}
	if m := unknownAnchorRE.FindStringSubmatch(msg); m != nil {
		l, c := find(text, "*"+m[1])
		return src.ErrorAt(l, c, "", "aliases (*"+m[1]+") are not allowed: write the value out")
	}
	// A tab in indentation is the most common cause of a scanner error:
	// look for one at the reported line and the next.
	for _, l := range []int{line, line + 1} {
		s := src.Line(l)
		indent := len(s) - len(strings.TrimLeft(s, " \t"))
		if t := strings.IndexByte(s[:indent], '\t'); t >= 0 && strings.TrimSpace(s) != "" {
			e := src.ErrorAt(l, utf8.RuneCountInString(s[:t])+1, "", "tab character in indentation: YAML indents with spaces")
			return e
		}
	}
	if line == 0 {
		line = 1
	}
	s := src.Line(line)
	col := len([]rune(s)) - len([]rune(strings.TrimLeft(s, " "))) + 1
	return src.ErrorAt(line, col, "", "invalid YAML: "+msg)
}

// deepestBracket finds where flow brackets first nest deeper than MaxDepth.
func deepestBracket(text []byte) (line, col int) {
	line, col = 1, 1
	depth := 0
	for _, r := range string(text) {
		switch r {
		case '[', '{':
			depth++
			if depth > MaxDepth {
				return line, col
			}
		case ']', '}':
			depth--
		case '\n':
			line, col = line+1, 0
		}
		col++
	}
	return 1, 1
}

var unknownAnchorRE = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

// find returns the line and column of the first s in text, else 1:1.
func find(text []byte, s string) (line, col int) {
	i := bytes.Index(text, []byte(s))
	if i < 0 {
		return 1, 1
	}
	start := bytes.LastIndexByte(text[:i], '\n') + 1
	return bytes.Count(text[:i], []byte("\n")) + 1, utf8.RuneCount(text[start:i]) + 1
}

// BadTag reports whether n carries an explicit tag Parse refuses.
func BadTag(n *yaml.Node) bool { return n.Style&yaml.TaggedStyle != 0 && !allowedTags[n.Tag] }

// walker checks the parsed tree before anyone decodes it.
type walker struct {
	src  *Source
	errs Errors
	deep bool
	// The first anchor and alias, and how many there are: one error for
	// each is enough, and an alias bomb would make thousands.
	anchor, alias    *Error
	anchors, aliases int
}

func (w *walker) anchorAt(n *yaml.Node) {
	w.anchors++
	if w.anchor == nil {
		w.anchor = w.src.ErrorNode(n, "", "anchors (&"+n.Anchor+") are not allowed: write the value out")
	}
}

var allowedTags = map[string]bool{
	"!!str": true, "!!int": true, "!!bool": true, "!!float": true, "!!null": true,
	"!!timestamp": true, "!!map": true, "!!seq": true, "!!merge": true,
}

func (w *walker) add(n *yaml.Node, msg string) {
	if len(w.errs) < MaxCollect {
		w.errs = append(w.errs, w.src.ErrorNode(n, "", msg))
	}
}

func (w *walker) walk(n *yaml.Node, depth int) {
	if n.Anchor != "" {
		w.anchorAt(n)
	}
	if n.Kind == yaml.AliasNode {
		// Never follow n.Alias: that is how alias bombs explode.
		w.aliases++
		if w.alias == nil {
			w.alias = w.src.ErrorNode(n, "", "aliases (*"+n.Value+") are not allowed: write the value out")
		}
		return
	}
	if depth > MaxDepth {
		if !w.deep {
			w.deep = true
			w.add(n, fmt.Sprintf("nesting deeper than %d levels", MaxDepth))
		}
		return
	}
	if BadTag(n) {
		if len(w.errs) < MaxCollect {
			e := w.src.ErrorNode(n, "", "YAML tag "+Quote(n.Tag)+" is not allowed")
			if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
				e.Hint = "a value that starts with ! is read as a tag: quote it, as in \"!inputs.dry_run\""
			}
			w.errs = append(w.errs, e)
		}
	}
	switch n.Kind {
	case yaml.MappingNode:
		seen := map[string]*yaml.Node{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch {
			case k.Kind != yaml.ScalarNode:
				w.add(k, "a mapping key must be a plain string")
				w.walk(k, depth+1)
			case k.Tag == "!!merge":
				w.add(k, "merge keys (<<) are not allowed: write the keys out")
			default:
				if k.Anchor != "" {
					w.anchorAt(k)
				}
				w.checkScalar(k)
				if first, dup := seen[k.Value]; dup {
					w.add(k, fmt.Sprintf("duplicate key %s (first at line %d)", Quote(k.Value), first.Line))
				} else {
					seen[k.Value] = k
				}
			}
			w.walk(v, depth+1)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			w.walk(c, depth+1)
		}
	case yaml.ScalarNode:
		w.checkScalar(n)
	}
}
