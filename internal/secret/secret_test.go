package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

const plain = "sk-0123456789abcdef0123456789abcdef"

type holder struct {
	Name string
	Key  Value
	Ptr  *Value
	Any  any
}

func TestEveryPrintedFormIsRedacted(t *testing.T) {
	v := New(plain)
	h := holder{Name: "gw1", Key: v, Ptr: &v, Any: v}
	forms := map[string]string{}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		forms["Value "+verb] = fmt.Sprintf(verb, v)
		forms["struct "+verb] = fmt.Sprintf(verb, h)
		forms["ptr "+verb] = fmt.Sprintf(verb, &h)
	}
	forms["Println"] = fmt.Sprintln(v, h)
	js, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	forms["json"] = string(js)
	var buf bytes.Buffer
	lg := slog.New(slog.NewJSONHandler(&buf, nil))
	lg.Info("msg", "key", v, "holder", h)
	lg2 := slog.New(slog.NewTextHandler(&buf, nil))
	lg2.Info("msg", "key", v, slog.Any("holder", h))
	forms["slog"] = buf.String()
	for name, s := range forms {
		if strings.Contains(s, plain) || strings.Contains(s, "0123456789abcdef") {
			t.Errorf("%s leaks the secret: %s", name, s)
		}
		if !strings.Contains(s, Redacted) {
			t.Errorf("%s shows no redaction marker: %s", name, s)
		}
	}
	if v.Reveal() != plain {
		t.Fatalf("Reveal = %q", v.Reveal())
	}
}

func TestFingerprintIsStableAndShort(t *testing.T) {
	a := New(plain).Fingerprint()
	if a != Fingerprint(plain) || !strings.HasPrefix(a, "sha256:") || len(a) != len("sha256:")+16 {
		t.Fatalf("fingerprint %q", a)
	}
	if New("").Fingerprint() != "" {
		t.Fatal("empty value has a fingerprint")
	}
}

func TestMaskerMasksKnownValues(t *testing.T) {
	var m Masker
	m.Add(New(plain), New("abc"), New(plain+"-longer"))
	out := m.MaskString("a " + plain + " b " + plain + "-longer abc")
	if strings.Contains(out, plain) {
		t.Fatalf("masked output leaks: %s", out)
	}
	if !strings.Contains(out, "abc") {
		t.Fatalf("short value masked: %s", out)
	}
	var buf bytes.Buffer
	fmt.Fprintf(m.Writer(&buf), "line %s\n", plain)
	if strings.Contains(buf.String(), plain) {
		t.Fatalf("writer leaks: %s", buf.String())
	}
}
