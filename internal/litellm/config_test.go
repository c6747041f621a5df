package litellm

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/secret"
)

func TestEnvFileSetKeepsEveryOtherByte(t *testing.T) {
	src := "# LiteLLM proxy environment\n" +
		"LITELLM_MASTER_KEY=sk-old-master-key-0123456789\n" +
		"  export DATABASE_URL=\"postgres://u:p@db/litellm\"\n" +
		"; a comment\n" +
		"\n" +
		"not a line we know\n" +
		"STORE_MODEL_IN_DB=True\n"
	f, err := ParseEnvFile([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Lookup(EnvMasterKey); !ok || v.Reveal() != "sk-old-master-key-0123456789" {
		t.Fatalf("master key: %q %v", v.Reveal(), ok)
	}
	if v, _ := f.Lookup(EnvDatabaseURL); v.Reveal() != "postgres://u:p@db/litellm" {
		t.Fatalf("database url: %q", v.Reveal())
	}
	if got := f.Render().Reveal(); got != src {
		t.Fatalf("render without change differs:\n%s", got)
	}
	g := f.Clone()
	if err := g.Set(EnvMasterKey, secret.New("sk-new")); err != nil {
		t.Fatal(err)
	}
	if err := g.Set(EnvSaltKey, secret.New("sk-old-master-key-0123456789")); err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(src, "sk-old-master-key-0123456789", "sk-new", 1) + "LITELLM_SALT_KEY=sk-old-master-key-0123456789\n"
	if got := g.Render().Reveal(); got != want {
		t.Fatalf("render:\n%s\nwant:\n%s", got, want)
	}
	if f.Render().Reveal() != src {
		t.Fatal("Set on a clone changed the original")
	}
	if got := strings.Join(g.Names(), ","); got != "LITELLM_MASTER_KEY,DATABASE_URL,STORE_MODEL_IN_DB,LITELLM_SALT_KEY" {
		t.Fatalf("names: %s", got)
	}
}

func TestEnvFileQuotingAndLastWins(t *testing.T) {
	f, err := ParseEnvFile([]byte("A=1\nexport A='two'\nB=\"x \\\"y\\\" \\$z\"\nC=no-newline"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Lookup("A"); v.Reveal() != "two" {
		t.Fatalf("A = %q", v.Reveal())
	}
	if v, _ := f.Lookup("B"); v.Reveal() != `x "y" $z` {
		t.Fatalf("B = %q", v.Reveal())
	}
	if err := f.Set("A", secret.New(`with space and "quote"`)); err != nil {
		t.Fatal(err)
	}
	if err := f.Set("C", secret.New("c")); err != nil {
		t.Fatal(err)
	}
	want := "A=\"with space and \\\"quote\\\"\"\nexport A=\"with space and \\\"quote\\\"\"\nB=\"x \\\"y\\\" \\$z\"\nC=c"
	if got := f.Render().Reveal(); got != want {
		t.Fatalf("render:\n%q\nwant:\n%q", got, want)
	}
	g, err := ParseEnvFile(f.Render().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := g.Lookup("A"); v.Reveal() != `with space and "quote"` {
		t.Fatalf("round trip: %q", v.Reveal())
	}
	for _, bad := range []string{"a\nb", "a\rb", "a\x00b"} {
		if f.Set("A", secret.New(bad)) == nil {
			t.Errorf("value %q accepted", bad)
		}
	}
	if f.Set("1A", secret.New("x")) == nil || f.Set("A-B", secret.New("x")) == nil {
		t.Error("bad names accepted")
	}
	if _, err := ParseEnvFile([]byte("A=\x00")); err == nil {
		t.Error("NUL accepted")
	}
}

func TestEnvFileCRLF(t *testing.T) {
	f, err := ParseEnvFile([]byte("A=1\r\nLITELLM_MASTER_KEY=sk-old\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := f.Lookup(EnvMasterKey); v.Reveal() != "sk-old" {
		t.Fatalf("%q", v.Reveal())
	}
	if err := f.Set(EnvMasterKey, secret.New("sk-new")); err != nil {
		t.Fatal(err)
	}
	if got := f.Render().Reveal(); got != "A=1\r\nLITELLM_MASTER_KEY=sk-new\r\n" {
		t.Fatalf("%q", got)
	}
}

func TestEnvFileEmpty(t *testing.T) {
	f, err := ParseEnvFile(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Set(EnvMasterKey, secret.New("sk-x")); err != nil {
		t.Fatal(err)
	}
	if got := f.Render().Reveal(); got != "LITELLM_MASTER_KEY=sk-x\n" {
		t.Fatalf("%q", got)
	}
}

func TestEnvFileNeverPrints(t *testing.T) {
	const key = "sk-never-printed-0123456789"
	f, _ := ParseEnvFile([]byte("LITELLM_MASTER_KEY=" + key + "\n"))
	js, _ := json.Marshal(struct{ F *EnvFile }{f})
	for _, s := range []string{
		fmt.Sprint(f), fmt.Sprintf("%v %+v %#v %s %q %x", f, f, f, f, f, f),
		fmt.Sprint(*f), fmt.Sprintf("%+v %#v", *f, *f), fmt.Sprintf("%+v", struct{ F EnvFile }{*f}), string(js),
	} {
		if strings.Contains(s, key) || strings.Contains(s, "never-printed") {
			t.Fatalf("printed: %s", s)
		}
	}
}

func FuzzEnvFile(f *testing.F) {
	f.Add([]byte("A=1\n# c\nexport B='x'\n"), "sk-new")
	f.Add([]byte("LITELLM_MASTER_KEY=\"a b\""), "v w")
	f.Fuzz(func(t *testing.T, b []byte, v string) {
		e, err := ParseEnvFile(b)
		if err != nil {
			return
		}
		if e.Render().Reveal() != string(b) {
			t.Fatalf("render of an unchanged file differs")
		}
		if e.Set(EnvMasterKey, secret.New(v)) != nil {
			return
		}
		g, err := ParseEnvFile(e.Render().Bytes())
		if err != nil {
			t.Fatal(err)
		}
		got, ok := g.Lookup(EnvMasterKey)
		if !ok || got.Reveal() != strings.Trim(v, " \t") && got.Reveal() != v {
			t.Fatalf("set %q, read back %q", v, got.Reveal())
		}
	})
}
