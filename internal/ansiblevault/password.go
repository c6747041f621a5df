package ansiblevault

import (
	"fmt"
	"os"
	"strings"

	"github.com/runbook-dev/runbook/internal/secret"
)

// PasswordFromFile reads a vault password file the way ansible does:
// surrounding whitespace is not part of the password. An executable file is
// a password script to ansible; the runner does not run those.
func PasswordFromFile(path string) (secret.Value, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return secret.Value{}, fmt.Errorf("read vault password file: %w", err)
	}
	if fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return secret.Value{}, fmt.Errorf("read vault password file %s: it is executable (an ansible password script); give a plain file", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return secret.Value{}, fmt.Errorf("read vault password file: %w", err)
	}
	defer clear(b)
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return secret.Value{}, fmt.Errorf("read vault password file %s: %w", path, ErrEmptyPassword)
	}
	return secret.New(pw), nil
}

// PasswordFromEnv reads a vault password from an environment variable,
// without a trailing newline.
func PasswordFromEnv(name string) (secret.Value, error) {
	pw := strings.TrimRight(os.Getenv(name), "\r\n")
	if pw == "" {
		return secret.Value{}, fmt.Errorf("read vault password from $%s: %w", name, ErrEmptyPassword)
	}
	return secret.New(pw), nil
}
