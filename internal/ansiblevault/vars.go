package ansiblevault

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/runbook-dev/runbook/internal/secret"
)

// A vars file holds a variable encrypted in one of two ways:
//   - whole file: the file is one vault text whose plaintext is YAML
//     (ansible-vault encrypt vars.yml);
//   - inline: the file is plain YAML and the variable's value is a vault
//     text tagged !vault (ansible-vault encrypt_string).
// Only top-level variables of a mapping document are handled.

// VaultTag tags an inline vault value.
const VaultTag = "!vault"

// ErrNotMapping means the YAML document is not a mapping of variables.
var ErrNotMapping = errors.New("vars file is not a mapping of variables")

// Var is a variable's value and how it is stored.
type Var struct {
	Value secret.Value
	// Encrypted is false for a plain value in a plain file (a secret in
	// clear: setting it encrypts it).
	Encrypted bool
	Envelope  Envelope
}

// ReadVar returns the top-level variable name from a vars file. found is
// false when the file has no such variable.
func ReadVar(data []byte, name string, password secret.Value) (v Var, found bool, err error) {
	if IsEncrypted(data) {
		pt, env, err := Decrypt(data, password)
		if err != nil {
			return Var{}, false, err
		}
		doc, err := parseDoc(pt.Bytes(), true)
		if err != nil {
			return Var{}, false, err
		}
		_, val := lookup(doc, name)
		if val == nil {
			return Var{}, false, nil
		}
		if val.Tag == VaultTag {
			inner, ienv, err := Decrypt([]byte(val.Value), password)
			if err != nil {
				return Var{}, true, fmt.Errorf("variable %s: %w", name, err)
			}
			return Var{Value: inner, Encrypted: true, Envelope: ienv}, true, nil
		}
		if val.Kind != yaml.ScalarNode {
			return Var{}, true, fmt.Errorf("variable %s is not a string", name)
		}
		return Var{Value: secret.New(val.Value), Encrypted: true, Envelope: env}, true, nil
	}
	doc, err := parseDoc(data, false)
	if err != nil {
		return Var{}, false, err
	}
	_, val := lookup(doc, name)
	if val == nil {
		return Var{}, false, nil
	}
	if val.Kind != yaml.ScalarNode {
		return Var{}, true, fmt.Errorf("variable %s is not a string", name)
	}
	if val.Tag != VaultTag {
		return Var{Value: secret.New(val.Value), Encrypted: false}, true, nil
	}
	inner, env, err := Decrypt([]byte(val.Value), password)
	if err != nil {
		return Var{}, true, fmt.Errorf("variable %s: %w", name, err)
	}
	return Var{Value: inner, Encrypted: true, Envelope: env}, true, nil
}

// SetOptions tune SetVar.
type SetOptions struct {
	// Label is the vault id to write (a 1.2 text); empty keeps the label the
	// file or value had (none for a new one).
	Label string
	// Inline chooses the style of a new (empty) file: a plain YAML file with
	// an inline !vault value rather than a whole encrypted file. An existing
	// file keeps its style.
	Inline bool
}

// SetVar returns data with the top-level variable name set to value,
// encrypted with password, keeping the file's style: a whole encrypted file
// is decrypted, changed and encrypted again; in a plain file only the
// variable's lines change. A plain value in a plain file becomes an inline
// vault value.
func SetVar(data []byte, name string, value, password secret.Value, opts SetOptions) ([]byte, error) {
	if !ValidVarName(name) {
		return nil, fmt.Errorf("set variable: %q is not a variable name", name)
	}
	if IsEncrypted(data) || len(bytes.TrimSpace(data)) == 0 && !opts.Inline {
		return setWhole(data, name, value, password, opts)
	}
	out, err := setInline(data, name, value, password, opts)
	if err != nil {
		return nil, err
	}
	// The edit is textual: prove it did what it meant to, and nothing else,
	// before anyone writes it.
	if err := checkInlineEdit(data, out, name, value, password); err != nil {
		return nil, fmt.Errorf("set variable %s: %w; edit the file by hand or encrypt it whole", name, err)
	}
	return out, nil
}

// checkInlineEdit verifies that out holds name encrypted to value and the
// same other top-level variables as before.
func checkInlineEdit(before, after []byte, name string, value, password secret.Value) error {
	v, found, err := ReadVar(after, name, password)
	if err != nil || !found || !v.Encrypted || !v.Value.Equal(value) {
		return errors.New("the file's layout could not be edited safely")
	}
	var a, b map[string]any
	if err := yaml.Unmarshal(before, &a); err != nil {
		return errors.New("the file's layout could not be edited safely")
	}
	if err := yaml.Unmarshal(after, &b); err != nil {
		return errors.New("the file's layout could not be edited safely")
	}
	delete(a, name)
	delete(b, name)
	if len(a) != len(b) || !reflect.DeepEqual(a, b) && !(len(a) == 0 && len(b) == 0) {
		return errors.New("the edit would have changed other variables")
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidVarName reports whether s is a variable name ansible accepts.
func ValidVarName(s string) bool { return nameRE.MatchString(s) }

func setWhole(data []byte, name string, value, password secret.Value, opts SetOptions) ([]byte, error) {
	label := opts.Label
	var doc *yaml.Node
	if IsEncrypted(data) {
		pt, env, err := Decrypt(data, password)
		if err != nil {
			return nil, err
		}
		if label == "" {
			label = env.Label
		}
		b := pt.Bytes()
		defer clear(b)
		if doc, err = parseDoc(b, true); err != nil {
			return nil, err
		}
	}
	if doc == nil || len(doc.Content) == 0 {
		doc = &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}}
	}
	_, val := lookup(doc, name)
	if val == nil {
		m := doc.Content[0]
		val = &yaml.Node{}
		m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name}, val)
	}
	*val = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value.Reveal(), Line: val.Line, Column: val.Column}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("set variable %s: encode yaml: %w", name, errors.New("encoder failed"))
	}
	_ = enc.Close()
	pt := secret.FromBytes(buf.Bytes())
	clear(buf.Bytes())
	return Encrypt(pt, password, label)
}

