package strictyaml

import (
	"errors"
	"strings"
	"testing"
)

func TestLooksSecret(t *testing.T) {
	for _, s := range []string{
		"sk-1234567890abcdefXYZ",
		"Bearer sk-Ab3dEf6hIj9kLm2nOp5q",
		"hvs.CAESIJ7xG0lq3XkWb9n2Fh5yZc1d",
		"s.Abcdefghij0123456789ABCD",
		"-----BEGIN OPENSSH PRIVATE KEY-----",
		"-----BEGIN RSA PRIVATE KEY-----",
		"-----BEGIN PRIVATE KEY-----",
		"AKIAIOSFODNN7EXAMPLE",
		"postgres://litellm:hunter2@db:5432/litellm",
		"postgresql://:pw@db/x",
		"redis://default:pw@cache:6379",
		"host=db user=litellm password=hunter2",
		"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
		"c2VjcmV0LXZhbHVlLXRoYXQtaXMtbG9uZy1lbm91Z2gK9Z",
	} {
		if _, ok := LooksSecret(s); !ok {
			t.Errorf("%q not flagged", s)
		}
		if m := MaskSecrets(s); m == s || !strings.Contains(m, Redacted) {
			t.Errorf("%q not masked: %q", s, m)
		}
	}
	for _, s := range []string{
		"",
		"litellm",
		"disk-usage-monitoring-daily-report",
		"task-runner-with-a-very-long-name",
		"s.example.com",
		"postgres://db:5432/litellm",
		"ssh://git@github.com:22/x",
		"http://127.0.0.1:8200",
		"/usr/local/share/ca-certificates/Company_Root_CA2024.crt",
		"550e8400-e29b-41d4-a716-446655440000",
		"ghcr.io/berriai/litellm@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		"${{ steps.newkey.outputs.fingerprint }}",
		"test -f /etc/litellm/rotated-${{ steps.newkey.outputs.version }}",
		"The LiteLLM master key leaked: cut the gateways off and mint a new one",
		"abcdefghijklmnopqrstuvwxyzabcdefghijkl",
		"00000000000000000000000000000000000000",
		"passwordless",
		"password_file=/etc/x",
	} {
		if what, ok := LooksSecret(s); ok {
			t.Errorf("%q flagged as %s", s, what)
		}
	}
}

func TestQuote(t *testing.T) {
	if got := Quote("sk-1234567890abcdefXYZ"); got != Redacted {
		t.Errorf("secret quoted as %s", got)
	}
	if got := Quote(strings.Repeat("ab ", 40)); !strings.HasSuffix(got, `"...`) || len(got) > 80 {
		t.Errorf("long value quoted as %s", got)
	}
	if got := Quote("a\x1bb"); got != `"a\x1bb"` {
		t.Errorf("control quoted as %s", got)
	}
}

func TestErrorRendering(t *testing.T) {
	src := NewSource("f.yaml", []byte("a: 1\n\tb: x\r\nc: "+strings.Repeat("y", 300)+"Z\n"))
	e := src.ErrorAt(2, 2, "b", "bad")
	want := "f.yaml:2:2: b: bad\n  2 | \tb: x\n    | \t^"
	if e.Error() != want {
		t.Errorf("got\n%q\nwant\n%q", e.Error(), want)
	}
	e = src.ErrorAt(3, 304, "c", "long")
	lines := strings.Split(e.Error(), "\n")
	if len(lines) != 3 || len([]rune(lines[1])) > snippetMax+20 {
		t.Fatalf("long line not cut: %q", e.Error())
	}
	caret := strings.Index(lines[2], "^") - strings.Index(lines[2], "| ")
	if lines[1][strings.Index(lines[1], "| ")+caret] != 'Z' {
		t.Errorf("caret not under Z:\n%s", e.Error())
	}
	e = src.ErrorAt(9, 1, "", "past the end")
	if e.Error() != "f.yaml:9:1: past the end" {
		t.Errorf("got %q", e.Error())
	}
}

