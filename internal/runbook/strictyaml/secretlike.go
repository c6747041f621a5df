package strictyaml

import (
	"math"
	"regexp"
	"strconv"
	"strings"
)

// A detector finds one kind of key material in text.
type detector struct {
	what string
	// cue is a substring every match holds (lower case when fold is
	// set): a cheap test that skips the regular expression on most text.
	cue  string
	fold bool
	re   *regexp.Regexp
}

var detectors = []detector{
	{what: "a private key", cue: "-----BEGIN ", re: regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----`)},
	{what: "a LiteLLM or OpenAI-style API key", cue: "sk-", re: regexp.MustCompile(`(?:^|[^A-Za-z0-9_-])(sk-[A-Za-z0-9_-]{16,})`)},
	{what: "a Vault token", cue: "hv", re: regexp.MustCompile(`(?:^|[^A-Za-z0-9_.-])(hv[sbr]\.[A-Za-z0-9_-]{20,})`)},
	{what: "a Vault token", cue: "s.", re: regexp.MustCompile(`(?:^|[^A-Za-z0-9_.-])(s\.[A-Za-z0-9]{24})(?:$|[^A-Za-z0-9_.-])`)},
	{what: "an AWS access key id", cue: "A", re: regexp.MustCompile(`(?:^|[^A-Za-z0-9])((?:AKIA|ASIA)[0-9A-Z]{16})(?:$|[^A-Za-z0-9])`)},
	{what: "a URL with a password", cue: "://", re: regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@`)},
	{what: "a connection string with a password", cue: "password", fold: true, re: regexp.MustCompile(`(?i)(?:^|[\s;])password\s*=\s*([^\s;'"]+)`)},
}

// isTokenChar reports whether c may be part of a base64 or hex key.
func isTokenChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
		c == '+' || c == '/' || c == '=' || c == '_' || c == '-'
}

// randomSpans finds runs of 32 or more key characters that look random.
func randomSpans(s string) [][2]int {
	var out [][2]int
	for i := 0; i < len(s); {
		if !isTokenChar(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && isTokenChar(s[j]) {
			j++
		}
		if j-i >= 32 && !notRandom(s, []int{i, j}) {
			out = append(out, [2]int{i, j})
		}
		i = j
	}
	return out
}

// notRandom vetoes long strings that are not key-like: digest pins
// ("sha256:..."), words, paths and UUID-like strings of low entropy.
func notRandom(s string, loc []int) bool {
	tok := s[loc[0]:loc[1]]
	// A path ("/tmp/TestSomething1234567890/001/h1.log") is not a key, even
	// when its parts are long and mixed: it is absolute, follows a slash, or
	// has a part that is a plain word or number ("tmp", "DIR", "001"), which
	// the parts of a base64 key between its slashes almost never are.
	if strings.HasPrefix(tok, "/") || loc[0] > 0 && s[loc[0]-1] == '/' {
		return true
	}
	if strings.Contains(tok, "/") {
		for _, part := range strings.Split(tok, "/") {
			if plainPart(part) {
				return true
			}
		}
	}
	before := strings.ToLower(s[:loc[0]])
	for _, p := range []string{"sha1:", "sha256:", "sha384:", "sha512:"} {
		if strings.HasSuffix(before, p) {
			return true
		}
	}
	if isHex(tok) {
		return !(hasDigit(tok) && hasLetter(tok) && entropy(tok) >= 3.0)
	}
	var upper, lower, digit bool
	for _, r := range tok {
		switch {
		case r >= 'A' && r <= 'Z':
			upper = true
		case r >= 'a' && r <= 'z':
			lower = true
		case r >= '0' && r <= '9':
			digit = true
		}
	}
	return !(upper && lower && digit && entropy(tok) >= 4.4)
}

// plainPart reports whether a path part is a plain word or number: all
// lowercase, all uppercase or all digits.
func plainPart(p string) bool {
	if p == "" {
		return false
	}
	return strings.Trim(p, "abcdefghijklmnopqrstuvwxyz") == "" ||
		strings.Trim(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == "" ||
		strings.Trim(p, "0123456789") == ""
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

func hasDigit(s string) bool { return strings.ContainsAny(s, "0123456789") }

func hasLetter(s string) bool {
	return strings.ContainsAny(strings.ToLower(s), "abcdefghijklmnopqrstuvwxyz")
}

// entropy is the Shannon entropy of s in bits per character.
func entropy(s string) float64 {
	if s == "" {
		return 0
	}
	var counts [256]int
	for i := 0; i < len(s); i++ {
		counts[s[i]]++
	}
	var h float64
	n := float64(len(s))
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / n
			h -= p * math.Log2(p)
		}
	}
	return h
}

// secretSpans returns the byte ranges of s that look like key material and
// what each looks like.
func secretSpans(s string) (spans [][2]int, what []string) {
	lower := ""
	for _, d := range detectors {
		text := s
		if d.fold {
			if lower == "" {
				lower = strings.ToLower(s)
			}
			text = lower
		}
		if !strings.Contains(text, d.cue) {
			continue
		}
		for _, m := range d.re.FindAllStringSubmatchIndex(s, -1) {
			loc := []int{m[0], m[1]}
			if len(m) >= 4 && m[2] >= 0 {
				loc = []int{m[2], m[3]}
			}
			spans = append(spans, [2]int{loc[0], loc[1]})
			what = append(what, d.what)
		}
	}
	for _, sp := range randomSpans(s) {
		spans = append(spans, sp)
		what = append(what, "a long random string")
	}
	return spans, what
}

// LooksSecret reports whether s holds something that looks like key
// material, and what it looks like ("a Vault token"), never the value.
func LooksSecret(s string) (what string, ok bool) {
	_, whats := secretSpans(s)
	if len(whats) == 0 {
		return "", false
	}
	return whats[0], true
}

// MaskSecrets replaces every secret-looking part of s by the marker.
func MaskSecrets(s string) string {
	spans, _ := secretSpans(s)
	if len(spans) == 0 {
		return s
	}
	masked := make([]bool, len(s))
	for _, sp := range spans {
		for i := sp[0]; i < sp[1]; i++ {
			masked[i] = true
		}
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if masked[i] {
			b.WriteString(Redacted)
			for i < len(s) && masked[i] {
				i++
			}
			continue
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

// Quote quotes a value for an error message: secret-looking values become
// the marker, long values are cut.
func Quote(s string) string {
	if _, ok := LooksSecret(s); ok {
		return Redacted
	}
	const max = 64
	if r := []rune(s); len(r) > max {
		return strconv.Quote(string(r[:max])) + "..."
	}
	return strconv.Quote(s)
}
