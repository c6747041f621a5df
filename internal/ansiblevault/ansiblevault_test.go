package ansiblevault

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/secret"
)

const testPassword = "correct horse battery staple"

func TestRoundTrip(t *testing.T) {
	pw := secret.New(testPassword)
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 67, 1000} {
		pt := bytes.Repeat([]byte{'a' + byte(n%26)}, n)
		for _, label := range []string{"", "prod"} {
			vt, err := Encrypt(secret.FromBytes(pt), pw, label)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(strings.TrimSuffix(string(vt), "\n"), "\n")[1:] {
				if len(l) > 80 {
					t.Fatalf("line of %d characters", len(l))
				}
			}
			got, env, err := Decrypt(vt, pw)
			if err != nil {
				t.Fatalf("n=%d label=%q: %v", n, label, err)
			}
			if !bytes.Equal(got.Bytes(), pt) {
				t.Fatalf("n=%d: round trip changed the plaintext", n)
			}
			if env.Label != label || (label == "") != (env.Version == "1.1") {
				t.Fatalf("envelope %+v for label %q", env, label)
			}
		}
	}
}

func TestWrongPasswordAndTampering(t *testing.T) {
	vt, err := Encrypt(secret.New("sk-secret"), secret.New(testPassword), "")
	if err != nil {
		t.Fatal(err)
	}
	_, _, werr := Decrypt(vt, secret.New("wrong"))
	if !errors.Is(werr, ErrDecrypt) {
		t.Fatalf("wrong password: %v", werr)
	}
	// Flip one hex digit of the ciphertext (the last body character).
	bad := append([]byte(nil), vt...)
	i := len(bad) - 2
	if bad[i] == '0' {
		bad[i] = '1'
	} else {
		bad[i] = '0'
	}
	if _, _, err := Decrypt(bad, secret.New(testPassword)); err == nil {
		t.Fatal("tampered text decrypted")
	}
	if _, _, err := Decrypt(vt, secret.Value{}); !errors.Is(err, ErrEmptyPassword) {
		t.Fatalf("empty password: %v", err)
	}
	for _, s := range []string{"", "$ANSIBLE_VAULT;1.1;AES256\n", "$ANSIBLE_VAULT;1.0;AES\nabcd\n", "$ANSIBLE_VAULT;1.1;AES256\nzz\n", "$ANSIBLE_VAULT;1.1;AES256;x\nab\n"} {
		if _, _, err := Decrypt([]byte(s), secret.New(testPassword)); !errors.Is(err, ErrFormat) {
			t.Fatalf("%q: %v", s, err)
		}
	}
	if strings.Contains(werr.Error(), "sk-secret") {
		t.Fatal("error holds the password or the plaintext")
	}
}

// missing fails the test under CI and skips it otherwise.
func missing(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but %s", reason)
	}
	t.Skip(reason)
}

// ansibleVault returns the ansible-vault command, or skips (fails under CI).
func ansibleVault(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ansible-vault")
	if err != nil {
		missing(t, "ansible-vault is not installed (apt-get install ansible)")
	}
	return p
}

func ansibleEnv(t *testing.T) []string {
	dir := t.TempDir()
	return append(os.Environ(), "ANSIBLE_NOCOLOR=1", "ANSIBLE_LOCAL_TEMP="+dir, "ANSIBLE_HOME="+dir, "ANSIBLE_CONFIG=")
}

func passwordFile(t *testing.T, pw string) string {
	p := filepath.Join(t.TempDir(), "vault-pass")
	if err := os.WriteFile(p, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = ansibleEnv(t)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), args[0], err, stderr.String())
	}
	return out
}

// TestAnsibleDecryptsOurs: ansible-vault opens what we write, 1.1 and 1.2.
func TestAnsibleDecryptsOurs(t *testing.T) {
	av := ansibleVault(t)
	t.Parallel()
	pwFile := passwordFile(t, testPassword)
	pt := "litellm_master_key: sk-0123456789abcdef\nother: [1, 2]\n"
	for _, label := range []string{"", "prod"} {
		vt, err := Encrypt(secret.New(pt), secret.New(testPassword), label)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "vars.yml")
		if err := os.WriteFile(f, vt, 0o600); err != nil {
			t.Fatal(err)
		}
		id := "--vault-password-file=" + pwFile
		if label != "" {
			id = "--vault-id=" + label + "@" + pwFile
		}
		got := run(t, nil, av, "decrypt", id, "--output=-", f)
		if string(got) != pt {
			t.Fatalf("label %q: ansible-vault decrypted something else", label)
		}
	}
}