func TestErrorsSortedAndCapped(t *testing.T) {
	src := NewSource("f.yaml", []byte("a\nb\nc\n"))
	var l Errors
	for i := 0; i < MaxErrors+10; i++ {
		l = append(l, src.ErrorAt(3-i%3, 1, "", "e"+string(rune('a'+i%26))))
	}
	l = append(l, l[0]) // duplicate
	s := l.Sorted()
	if len(s) != MaxErrors || !strings.HasPrefix(s[len(s)-1].Msg, "too many errors") {
		t.Fatalf("cap: %d %q", len(s), s[len(s)-1].Msg)
	}
	for i := 1; i < len(s)-1; i++ {
		if s[i].Line < s[i-1].Line {
			t.Fatal("not sorted")
		}
	}
	var e *Error
	if !errors.As(error(s), &e) || e.Line != 1 {
		t.Errorf("errors.As: %+v", e)
	}
	if Errors(nil).Err() != nil {
		t.Error("empty list is an error")
	}
}

func TestSnippetMasksSecrets(t *testing.T) {
	src := NewSource("f.yaml", []byte("bogus: sk-1234567890abcdefXYZ\n"))
	e := src.ErrorAt(1, 1, "", "unknown key")
	if strings.Contains(e.Error(), "sk-1234") || !strings.Contains(e.Error(), Redacted) {
		t.Errorf("secret in snippet: %s", e)
	}
	e = src.ErrorAt(1, 1, "x.sk-1234567890abcdefXYZ", "value sk-1234567890abcdefXYZ")
	if strings.Contains(e.Error(), "sk-1234") {
		t.Errorf("secret in field or message: %s", e)
	}
}

func TestParseLimits(t *testing.T) {
	for name, c := range map[string]struct {
		data string
		want string
	}{
		"size":          {strings.Repeat("#", MaxSize+1), "1:1: file is larger than"},
		"nul":           {"a: b\x00", "1:5: NUL byte"},
		"bad utf8":      {"a: \xff", "1:4: invalid UTF-8"},
		"bom ok":        {"\xef\xbb\xbfa: [", "invalid YAML"},
		"zero wd":       {"a: b\u200bc", "1:5: invisible character U+200B"},
		"empty":         {"# nothing\n", "1:1: file is empty"},
		"two docs":      {"a: 1\n---\nb: 2\n", "2:1: more than one YAML document"},
		"dup":           {"a: 1\nb: 2\na: 3\n", `3:1: duplicate key "a" (first at line 1)`},
		"key list":      {"? [a]\n: 1\n", "1:3: a mapping key must be a plain string"},
		"deep":          {"a: " + strings.Repeat("[", MaxDepth+5) + strings.Repeat("]", MaxDepth+5), "nesting deeper than 32 levels"},
		"tab":           {"a:\n\t- b\n", "2:1: tab character in indentation"},
		"anchor":        {"a: &x 1\nb: *x\n", "1:4: anchors (&x) are not allowed"},
		"tag":           {"a: !!set {b}\n", `1:4: YAML tag "!!set" is not allowed`},
		"unknown alias": {"a: 1\nb: *x\n", "2:4: aliases (*x) are not allowed"},
	} {
		_, _, err := Parse("f.yaml", []byte(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", name, err, c.want)
		}
	}
	n, _, err := Parse("f.yaml", []byte("\xef\xbb\xbfa: [1, {b: c}]\n"))
	if err != nil || n.Line != 1 || n.Column != 1 {
		t.Errorf("BOM: %v %+v", err, n)
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"id", "name", "kind", "phase", "on", "with", "retry", "timeout"}
	for in, want := range map[string]string{"knd": "kind", "timout": "timeout", "retries": "", "xyz": "", "wiht": "with", "i": "id"} {
		if got := Suggest(in, keys); got != want {
			t.Errorf("%s: %q, want %q", in, got, want)
		}
	}
}