func setInline(data []byte, name string, value, password secret.Value, opts SetOptions) ([]byte, error) {
	doc, err := parseDoc(data, false)
	if err != nil {
		return nil, err
	}
	if doc != nil && len(doc.Content) > 0 && doc.Content[0].Kind != yaml.MappingNode {
		return nil, ErrNotMapping
	}
	if doc != nil && len(doc.Content) > 0 && doc.Content[0].Style&yaml.FlowStyle != 0 {
		return nil, fmt.Errorf("set variable %s: the vars file is a flow mapping; write it in block style", name)
	}
	key, val := lookup(doc, name)
	label := opts.Label
	if label == "" && val != nil && val.Tag == VaultTag {
		if env, _, err := ParseEnvelope([]byte(val.Value)); err == nil {
			label = env.Label
		}
	}
	vt, err := Encrypt(value, password, label)
	if err != nil {
		return nil, err
	}
	lines := splitLines(data)
	if key == nil {
		// Append at the end, at top level.
		var out bytes.Buffer
		out.Write(data)
		if len(data) > 0 && data[len(data)-1] != '\n' {
			out.WriteByte('\n')
		}
		// At the mapping's own indentation.
		indent := 0
		if doc != nil && len(doc.Content) > 0 && len(doc.Content[0].Content) > 0 {
			indent = doc.Content[0].Content[0].Column - 1
		}
		out.WriteString(strings.Repeat(" ", indent) + name + ": ")
		writeBlock(&out, vt, indent)
		return out.Bytes(), nil
	}
	if val.Line != key.Line && val.Line > 0 {
		// "key:\n  value": the value starts on its own line; put the new one
		// after the key instead.
		val = &yaml.Node{Line: key.Line, Column: key.Column + len(name) + 1}
	}
	indent := key.Column - 1
	start := val.Line - 1 // 0-based line of the value's start
	if start < 0 || start >= len(lines) {
		return nil, fmt.Errorf("set variable %s: cannot locate its value", name)
	}
	first := lines[start]
	col := val.Column - 1
	if col > len(first) {
		col = len(first)
	}
	// The value runs to the last line more indented than the key (or a
	// "- " item at the key's own indentation, which YAML allows for a
	// sequence value), and never past the next key.
	limit := len(lines)
	if next := nextKeyLine(doc, key); next > 0 && next-1 < limit {
		limit = next - 1
	}
	end := start + 1
	for i := start + 1; i < limit; i++ {
		l := strings.TrimRight(string(lines[i]), "\r\n")
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := leading(l)
		if n < indent || n == indent && !strings.HasPrefix(l[n:], "-") {
			break
		}
		end = i + 1
	}
	var out bytes.Buffer
	for _, l := range lines[:start] {
		out.Write(l)
	}
	prefix := first[:col]
	out.Write(bytes.TrimRight(prefix, " \t"))
	out.WriteByte(' ')
	writeBlock(&out, vt, indent)
	for _, l := range lines[end:] {
		out.Write(l)
	}
	return out.Bytes(), nil
}

// writeBlock writes "!vault |" and the vault text indented under a key at
// column indent.
func writeBlock(out *bytes.Buffer, vt []byte, indent int) {
	out.WriteString(VaultTag + " |\n")
	pad := strings.Repeat(" ", indent+2)
	for _, l := range strings.Split(strings.TrimRight(string(vt), "\n"), "\n") {
		out.WriteString(pad + l + "\n")
	}
}

func leading(s string) int {
	return len(s) - len(strings.TrimLeft(s, " \t"))
}

func splitLines(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			out = append(out, b)
			break
		}
		out = append(out, b[:i+1])
		b = b[i+1:]
	}
	return out
}

var lineRE = regexp.MustCompile(`line \d+`)

// parseDoc parses a vars file. Errors from the parser could quote content;
// for decrypted text only the line number is kept.
func parseDoc(b []byte, decrypted bool) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		if decrypted {
			where := lineRE.FindString(err.Error())
			if where == "" {
				where = "somewhere"
			}
			return nil, fmt.Errorf("decrypted vars file is not valid YAML (%s)", where)
		}
		return nil, fmt.Errorf("vars file is not valid YAML: %w", err)
	}
	if doc.Kind == 0 {
		return nil, nil
	}
	if len(doc.Content) > 0 && doc.Content[0].Kind != yaml.MappingNode {
		return nil, ErrNotMapping
	}
	return &doc, nil
}

// nextKeyLine returns the line of the key after key in the top-level
// mapping, or 0 when key is the last.
func nextKeyLine(doc *yaml.Node, key *yaml.Node) int {
	m := doc.Content[0]
	for i := 0; i+2 < len(m.Content); i += 2 {
		if m.Content[i] == key {
			return m.Content[i+2].Line
		}
	}
	return 0
}

func lookup(doc *yaml.Node, name string) (key, val *yaml.Node) {
	if doc == nil || len(doc.Content) == 0 {
		return nil, nil
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == name {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}
