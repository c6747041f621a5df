// Package strictyaml is the strict YAML layer shared by runbooks and
// inventories: it parses a file into a yaml.Node tree while refusing hostile
// input (huge files, NUL and control bytes, anchors and aliases, deep
// nesting, duplicate keys, custom tags), decodes nodes against explicit key
// lists, and reports every problem as an Error that carries the file, line,
// column and the offending line with a caret under the column.
package strictyaml

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem in a YAML file, at a position.
type Error struct {
	File  string
	Line  int // 1-based
	Col   int // 1-based, in characters
	Field string
	Msg   string
	// Snippet is the offending line as it will be printed: control
	// characters replaced, secret-looking values masked, long lines cut.
	Snippet string
	// Hint, when set, says how to fix it.
	Hint string

	// caret is the caret's offset in runes within Snippet (-1: no caret).
	caret int
}

// Error renders
//
//	FILE:LINE:COL: FIELD: MESSAGE
//	   LINE | the offending line
//	        |     ^
//	   hint: ...
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Col)
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Snippet != "" {
		num := strconv.Itoa(e.Line)
		pad := strings.Repeat(" ", len(num))
		fmt.Fprintf(&b, "\n  %s | %s", num, e.Snippet)
		if e.caret >= 0 {
			fmt.Fprintf(&b, "\n  %s | %s^", pad, caretPad(e.Snippet, e.caret))
		}
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, "\n  hint: %s", e.Hint)
	}
	return b.String()
}

// caretPad returns the whitespace that puts a caret under rune n of line:
// tabs are kept so the caret lines up whatever the tab width.
func caretPad(line string, n int) string {
	var b strings.Builder
	i := 0
	for _, r := range line {
		if i >= n {
			break
		}
		if r == '\t' {
			b.WriteByte('\t')
		} else {
			b.WriteByte(' ')
		}
		i++
	}
	for ; i < n; i++ {
		b.WriteByte(' ')
	}
	return b.String()
}

// MaxErrors bounds how many errors one file reports.
const MaxErrors = 50

// MaxCollect bounds how many errors decoders collect before they stop
// quoting lines: a hostile file could hold a million errors, each quoting
// a megabyte-long line.
const MaxCollect = 4 * MaxErrors

// Errors are all the problems found in one or more files, sorted by
// position. A decoder reports every problem it finds so a user can fix them
// all in one go.
type Errors []*Error

func (l Errors) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap gives errors.As and errors.Is access to each error.
func (l Errors) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// Sorted returns the errors ordered by file and position, duplicates
// removed, and cut at MaxErrors with a final note of how many were left off.
func (l Errors) Sorted() Errors {
	out := slices.Clone(l)
	slices.SortStableFunc(out, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
	out = slices.CompactFunc(out, func(a, b *Error) bool {
		return a.File == b.File && a.Line == b.Line && a.Col == b.Col && a.Field == b.Field && a.Msg == b.Msg
	})
	// A hint repeated under every error of a kind is noise: keep the
	// first of each.
	hints := map[string]bool{}
	for i, e := range out {
		if e.Hint != "" && hints[e.File+"\x00"+e.Hint] {
			c := *e
			c.Hint = ""
			out[i] = &c
		}
		hints[e.File+"\x00"+e.Hint] = true
	}
	if len(out) > MaxErrors {
		last := out[MaxErrors-1]
		out = append(out[:MaxErrors-1:MaxErrors-1], &Error{
			File: last.File, Line: last.Line, Col: last.Col, caret: -1,
			Msg: fmt.Sprintf("too many errors: fix these %d and run again", MaxErrors-1),
		})
	}
	return out
}

// Err returns nil when l is empty, else l sorted.
func (l Errors) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l.Sorted()
}
