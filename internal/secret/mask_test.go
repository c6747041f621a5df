package secret

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestMaskerOverlaps: every byte of every occurrence is covered, when
// secrets overlap, nest, repeat or sit side by side, with few secrets and
// with many (the indexed scan).
func TestMaskerOverlaps(t *testing.T) {
	for _, many := range []bool{false, true} {
		var m Masker
		m.Add(New("abcdefgh"), New("cdefghijklmn"), New("xxxxxx"), New("0123456789"), New("456789"))
		if many {
			for i := 0; i < indexAbove; i++ {
				m.Add(New(fmt.Sprintf("filler-secret-%03d", i)))
			}
		}
		for in, want := range map[string]string{
			"abcdefghijklmn!":        "[REDACTED]!",
			"-cdefghijklmn abcdefgh": "-[REDACTED] [REDACTED]",
			"xxxxxxxxx.":             "[REDACTED].",
			"0123456789456789":       "[REDACTED][REDACTED]",
			"a456789b":               "a[REDACTED]b",
			"nothing here":           "nothing here",
			"abcdefg":                "abcdefg",
		} {
			if got := m.MaskString(in); got != want {
				t.Errorf("many %v: %q masked to %q, want %q", many, in, got, want)
			}
		}
	}
}

// TestMaskerPathsAgree: the search for each secret and the indexed scan
// give the same text, and no secret survives either.
func TestMaskerPathsAgree(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const alphabet = "sk-abAB01_"
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		return string(b)
	}
	for round := 0; round < 200; round++ {
		var m Masker
		var secrets []string
		for i := 0; i < 1+r.IntN(60); i++ {
			s := word(minSecret + r.IntN(8))
			secrets = append(secrets, s)
			m.Add(New(s))
		}
		var text strings.Builder
		for i := 0; i < 40; i++ {
			if r.IntN(3) == 0 {
				text.WriteString(secrets[r.IntN(len(secrets))])
			} else {
				text.WriteString(word(r.IntN(6)))
			}
		}
		b := []byte(text.String())
		a, c := redact(b, m.searchEach(b)), redact(b, m.scanIndexed(b))
		if !bytes.Equal(a, c) {
			t.Fatalf("round %d: search %q, scan %q (text %q)", round, a, c, b)
		}
		for _, s := range m.values {
			if bytes.Contains(a, s) {
				t.Fatalf("round %d: %q survives in %q", round, s, a)
			}
		}
	}
}

// BenchmarkMaskManySecrets masks a 1 MiB text holding some of 10,000
// secrets, as after a re-issue of 10,000 virtual keys.
func BenchmarkMaskManySecrets(b *testing.B) {
	var m Masker
	var text bytes.Buffer
	for i := 0; i < 10000; i++ {
		s := fmt.Sprintf("sk-%040x", rand.Uint64())
		m.Add(New(s))
		if i%10 == 0 {
			fmt.Fprintf(&text, "key %d: %s\n", i, s)
		}
	}
	for text.Len() < 1<<20 {
		text.WriteString("sk-not-a-secret, just text about keys and their owners\n")
	}
	in := text.Bytes()
	b.SetBytes(int64(len(in)))
	b.ResetTimer()
	for b.Loop() {
		m.Mask(in)
	}
}
