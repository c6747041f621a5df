// Package ansiblevault reads and writes Ansible Vault's encrypted format,
// "$ANSIBLE_VAULT;1.1;AES256" (and 1.2 with a vault-id label), so the runner
// can update variables that teams keep encrypted with ansible-vault.
//
// The format: PBKDF2-HMAC-SHA256 with 10,000 iterations over the password
// and a random 32-byte salt gives 80 bytes: an AES-256 key, an HMAC-SHA256
// key and a 16-byte counter block. The plaintext, PKCS#7-padded to the AES
// block, is encrypted with AES-256 in CTR mode, and the ciphertext is
// authenticated with HMAC-SHA256 (encrypt-then-MAC). The body is
// hex(hex(salt) "\n" hex(hmac) "\n" hex(ciphertext)), in lines of 80
// characters under the header line.
package ansiblevault

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/internal/secret"
)

// Header starts every vault-encrypted text.
const Header = "$ANSIBLE_VAULT"

const (
	cipherName = "AES256"
	iterations = 10000
	saltLen    = 32
	keyLen     = 32
	ivLen      = aes.BlockSize
	lineWidth  = 80
)

var (
	// ErrFormat means the text is not a well-formed vault envelope.
	ErrFormat = errors.New("not a valid ansible vault text")
	// ErrDecrypt means the password is wrong or the text was altered: the
	// HMAC did not match. (The two cannot be told apart.)
	ErrDecrypt = errors.New("ansible vault: hmac mismatch (wrong password or altered text)")
	// ErrEmptyPassword refuses an empty password, as ansible-vault does.
	ErrEmptyPassword = errors.New("ansible vault: empty password")
)

// Envelope is a vault text's header.
type Envelope struct {
	Version string // "1.1" or "1.2"
	Cipher  string // "AES256"
	Label   string // the vault id of a 1.2 text, else ""
}

// IsEncrypted reports whether data starts with the vault header, as
// ansible does (leading whitespace is not allowed).
func IsEncrypted(data []byte) bool {
	return bytes.HasPrefix(data, []byte(Header+";"))
}

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// ParseEnvelope splits a vault text into its header and its body (the
// outer hex, newlines removed).
func ParseEnvelope(data []byte) (Envelope, []byte, error) {
	text := string(data)
	head, rest, _ := strings.Cut(text, "\n")
	head = strings.TrimSpace(head)
	parts := strings.Split(head, ";")
	if len(parts) < 3 || parts[0] != Header {
		return Envelope{}, nil, formatErr("missing %s header", Header)
	}
	env := Envelope{Version: strings.TrimSpace(parts[1]), Cipher: strings.TrimSpace(parts[2])}
	switch env.Version {
	case "1.1":
		if len(parts) != 3 {
			return Envelope{}, nil, formatErr("version 1.1 header has %d fields", len(parts))
		}
	case "1.2":
		if len(parts) != 4 {
			return Envelope{}, nil, formatErr("version 1.2 header has %d fields", len(parts))
		}
		env.Label = strings.TrimSpace(parts[3])
	default:
		return Envelope{}, nil, formatErr("unsupported version %q", env.Version)
	}
	if env.Cipher != cipherName {
		return Envelope{}, nil, formatErr("unsupported cipher %q", env.Cipher)
	}
	var body strings.Builder
	for _, line := range strings.Split(rest, "\n") {
		body.WriteString(strings.TrimSpace(line))
	}
	if body.Len() == 0 {
		return Envelope{}, nil, formatErr("empty body")
	}
	return env, []byte(body.String()), nil
}

func deriveKeys(password, salt []byte) (k1, k2, iv []byte, err error) {
	dk, err := pbkdf2.Key(sha256.New, string(password), salt, iterations, 2*keyLen+ivLen)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ansible vault: derive keys: %w", err)
	}
	return dk[:keyLen], dk[keyLen : 2*keyLen], dk[2*keyLen:], nil
}

