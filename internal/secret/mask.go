package secret

import (
	"bytes"
	"io"
	"sort"
	"sync"
)

// Masker replaces every known secret in text with the redaction marker. It is
// safe for concurrent use; secrets are added as they become known in a run.
type Masker struct {
	mu     sync.RWMutex
	values [][]byte
	known  map[string]bool
}

// Add registers values to be masked. Values shorter than 6 bytes are ignored:
// masking them would blank out ordinary words.
func (m *Masker) Add(vs ...Value) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.known == nil {
		m.known = map[string]bool{}
	}
	added := false
	for _, v := range vs {
		b := v.Bytes()
		if len(b) < 6 || m.known[string(b)] {
			continue
		}
		m.known[string(b)] = true
		m.values = append(m.values, b)
		added = true
	}
	if added {
		// Longest first, so a secret that contains another is masked whole.
		sort.Slice(m.values, func(i, j int) bool { return len(m.values[i]) > len(m.values[j]) })
	}
}

// Mask returns b with every known secret replaced.
func (m *Masker) Mask(b []byte) []byte {
	if m == nil {
		return b
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for _, v := range m.values {
		if bytes.Contains(b, v) {
			b = bytes.ReplaceAll(b, v, []byte(Redacted))
		}
	}
	return b
}

// MaskString is Mask for strings.
func (m *Masker) MaskString(s string) string { return string(m.Mask([]byte(s))) }

// Writer returns a writer that masks what is written through it. It masks
// per Write call, so callers must write whole lines (as the CLI's printer does).
func (m *Masker) Writer(w io.Writer) io.Writer { return &maskWriter{m: m, w: w} }

type maskWriter struct {
	m *Masker
	w io.Writer
}

func (mw *maskWriter) Write(p []byte) (int, error) {
	if _, err := mw.w.Write(mw.m.Mask(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