// TestWeDecryptAnsibles: we open what ansible-vault writes, whole files and
// encrypt_string values.
func TestWeDecryptAnsibles(t *testing.T) {
	av := ansibleVault(t)
	t.Parallel()
	pwFile := passwordFile(t, testPassword)
	pw := secret.New(testPassword)

	dir := t.TempDir()
	f := filepath.Join(dir, "vars.yml")
	plain := "# team vars\nlitellm_master_key: sk-wholefile0123\nregion: eu\n"
	if err := os.WriteFile(f, []byte(plain), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, av, "encrypt", "--vault-id=ops@"+pwFile, f)
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	got, env, err := Decrypt(data, pw)
	if err != nil || got.Reveal() != plain || env.Label != "ops" {
		t.Fatalf("decrypt ansible's file: %v (label %q)", err, env.Label)
	}
	v, found, err := ReadVar(data, "litellm_master_key", pw)
	if err != nil || !found || v.Value.Reveal() != "sk-wholefile0123" || !v.Encrypted {
		t.Fatalf("read var from ansible's file: found %v err %v", found, err)
	}

	// encrypt_string reads the value from stdin: it never sits in argv.
	inline := run(t, []byte("sk-inline4567"), av, "encrypt_string", "--vault-password-file="+pwFile, "--stdin-name=litellm_master_key")
	file := append([]byte("region: eu\n"), inline...)
	file = append(file, []byte("\nport: 4000\n")...)
	v, found, err = ReadVar(file, "litellm_master_key", pw)
	if err != nil || !found || v.Value.Reveal() != "sk-inline4567" {
		t.Fatalf("read inline var from ansible: found %v err %v", found, err)
	}
}

// TestSetVarAnsibleReads sets a variable in both file styles and has
// ansible itself read the variables back, as a playbook run would.
func TestSetVarAnsibleReads(t *testing.T) {
	ansibleVault(t)
	ansible, err := exec.LookPath("ansible")
	if err != nil {
		missing(t, "ansible is not installed")
	}
	t.Parallel()
	pwFile := passwordFile(t, testPassword)
	pw := secret.New(testPassword)
	dir := t.TempDir()

	inlineSrc := "# gateway settings\nregion: eu\nlitellm_master_key: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  00\nport: 4000 # the proxy\n"
	inlineOut, err := SetVar([]byte(inlineSrc), "litellm_master_key", secret.New("sk-newinline"), pw, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(inlineOut), "# gateway settings\nregion: eu\nlitellm_master_key: !vault |\n") || !strings.HasSuffix(string(inlineOut), "port: 4000 # the proxy\n") {
		t.Fatalf("the rest of the file changed:\n%s", inlineOut)
	}
	wholeOut, err := SetVar(nil, "litellm_whole_key", secret.New("sk-newwhole"), pw, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A second set on the whole file keeps the first variable.
	wholeOut, err = SetVar(wholeOut, "other_var", secret.New("x"), pw, SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, fw := filepath.Join(dir, "inline.yml"), filepath.Join(dir, "whole.yml")
	if err := os.WriteFile(fi, inlineOut, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fw, wholeOut, 0o600); err != nil {
		t.Fatal(err)
	}
	out := run(t, nil, ansible, "localhost", "-i", "localhost,", "-c", "local", "-m", "debug",
		"-a", "msg={{ litellm_master_key }}|{{ litellm_whole_key }}|{{ other_var }}|{{ port }}",
		"-e", "@"+fi, "-e", "@"+fw, "--vault-password-file", pwFile)
	if !strings.Contains(string(out), `"msg": "sk-newinline|sk-newwhole|x|4000"`) {
		t.Fatalf("ansible read:\n%s", out)
	}
}

func TestSetVarInlineForms(t *testing.T) {
	pw := secret.New(testPassword)
	cases := map[string]string{
		"absent":         "a: 1\n",
		"absent no EOL":  "a: 1",
		"empty":          "",
		"plain":          "k: sk-plaintext\nb: 2\n",
		"next line":      "k:\n  sk-plaintext\nb: 2\n",
		"block":          "k: |\n  sk-plaintext\n\nb: 2\n",
		"nested earlier": "x:\n  k: keep\nk: old\n",
	}
	for name, src := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := SetVar([]byte(src), "k", secret.New("sk-new"), pw, SetOptions{Inline: true})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(out), "sk-new") || strings.Contains(string(out), "sk-plaintext") {
				t.Fatalf("value in clear:\n%s", out)
			}
			v, found, err := ReadVar(out, "k", pw)
			if err != nil || !found || v.Value.Reveal() != "sk-new" || !v.Encrypted {
				t.Fatalf("read back: found %v err %v\n%s", found, err, out)
			}
			if strings.Contains(src, "b: 2") && !strings.HasSuffix(string(out), "b: 2\n") {
				t.Fatalf("lost the next variable:\n%s", out)
			}
			if strings.Contains(src, "keep") && !strings.Contains(string(out), "  k: keep\n") {
				t.Fatalf("changed a nested variable:\n%s", out)
			}
		})
	}
}