// Decrypt opens a vault text with password. It accepts any label.
func Decrypt(data []byte, password secret.Value) (secret.Value, Envelope, error) {
	if password.IsZero() {
		return secret.Value{}, Envelope{}, ErrEmptyPassword
	}
	env, body, err := ParseEnvelope(data)
	if err != nil {
		return secret.Value{}, Envelope{}, err
	}
	inner := make([]byte, hex.DecodedLen(len(body)))
	if _, err := hex.Decode(inner, body); err != nil {
		return secret.Value{}, env, formatErr("body is not hex")
	}
	fields := bytes.SplitN(inner, []byte("\n"), 3)
	if len(fields) != 3 {
		return secret.Value{}, env, formatErr("body has %d parts, want salt, hmac and ciphertext", len(fields))
	}
	salt, err := hex.DecodeString(string(fields[0]))
	if err != nil || len(salt) == 0 {
		return secret.Value{}, env, formatErr("bad salt")
	}
	mac, err := hex.DecodeString(string(fields[1]))
	if err != nil || len(mac) != sha256.Size {
		return secret.Value{}, env, formatErr("bad hmac")
	}
	ct, err := hex.DecodeString(string(fields[2]))
	if err != nil {
		return secret.Value{}, env, formatErr("ciphertext is not hex")
	}
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return secret.Value{}, env, formatErr("ciphertext length %d is not a positive multiple of %d", len(ct), aes.BlockSize)
	}
	pw := password.Bytes()
	defer clear(pw)
	k1, k2, iv, err := deriveKeys(pw, salt)
	if err != nil {
		return secret.Value{}, env, err
	}
	h := hmac.New(sha256.New, k2)
	h.Write(ct)
	if !hmac.Equal(h.Sum(nil), mac) {
		return secret.Value{}, env, ErrDecrypt
	}
	block, err := aes.NewCipher(k1)
	if err != nil {
		return secret.Value{}, env, fmt.Errorf("ansible vault: %w", err)
	}
	pt := make([]byte, len(ct))
	cipher.NewCTR(block, iv).XORKeyStream(pt, ct)
	defer clear(pt)
	n := int(pt[len(pt)-1])
	if n == 0 || n > aes.BlockSize || n > len(pt) {
		return secret.Value{}, env, formatErr("bad padding")
	}
	for _, b := range pt[len(pt)-n:] {
		if int(b) != n {
			return secret.Value{}, env, formatErr("bad padding")
		}
	}
	return secret.FromBytes(pt[:len(pt)-n]), env, nil
}

// Encrypt seals plaintext with password. A non-empty label gives a 1.2
// text carrying it (ansible's --vault-id label@source); otherwise 1.1. The
// result ends with a newline, as ansible-vault writes it.
func Encrypt(plaintext, password secret.Value, label string) ([]byte, error) {
	if password.IsZero() {
		return nil, ErrEmptyPassword
	}
	if strings.ContainsAny(label, ";\n\r") {
		return nil, fmt.Errorf("ansible vault: label %q holds ';' or a newline", label)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("ansible vault: salt: %w", err)
	}
	return encrypt(plaintext, password, label, salt)
}

func encrypt(plaintext, password secret.Value, label string, salt []byte) ([]byte, error) {
	pw := password.Bytes()
	defer clear(pw)
	k1, k2, iv, err := deriveKeys(pw, salt)
	if err != nil {
		return nil, err
	}
	pt := plaintext.Bytes()
	n := aes.BlockSize - len(pt)%aes.BlockSize
	pt = append(pt, bytes.Repeat([]byte{byte(n)}, n)...)
	defer clear(pt)
	block, err := aes.NewCipher(k1)
	if err != nil {
		return nil, fmt.Errorf("ansible vault: %w", err)
	}
	ct := make([]byte, len(pt))
	cipher.NewCTR(block, iv).XORKeyStream(ct, pt)
	h := hmac.New(sha256.New, k2)
	h.Write(ct)

	inner := hex.EncodeToString(salt) + "\n" + hex.EncodeToString(h.Sum(nil)) + "\n" + hex.EncodeToString(ct)
	body := hex.EncodeToString([]byte(inner))

	var out strings.Builder
	out.WriteString(Header)
	if label != "" && label != "default" {
		out.WriteString(";1.2;" + cipherName + ";" + label)
	} else {
		out.WriteString(";1.1;" + cipherName)
	}
	out.WriteByte('\n')
	for i := 0; i < len(body); i += lineWidth {
		end := min(i+lineWidth, len(body))
		out.WriteString(body[i:end])
		out.WriteByte('\n')
	}
	return []byte(out.String()), nil
}
