package litellm

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/internal/secret"
)

// KeyPrefix starts every LiteLLM key, master and virtual alike.
const KeyPrefix = "sk-"

// NewVirtualKey makes a virtual key the way LiteLLM's /key/generate does:
// "sk-" and 16 random bytes in unpadded URL-safe base64 (22 characters).
func NewVirtualKey() (secret.Value, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return secret.Value{}, fmt.Errorf("generate virtual key: %w", err)
	}
	return secret.New(KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])), nil
}

// NewMasterKey makes a master key: "sk-" and 32 random bytes in lowercase hex
// (64 characters).
func NewMasterKey() (secret.Value, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return secret.Value{}, fmt.Errorf("generate master key: %w", err)
	}
	return secret.New(KeyPrefix + hex.EncodeToString(b[:])), nil
}

// HashToken is the value LiteLLM stores in "LiteLLM_VerificationToken".token
// and "LiteLLM_SpendLogs".api_key for a key: the lowercase hex SHA-256 of the
// whole key string, prefix included, without salt.
func HashToken(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// IsHashedToken reports whether s looks like HashToken's output rather than
// a raw key. LiteLLM accepts either in several places (for example
// /key/delete), and tells them apart the same way.
func IsHashedToken(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// KeyName is the display form LiteLLM stores in key_name: "sk-..." and the
// key's last four characters. It reveals no more than those four.
func KeyName(key string) string {
	last := key
	if len(last) > 4 {
		last = last[len(last)-4:]
	}
	return KeyPrefix + "..." + last
}

// ValidCustomKey reports whether a caller-chosen key is acceptable to
// LiteLLM: it must start with "sk-".
func ValidCustomKey(key string) bool {
	return strings.HasPrefix(key, KeyPrefix) && len(key) > len(KeyPrefix)
}
