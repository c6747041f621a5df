package litellm

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/secret"
)

// vectors are ciphertexts and hashes made by LiteLLM's own libraries
// (PyNaCl and pyca/cryptography) in each at-rest format.
type vectors struct {
	Keys          map[string]string `json:"keys"`
	EncryptCases  []vectorCase      `json:"encrypt_cases"`
	WrongKeyCases []vectorCase      `json:"wrong_key_cases"`
	HashToken     []struct {
		Key       string `json:"key"`
		SHA256Hex string `json:"sha256_hex"`
		KeyName   string `json:"key_name"`
	} `json:"hash_token"`
}

type vectorCase struct {
	KeyName    string `json:"key_name"`
	Format     string `json:"format"`
	Plaintext  string `json:"plaintext"`
	Ciphertext string `json:"ciphertext"`
	Expect     string `json:"expect"`
}

func loadVectors(t testing.TB) vectors {
	t.Helper()
	b, err := os.ReadFile("testdata/litellm-at-rest.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.EncryptCases) == 0 || len(v.WrongKeyCases) == 0 || len(v.HashToken) == 0 {
		t.Fatal("vectors file has empty sections")
	}
	return v
}

func (v vectors) key(t *testing.T, name string) secret.Value {
	t.Helper()
	k, ok := v.Keys[name]
	if !ok {
		t.Fatalf("vector key %q not in file", name)
	}
	return secret.New(k)
}

// sameFamily reports whether got is the format the vector names. A value
// written in standard base64 that happens to use no '+' or '/' cannot be
// told from URL-safe base64, and decrypts the same way.
func sameFamily(want, got Format, ciphertext string) bool {
	if want == got {
		return true
	}
	return want == FormatLegacyStd && got == FormatLegacy && !strings.ContainsAny(ciphertext, "+/")
}

func TestDecryptVectors(t *testing.T) {
	v := loadVectors(t)
	seen := map[Format]int{}
	for i, c := range v.EncryptCases {
		want, err := ParseFormat(c.Format)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		plain, got, err := Decrypt(v.key(t, c.KeyName), c.Ciphertext)
		if err != nil {
			t.Errorf("case %d (%s, %s): %v", i, c.KeyName, c.Format, err)
			continue
		}
		if !bytes.Equal(plain, []byte(c.Plaintext)) {
			t.Errorf("case %d (%s, %s): plaintext %q, want %q", i, c.KeyName, c.Format, plain, c.Plaintext)
		}
		if !sameFamily(want, got, c.Ciphertext) {
			t.Errorf("case %d: format %v, want %v", i, got, want)
		}
		if d := DetectFormat(c.Ciphertext); d != got {
			t.Errorf("case %d: DetectFormat %v, Decrypt reported %v", i, d, got)
		}
		seen[want]++
	}
	for _, f := range Formats {
		if seen[f] == 0 {
			t.Errorf("no vector for format %v", f)
		}
	}
}

// Every vector must fail under each key other than its own, not only under
// the cases the file lists.
func TestDecryptVectorsOtherKeysFail(t *testing.T) {
	v := loadVectors(t)
	for i, c := range v.EncryptCases {
		for name := range v.Keys {
			if name == c.KeyName {
				continue
			}
			_, _, err := Decrypt(v.key(t, name), c.Ciphertext)
			if !errors.Is(err, ErrDecrypt) {
				t.Errorf("case %d (%s, %s) under %s: err %v, want ErrDecrypt", i, c.KeyName, c.Format, name, err)
			}
		}
	}
}

func TestWrongKeyVectors(t *testing.T) {
	v := loadVectors(t)
	for i, c := range v.WrongKeyCases {
		if c.Expect != "decrypt fails" {
			t.Fatalf("case %d: unknown expectation %q", i, c.Expect)
		}
		plain, _, err := Decrypt(v.key(t, c.KeyName), c.Ciphertext)
		if err == nil {
			t.Errorf("case %d (%s, %s): decrypted to %d bytes, want failure", i, c.KeyName, c.Format, len(plain))
			continue
		}
		if !errors.Is(err, ErrDecrypt) {
			t.Errorf("case %d: err %v, want ErrDecrypt", i, err)
		}
		if strings.Contains(err.Error(), c.Ciphertext) || strings.Contains(err.Error(), v.Keys[c.KeyName]) {
			t.Errorf("case %d: error reveals its input: %v", i, err)
		}
	}
}

