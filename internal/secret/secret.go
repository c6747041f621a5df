// Package secret holds the Value type that carries key material through the
// runner. Every printed or encoded form of a Value is a redaction marker; the
// plain bytes are reached only through Reveal, at the edge that needs them
// (a Vault write, a database parameter, the standard input of a command).
package secret

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
)

// Redacted is what every printed or encoded form of a Value shows.
const Redacted = "[REDACTED]"

// Value is a secret. The zero Value is empty. It holds its bytes behind a
// pointer so that fmt cannot reach them by reflection.
type Value struct {
	p *[]byte
}

// New makes a Value from s.
func New(s string) Value {
	b := []byte(s)
	return Value{p: &b}
}

// FromBytes makes a Value from a copy of b.
func FromBytes(b []byte) Value {
	c := append([]byte(nil), b...)
	return Value{p: &c}
}

// Reveal returns the plain value. Call it only where the value leaves the
// runner for a place that must hold it.
func (v Value) Reveal() string {
	if v.p == nil {
		return ""
	}
	return string(*v.p)
}

// Bytes returns a copy of the plain value.
func (v Value) Bytes() []byte {
	if v.p == nil {
		return nil
	}
	return append([]byte(nil), *v.p...)
}

// IsZero reports whether the value is empty.
func (v Value) IsZero() bool { return v.p == nil || len(*v.p) == 0 }

// Equal reports whether two values hold the same bytes.
func (v Value) Equal(o Value) bool { return v.Reveal() == o.Reveal() }

// Fingerprint is a short, stable identifier of the value that does not reveal
// it: "sha256:" and the first 16 hex digits of its SHA-256. For a LiteLLM key
// this is the prefix of the token hash stored in the database, so responders
// can correlate it with rows and spend logs.
func (v Value) Fingerprint() string {
	if v.IsZero() {
		return ""
	}
	return Fingerprint(v.Reveal())
}

// Fingerprint of a plain string; see Value.Fingerprint.
func Fingerprint(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])[:16]
}

func (v Value) String() string   { return Redacted }
func (v Value) GoString() string { return "secret.Value(" + Redacted + ")" }

// Format makes every verb, %v %+v %#v %s %q %x included, print the marker.
func (v Value) Format(f fmt.State, verb rune) {
	switch verb {
	case 'q':
		fmt.Fprintf(f, "%q", Redacted)
	case 'v':
		if f.Flag('#') {
			_, _ = f.Write([]byte(v.GoString()))
			return
		}
		_, _ = f.Write([]byte(Redacted))
	default:
		_, _ = f.Write([]byte(Redacted))
	}
}

func (v Value) LogValue() slog.Value         { return slog.StringValue(Redacted) }
func (v Value) MarshalJSON() ([]byte, error) { return []byte(`"` + Redacted + `"`), nil }
func (v Value) MarshalText() ([]byte, error) { return []byte(Redacted), nil }

// MarshalYAML keeps YAML encoders from printing the value.
func (v Value) MarshalYAML() (any, error) { return Redacted, nil }

var (
	_ fmt.Formatter  = Value{}
	_ fmt.GoStringer = Value{}
	_ slog.LogValuer = Value{}
)
