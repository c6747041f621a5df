package litellm

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/internal/secret"
)

// The environment variables of a LiteLLM proxy that a rotation touches.
const (
	EnvMasterKey   = "LITELLM_MASTER_KEY"
	EnvSaltKey     = "LITELLM_SALT_KEY"
	EnvDatabaseURL = "DATABASE_URL"
)

// MaxEnvFile bounds the size of an environment file the runner reads.
const MaxEnvFile = 1 << 20

// EnvFile is a proxy's environment file as systemd's EnvironmentFile= reads
// it: NAME=VALUE lines, comments starting with '#' or ';', blank lines. An
// "export " prefix (for files that shells also source) is accepted and
// kept. Set changes one variable's value and leaves every other byte of the
// file as it was, so a rendering differs from its source only where asked.
//
// The file holds secrets (the master key, the database URL). Every printed
// form of an EnvFile is a redaction marker; the text is reached only through
// Render, as a secret.Value.
type EnvFile struct {
	lines []envLine
	// final is true when the source ended with a newline (or was empty).
	final bool
}

type envLine struct {
	text   string // the whole line, without its newline
	name   string // "" for comments, blank and unparsable lines
	prefix string // everything before the value: indentation, "export ", NAME=
	cr     bool   // the line ends in a carriage return (a CRLF file), kept by Set
}

// ParseEnvFile reads an environment file. Lines it does not understand are
// kept as they are, but a NUL byte or a file over MaxEnvFile is an error.
func ParseEnvFile(b []byte) (*EnvFile, error) {
	if len(b) > MaxEnvFile {
		return nil, fmt.Errorf("parse environment file: %d bytes, more than %d", len(b), MaxEnvFile)
	}
	if bytes.IndexByte(b, 0) >= 0 {
		return nil, errors.New("parse environment file: it holds a NUL byte")
	}
	f := &EnvFile{final: len(b) == 0 || b[len(b)-1] == '\n'}
	text := string(b)
	if f.final && len(text) > 0 {
		text = text[:len(text)-1]
	}
	if len(b) == 0 {
		return f, nil
	}
	for _, l := range strings.Split(text, "\n") {
		f.lines = append(f.lines, parseEnvLine(l))
	}
	return f, nil
}

func parseEnvLine(l string) envLine {
	el := envLine{text: l, cr: strings.HasSuffix(l, "\r")}
	s := strings.TrimLeft(l, " \t")
	if s == "" || s[0] == '#' || s[0] == ';' {
		return el
	}
	if rest, ok := strings.CutPrefix(s, "export "); ok {
		s = strings.TrimLeft(rest, " \t")
	}
	eq := strings.IndexByte(s, '=')
	if eq <= 0 {
		return el
	}
	name := strings.TrimRight(s[:eq], " \t")
	if !validEnvName(name) {
		return el
	}
	el.name = name
	el.prefix = l[:len(l)-len(s)+eq+1]
	return el
}

func validEnvName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// value is the line's value with surrounding blanks and one level of
// quotes removed, as systemd reads it.
func (l envLine) value() string {
	v := strings.Trim(strings.TrimSuffix(l.text[len(l.prefix):], "\r"), " \t")
	if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
		q := v[0]
		v = v[1 : len(v)-1]
		if q == '"' {
			var b strings.Builder
			for i := 0; i < len(v); i++ {
				if v[i] == '\\' && i+1 < len(v) && strings.IndexByte(`"\$`+"`", v[i+1]) >= 0 {
					i++
				}
				b.WriteByte(v[i])
			}
			v = b.String()
		}
	}
	return v
}

// Lookup returns the value of name: the last assignment wins, as in
// systemd. ok is false when the file does not set it.
func (f *EnvFile) Lookup(name string) (secret.Value, bool) {
	for i := len(f.lines) - 1; i >= 0; i-- {
		if f.lines[i].name == name {
			return secret.New(f.lines[i].value()), true
		}
	}
	return secret.Value{}, false
}

// Names lists the variables the file sets, in order, once each.
func (f *EnvFile) Names() []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range f.lines {
		if l.name != "" && !seen[l.name] {
			seen[l.name] = true
			out = append(out, l.name)
		}
	}
	return out
}

// Set gives name the value v: every line that assigns name gets the new
// value, keeping its own prefix; a name the file does not set is appended.
// A value with a newline or NUL byte cannot be written and is an error; one
// with blanks, quotes, '#', '$' or '\' is double-quoted.
func (f *EnvFile) Set(name string, v secret.Value) error {
	if !validEnvName(name) {
		return fmt.Errorf("set %q: not an environment variable name", name)
	}
	plain := v.Reveal()
	if strings.ContainsAny(plain, "\n\r\x00") {
		return fmt.Errorf("set %s: the value holds a line break or NUL byte", name)
	}
	quoted := quoteEnvValue(plain)
	found := false
	for i, l := range f.lines {
		if l.name == name {
			f.lines[i].text = l.prefix + quoted
			if l.cr {
				f.lines[i].text += "\r"
			}
			found = true
		}
	}
	if !found {
		f.lines = append(f.lines, envLine{text: name + "=" + quoted, name: name, prefix: name + "="})
		f.final = true
	}
	return nil
}

func quoteEnvValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\"'#;$\\`") {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if strings.IndexByte(`"\$`+"`", v[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}

// Clone returns a copy that Set does not share.
func (f *EnvFile) Clone() *EnvFile {
	return &EnvFile{lines: append([]envLine(nil), f.lines...), final: f.final}
}

// Render returns the file's text.
func (f *EnvFile) Render() secret.Value {
	var b strings.Builder
	for i, l := range f.lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(l.text)
	}
	if f.final && len(f.lines) > 0 {
		b.WriteByte('\n')
	}
	return secret.New(b.String())
}

// Fingerprint identifies the file's text without revealing it.
func (f *EnvFile) Fingerprint() string { return f.Render().Fingerprint() }

// String, GoString and Format keep the text out of every printed form.
// They have value receivers, so an EnvFile printed by value is covered too.
func (f EnvFile) String() string   { return "EnvFile(" + secret.Redacted + ")" }
func (f EnvFile) GoString() string { return f.String() }

// Format implements fmt.Formatter.
func (f EnvFile) Format(s fmt.State, _ rune) { _, _ = s.Write([]byte(f.String())) }

var (
	_ fmt.Formatter = EnvFile{}
	_ fmt.Formatter = (*EnvFile)(nil)
)