func TestEncryptRoundTrip(t *testing.T) {
	v := loadVectors(t)
	key := v.key(t, "salt")
	other := v.key(t, "new_master")
	for _, f := range Formats {
		for _, plain := range []string{"", "sk-proj-x", `{"api_key": "sk-ant-0002"}`, strings.Repeat("é", 300)} {
			ct, err := Encrypt(key, []byte(plain), f)
			if err != nil {
				t.Fatalf("%v: %v", f, err)
			}
			if got := DetectFormat(ct); !sameFamily(f, got, ct) {
				t.Errorf("%v: detected %v for %q", f, got, ct)
			}
			got, _, err := Decrypt(key, ct)
			if err != nil || string(got) != plain {
				t.Errorf("%v: round trip %q, %v", f, got, err)
			}
			if _, _, err := Decrypt(other, ct); !errors.Is(err, ErrDecrypt) {
				t.Errorf("%v: other key: %v", f, err)
			}
		}
	}
	// Two encryptions of one value differ (fresh nonces).
	a, _ := Encrypt(key, []byte("x"), FormatV3GCM)
	b, _ := Encrypt(key, []byte("x"), FormatV3GCM)
	if a == b {
		t.Error("two encryptions are equal")
	}
}

func TestReencrypt(t *testing.T) {
	v := loadVectors(t)
	oldKey, newKey := v.key(t, "old_master"), v.key(t, "new_master")
	for _, c := range v.EncryptCases {
		if c.KeyName != "old_master" {
			continue
		}
		out, err := Reencrypt(oldKey, newKey, c.Ciphertext, FormatV3GCM)
		if err != nil {
			t.Fatal(err)
		}
		plain, f, err := Decrypt(newKey, out)
		if err != nil || string(plain) != c.Plaintext || f != FormatV3GCM {
			t.Errorf("re-encrypted %s: %q %v %v", c.Format, plain, f, err)
		}
	}
}

func TestNotCiphertext(t *testing.T) {
	key := secret.New("sk-anything")
	for _, s := range []string{"", "gpt-4o", "openai/gpt-4o", "https://api.example.invalid/v1",
		"v3:gcm:", "v3:gcm:AAAA", "v2:gcm:!!!!", "AAAA", "v4:gcm:" + strings.Repeat("A", 80)} {
		if _, _, err := Decrypt(key, s); !errors.Is(err, ErrNotCiphertext) {
			t.Errorf("Decrypt(%q): %v, want ErrNotCiphertext", s, err)
		}
	}
	// Altering one character of a valid value makes it fail.
	ct, _ := Encrypt(key, []byte("hello"), FormatV3GCM)
	b := []byte(ct)
	b[len(b)-5] ^= 1
	if _, _, err := Decrypt(key, string(b)); err == nil {
		t.Error("altered value decrypted")
	}
}

func FuzzDecrypt(f *testing.F) {
	v := loadVectors(f)
	for _, c := range v.EncryptCases {
		f.Add(v.Keys[c.KeyName], c.Ciphertext)
	}
	f.Add("", "")
	f.Add("k", "v3:gcm:")
	f.Add("k", "v2:gcm:====")
	f.Add("k", strings.Repeat("A", 54))
	f.Fuzz(func(t *testing.T, key, value string) {
		plain, format, err := Decrypt(secret.New(key), value)
		if err != nil {
			if plain != nil {
				t.Fatal("plaintext returned with an error")
			}
			if strings.Contains(err.Error(), value) && value != "" && len(value) > 8 {
				t.Fatalf("error reveals the value: %v", err)
			}
			return
		}
		if format == FormatUnknown {
			t.Fatal("success with unknown format")
		}
		// What decrypts re-encrypts and decrypts to the same.
		ct, err := Encrypt(secret.New(key), plain, format)
		if err != nil {
			t.Fatal(err)
		}
		again, _, err := Decrypt(secret.New(key), ct)
		if err != nil || !bytes.Equal(again, plain) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
