package secret

import (
	"bytes"
	"io"
	"slices"
	"sort"
	"sync"
)

// Masker replaces every known secret in text with the redaction marker. It is
// safe for concurrent use; secrets are added as they become known in a run.
//
// Every occurrence of every secret is covered, overlapping ones included:
// each run of covered bytes becomes one marker. With few secrets each is
// searched for in turn; with many (a re-issue adds one per virtual key)
// the text is scanned once, looking up each position's first minSecret
// bytes in an index of the secrets, so masking costs about the same for
// ten thousand secrets as for a hundred.
type Masker struct {
	mu     sync.RWMutex
	values [][]byte
	known  map[string]bool
	// byPrefix holds the secrets by their first minSecret bytes, longest
	// first within each entry.
	byPrefix map[[minSecret]byte][][]byte
}

// minSecret is the length of the shortest secret masked.
const minSecret = 6

// indexAbove is the number of secrets above which Mask scans the text once
// with the prefix index instead of searching for each secret.
const indexAbove = 32

// Add registers values to be masked. Values shorter than 6 bytes are ignored:
// masking them would blank out ordinary words.
func (m *Masker) Add(vs ...Value) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.known == nil {
		m.known = map[string]bool{}
		m.byPrefix = map[[minSecret]byte][][]byte{}
	}
	for _, v := range vs {
		b := v.Bytes()
		if len(b) < minSecret || m.known[string(b)] {
			continue
		}
		m.known[string(b)] = true
		m.values = append(m.values, b)
		// Longest first: insert before the first shorter secret.
		k := [minSecret]byte(b[:minSecret])
		bucket := m.byPrefix[k]
		i := sort.Search(len(bucket), func(i int) bool { return len(bucket[i]) < len(b) })
		m.byPrefix[k] = slices.Insert(bucket, i, b)
	}
}

// span is a half-open range of bytes covered by a secret.
type span struct{ from, to int }

// Mask returns b with every known secret replaced; b itself when it holds
// none.
func (m *Masker) Mask(b []byte) []byte {
	if m == nil {
		return b
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if len(m.values) == 0 || len(b) < minSecret {
		return b
	}
	var spans []span
	if len(m.values) > indexAbove {
		spans = m.scanIndexed(b)
	} else {
		spans = m.searchEach(b)
	}
	return redact(b, spans)
}

// searchEach finds every occurrence of each secret, one secret at a time.
func (m *Masker) searchEach(b []byte) []span {
	var spans []span
	for _, v := range m.values {
		for off := 0; ; {
			i := bytes.Index(b[off:], v)
			if i < 0 {
				break
			}
			spans = append(spans, span{off + i, off + i + len(v)})
			off += i + 1
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].from < spans[j].from })
	return spans
}

// scanIndexed finds, at each position of b, the longest secret that
// starts there, in one pass over b.
func (m *Masker) scanIndexed(b []byte) []span {
	var spans []span
	for i := 0; i+minSecret <= len(b); i++ {
		for _, v := range m.byPrefix[[minSecret]byte(b[i:i+minSecret])] {
			if bytes.HasPrefix(b[i:], v) {
				spans = append(spans, span{i, i + len(v)})
				break
			}
		}
	}
	return spans
}

// redact replaces each run of bytes covered by spans (sorted by start)
// with one marker.
func redact(b []byte, spans []span) []byte {
	if len(spans) == 0 {
		return b
	}
	out := make([]byte, 0, len(b))
	last := 0
	for i := 0; i < len(spans); {
		from, to := spans[i].from, spans[i].to
		for i++; i < len(spans) && spans[i].from < to; i++ {
			to = max(to, spans[i].to)
		}
		out = append(out, b[last:from]...)
		out = append(out, Redacted...)
		last = to
	}
	return append(out, b[last:]...)
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
