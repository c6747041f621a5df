package litellm

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/hkdf"
	"golang.org/x/crypto/nacl/secretbox"

	"github.com/runbook-dev/runbook/internal/secret"
)

// Format is one of the ways LiteLLM stores an encrypted value.
type Format int

const (
	// FormatUnknown is a value that is not a ciphertext in any format.
	FormatUnknown Format = iota
	// FormatLegacy is NaCl secretbox (XSalsa20-Poly1305) keyed with the
	// SHA-256 of the key string: nonce(24) || box, URL-safe base64.
	FormatLegacy
	// FormatLegacyStd is FormatLegacy in standard base64, as older LiteLLM
	// releases wrote it. It decrypts the same way.
	FormatLegacyStd
	// FormatV2GCM is "v2:gcm:" and URL-safe base64 of nonce(12) ||
	// ciphertext || tag(16), AES-256-GCM keyed with the SHA-256 of the key
	// string.
	FormatV2GCM
	// FormatV3GCM is FormatV2GCM's layout with "v3:gcm:" and the key derived
	// by HKDF-SHA256 (no salt, info "litellm-at-rest-v3"). LiteLLM writes it
	// by default.
	FormatV3GCM
)

// Formats lists every format Encrypt can write.
var Formats = []Format{FormatLegacy, FormatLegacyStd, FormatV2GCM, FormatV3GCM}

const (
	v2Prefix = "v2:gcm:"
	v3Prefix = "v3:gcm:"
	hkdfInfo = "litellm-at-rest-v3"

	// legacyMinLen is the shortest secretbox value: a nonce and a tag.
	legacyMinLen = 24 + secretbox.Overhead
	gcmNonceLen  = 12
	gcmTagLen    = 16
)

// String names the format as the test vectors and reports do.
func (f Format) String() string {
	switch f {
	case FormatLegacy:
		return "legacy-urlsafe"
	case FormatLegacyStd:
		return "legacy-std"
	case FormatV2GCM:
		return "v2-gcm"
	case FormatV3GCM:
		return "v3-gcm"
	default:
		return "unknown"
	}
}

// ParseFormat is the inverse of Format.String.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats {
		if f.String() == s {
			return f, nil
		}
	}
	return FormatUnknown, fmt.Errorf("parse at-rest format %q: unknown format", s)
}

var (
	// ErrNotCiphertext means a value is in none of the at-rest formats.
	ErrNotCiphertext = errors.New("not an encrypted value")
	// ErrDecrypt means a value is in a known format but does not open under
	// the key: another key encrypted it, or it was altered.
	ErrDecrypt = errors.New("decryption failed: wrong key or altered value")
)

// DetectFormat tells which at-rest format value is in, from its form alone.
// A GCM value is known by its prefix. A legacy value is base64 (either
// alphabet) that decodes to at least a nonce and a tag; it is reported as
// FormatLegacyStd when it uses characters only the standard alphabet has.
// Anything else is FormatUnknown. Plain text that happens to be long base64
// is reported as legacy: only decryption can tell for sure.
func DetectFormat(value string) Format {
	switch {
	case strings.HasPrefix(value, v3Prefix):
		return FormatV3GCM
	case strings.HasPrefix(value, v2Prefix):
		return FormatV2GCM
	}
	raw, err := decodeLegacyBase64(value)
	if err != nil || len(raw) < legacyMinLen {
		return FormatUnknown
	}
	if strings.ContainsAny(value, "+/") {
		return FormatLegacyStd
	}
	return FormatLegacy
}

// decodeLegacyBase64 reads URL-safe or standard base64, padded or not, as
// LiteLLM does (URL-safe first, then standard).
func decodeLegacyBase64(s string) ([]byte, error) {
	if s == "" {
		return nil, ErrNotCiphertext
	}
	t := strings.TrimRight(s, "=")
	if len(s)-len(t) > 2 {
		return nil, ErrNotCiphertext
	}
	if b, err := base64.RawURLEncoding.DecodeString(t); err == nil {
		return b, nil
	}
	b, err := base64.RawStdEncoding.DecodeString(t)
	if err != nil {
		return nil, ErrNotCiphertext
	}
	return b, nil
}

func sha256Key(key secret.Value) *[32]byte {
	k := sha256.Sum256(key.Bytes())
	return &k
}

func hkdfKey(key secret.Value) ([]byte, error) {
	out := make([]byte, 32)
	r := hkdf.New(sha256.New, key.Bytes(), nil, []byte(hkdfInfo))
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("derive v3 key: %w", err)
	}
	return out, nil
}

