package litellm

import (
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
)

func TestHashTokenAndKeyNameVectors(t *testing.T) {
	v := loadVectors(t)
	for _, c := range v.HashToken {
		if got := HashToken(c.Key); got != c.SHA256Hex {
			t.Errorf("HashToken(%s) = %s, want %s", KeyName(c.Key), got, c.SHA256Hex)
		}
		if got := KeyName(c.Key); got != c.KeyName {
			t.Errorf("KeyName = %q, want %q", got, c.KeyName)
		}
		if !IsHashedToken(HashToken(c.Key)) || IsHashedToken(c.Key) {
			t.Errorf("IsHashedToken wrong for %s", KeyName(c.Key))
		}
	}
}

func TestNewVirtualKey(t *testing.T) {
	re := regexp.MustCompile(`^sk-[A-Za-z0-9_-]{22}$`)
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		k, err := NewVirtualKey()
		if err != nil {
			t.Fatal(err)
		}
		s := k.Reveal()
		if !re.MatchString(s) {
			t.Fatalf("virtual key has the wrong form (len %d)", len(s))
		}
		if b, err := base64.RawURLEncoding.DecodeString(s[3:]); err != nil || len(b) != 16 {
			t.Fatalf("virtual key body: %d bytes, %v", len(b), err)
		}
		if seen[s] {
			t.Fatal("duplicate key")
		}
		seen[s] = true
		if !ValidCustomKey(s) {
			t.Fatal("generated key not valid")
		}
	}
}

func TestNewMasterKey(t *testing.T) {
	re := regexp.MustCompile(`^sk-[0-9a-f]{64}$`)
	k, err := NewMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	if !re.MatchString(k.Reveal()) {
		t.Fatalf("master key has the wrong form (len %d)", len(k.Reveal()))
	}
	if strings.Contains(k.String(), "sk-") {
		t.Fatal("master key printed")
	}
}
