package strictyaml

import (
	"bytes"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Source is a file's text, kept to quote its lines in errors.
type Source struct {
	File  string
	lines []string
}

// NewSource splits data into lines for quoting.
func NewSource(file string, data []byte) *Source {
	data = bytes.TrimPrefix(data, utf8BOM)
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	return &Source{File: file, lines: lines}
}

var utf8BOM = []byte("\xef\xbb\xbf")

// Line returns line n (1-based), or "" past the end.
func (s *Source) Line(n int) string {
	if s == nil || n < 1 || n > len(s.lines) {
		return ""
	}
	return s.lines[n-1]
}

// snippet window: lines longer than this are cut around the column.
const (
	snippetMax    = 120
	snippetBefore = 40
)

// snippet returns the printable form of line n and the caret's rune offset
// in it. With maskRest, everything from col on is replaced by the redaction
// marker: the value there is a secret.
func (s *Source) snippet(n, col int, maskRest bool) (string, int) {
	line := s.Line(n)
	if line == "" {
		return "", -1
	}
	c := col - 1
	if c < 0 {
		c = 0
	}
	var runes []rune
	if len(line) > 4*maskMargin {
		// Cut a very long line to a margin around the column before
		// masking: masking the whole of a 1 MiB line for each of many
		// errors would be slow, and the margin is wide enough that a
		// secret in view is whole when it is masked.
		runes, c = around(line, c, maskMargin)
	} else {
		runes = []rune(line)
	}
	if c > len(runes) {
		c = len(runes)
	}
	if maskRest {
		runes = append(runes[:c:c], []rune(Redacted)...)
	}
	// Mask before cutting so a cut never leaves half a secret to see.
	runes = []rune(MaskSecrets(string(runes)))
	for i, r := range runes {
		if r != '\t' && !unicode.IsPrint(r) || r == utf8.RuneError {
			runes[i] = '?'
		}
	}
	if len(runes) > snippetMax {
		start := c - snippetBefore
		if start < 0 {
			start = 0
		}
		end := start + snippetMax
		if end > len(runes) {
			end = len(runes)
			start = max(0, end-snippetMax)
		}
		cut := runes[start:end]
		prefix := ""
		if start > 0 {
			prefix = "..."
			c = c - start + len(prefix)
		}
		out := prefix + string(cut)
		if end < len(runes) {
			out += "..."
		}
		return out, c
	}
	return string(runes), c
}

const maskMargin = 1024

// around returns the runes of line within margin of rune c, and c's index
// in them.
func around(line string, c, margin int) ([]rune, int) {
	lo, hi := c-margin, c+margin
	if lo < 0 {
		lo = 0
	}
	out := make([]rune, 0, 2*margin)
	i := 0
	for _, r := range line {
		if i >= hi {
			break
		}
		if i >= lo {
			out = append(out, r)
		}
		i++
	}
	return out, c - lo
}

// Redacted replaces a secret-looking value in snippets.
const Redacted = "[REDACTED]"

// ErrorAt makes an error at a line and column with the line quoted.
func (s *Source) ErrorAt(line, col int, field, msg string) *Error {
	return s.errorAt(line, col, field, msg, false)
}

func (s *Source) errorAt(line, col int, field, msg string, maskRest bool) *Error {
	if line < 1 {
		line = 1
	}
	if col < 1 {
		col = 1
	}
	// Field paths and messages are built from the file's text: mask them
	// too, so no secret-looking value can reach an error by any route.
	e := &Error{File: s.File, Line: line, Col: col, Field: MaskSecrets(field), Msg: MaskSecrets(msg), caret: -1}
	e.Snippet, e.caret = s.snippet(line, col, maskRest)
	return e
}

// ErrorNode makes an error at node n.
func (s *Source) ErrorNode(n *yaml.Node, field, msg string) *Error {
	if n == nil {
		return s.ErrorAt(1, 1, field, msg)
	}
	return s.errorAt(n.Line, n.Column, field, msg, false)
}

// SecretErrorNode makes an error at node n whose value is a secret: the
// snippet shows the marker in its place.
func (s *Source) SecretErrorNode(n *yaml.Node, field, msg string) *Error {
	return s.errorAt(n.Line, n.Column, field, msg, true)
}