func gcmFor(f Format, key secret.Value) (cipher.AEAD, error) {
	var k []byte
	if f == FormatV3GCM {
		var err error
		if k, err = hkdfKey(key); err != nil {
			return nil, err
		}
	} else {
		k = sha256Key(key)[:]
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Decrypt opens an at-rest value under key (the salt key, or the master key
// when no salt key is set) and reports the format it was in. It fails with
// ErrNotCiphertext for a value in no format and ErrDecrypt when the key does
// not open it. Errors never contain the value or the key.
func Decrypt(key secret.Value, value string) ([]byte, Format, error) {
	f := DetectFormat(value)
	switch f {
	case FormatV2GCM, FormatV3GCM:
		prefix := v2Prefix
		if f == FormatV3GCM {
			prefix = v3Prefix
		}
		raw, err := decodeGCMBase64(value[len(prefix):])
		if err != nil || len(raw) < gcmNonceLen+gcmTagLen {
			return nil, f, fmt.Errorf("decrypt %s value: %w", f, ErrNotCiphertext)
		}
		aead, err := gcmFor(f, key)
		if err != nil {
			return nil, f, fmt.Errorf("decrypt %s value: %w", f, err)
		}
		plain, err := aead.Open(nil, raw[:gcmNonceLen], raw[gcmNonceLen:], nil)
		if err != nil {
			return nil, f, fmt.Errorf("decrypt %s value: %w", f, ErrDecrypt)
		}
		return plain, f, nil
	case FormatLegacy, FormatLegacyStd:
		raw, _ := decodeLegacyBase64(value)
		var nonce [24]byte
		copy(nonce[:], raw[:24])
		plain, ok := secretbox.Open(nil, raw[24:], &nonce, sha256Key(key))
		if !ok {
			return nil, f, fmt.Errorf("decrypt %s value: %w", f, ErrDecrypt)
		}
		if plain == nil {
			plain = []byte{}
		}
		return plain, f, nil
	default:
		return nil, FormatUnknown, fmt.Errorf("decrypt value: %w", ErrNotCiphertext)
	}
}

// DecryptString is Decrypt for values that must be UTF-8 text, as LiteLLM
// decodes every plaintext.
func DecryptString(key secret.Value, value string) (string, Format, error) {
	plain, f, err := Decrypt(key, value)
	if err != nil {
		return "", f, err
	}
	if !utf8.Valid(plain) {
		return "", f, fmt.Errorf("decrypt %s value: plaintext is not utf-8: %w", f, ErrDecrypt)
	}
	return string(plain), f, nil
}

// decodeGCMBase64 reads the URL-safe base64 after a GCM prefix, padded or
// not.
func decodeGCMBase64(s string) ([]byte, error) {
	t := strings.TrimRight(s, "=")
	if len(s)-len(t) > 2 {
		return nil, ErrNotCiphertext
	}
	return base64.RawURLEncoding.DecodeString(t)
}

// Encrypt seals plain under key in format f, with a fresh random nonce.
// LiteLLM's current default for new writes is FormatV3GCM.
func Encrypt(key secret.Value, plain []byte, f Format) (string, error) {
	return encryptWith(rand.Reader, key, plain, f)
}

func encryptWith(rnd io.Reader, key secret.Value, plain []byte, f Format) (string, error) {
	switch f {
	case FormatV2GCM, FormatV3GCM:
		aead, err := gcmFor(f, key)
		if err != nil {
			return "", fmt.Errorf("encrypt %s value: %w", f, err)
		}
		nonce := make([]byte, gcmNonceLen, gcmNonceLen+len(plain)+gcmTagLen)
		if _, err := io.ReadFull(rnd, nonce); err != nil {
			return "", fmt.Errorf("encrypt %s value: %w", f, err)
		}
		out := aead.Seal(nonce, nonce, plain, nil)
		prefix := v2Prefix
		if f == FormatV3GCM {
			prefix = v3Prefix
		}
		return prefix + base64.URLEncoding.EncodeToString(out), nil
	case FormatLegacy, FormatLegacyStd:
		var nonce [24]byte
		if _, err := io.ReadFull(rnd, nonce[:]); err != nil {
			return "", fmt.Errorf("encrypt %s value: %w", f, err)
		}
		out := secretbox.Seal(nonce[:], plain, &nonce, sha256Key(key))
		if f == FormatLegacyStd {
			return base64.StdEncoding.EncodeToString(out), nil
		}
		return base64.URLEncoding.EncodeToString(out), nil
	default:
		return "", fmt.Errorf("encrypt value: unknown format %d", int(f))
	}
}

// Reencrypt opens value under oldKey and seals it under newKey in format to
// (or in its own format when to is FormatUnknown).
func Reencrypt(oldKey, newKey secret.Value, value string, to Format) (string, error) {
	plain, f, err := Decrypt(oldKey, value)
	if err != nil {
		return "", fmt.Errorf("re-encrypt value: %w", err)
	}
	if to == FormatUnknown {
		to = f
	}
	return Encrypt(newKey, plain, to)
}