func TestPasswordSources(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "pw")
	if err := os.WriteFile(f, []byte("  s3cret \r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw, err := PasswordFromFile(f)
	if err != nil || pw.Reveal() != "s3cret" {
		t.Fatalf("file: %v", err)
	}
	if err := os.Chmod(f, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := PasswordFromFile(f); err == nil {
		t.Fatal("an executable password file was read as a password")
	}
	t.Setenv("RUNBOOK_TEST_VAULT_PASS", "from-env\n")
	pw, err = PasswordFromEnv("RUNBOOK_TEST_VAULT_PASS")
	if err != nil || pw.Reveal() != "from-env" {
		t.Fatalf("env: %v", err)
	}
	if _, err := PasswordFromEnv("RUNBOOK_TEST_UNSET_VAR"); !errors.Is(err, ErrEmptyPassword) {
		t.Fatalf("unset env: %v", err)
	}
}

func FuzzDecrypt(f *testing.F) {
	pw := secret.New(testPassword)
	for _, s := range []string{"", "x", "sk-0123"} {
		vt, err := Encrypt(secret.New(s), pw, "")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(vt)
	}
	vt, _ := Encrypt(secret.New("k: v\n"), pw, "lab")
	f.Add(vt)
	f.Add([]byte("$ANSIBLE_VAULT;1.1;AES256\n0a0a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, env, err := Decrypt(data, pw)
		if err != nil {
			if strings.Contains(err.Error(), testPassword) {
				t.Fatal("error holds the password")
			}
			return
		}
		// Whatever opens must seal and open again to the same bytes.
		again, err := Encrypt(got, pw, env.Label)
		if err != nil {
			t.Fatal(err)
		}
		back, env2, err := Decrypt(again, pw)
		if err != nil || !back.Equal(got) || env2.Label != env.Label {
			t.Fatalf("re-encryption: %v", err)
		}
		// The vars reader must not panic on what decrypts.
		_, _, _ = ReadVar(data, "k", pw)
	})
}

func FuzzSetVarInline(f *testing.F) {
	for _, s := range []string{"a: 1\n", "k: v\n", "k: |\n  x\nb: 2\n", "k:\n  - 1\n", "# c\n"} {
		f.Add([]byte(s))
	}
	pw := secret.New("pw")
	f.Fuzz(func(t *testing.T, src []byte) {
		if IsEncrypted(src) {
			return
		}
		out, err := SetVar(src, "k", secret.New("sk-fuzz"), pw, SetOptions{Inline: true})
		if err != nil {
			return
		}
		v, found, err := ReadVar(out, "k", pw)
		if err != nil || !found || v.Value.Reveal() != "sk-fuzz" {
			t.Fatalf("set then read: found %v err %v\nin:  %q\nout: %q", found, err, src, out)
		}
	})
}
