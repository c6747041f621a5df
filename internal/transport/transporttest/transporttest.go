// Package transporttest is the conformance suite every transport passes:
// arguments arrive intact whatever they hold, exit codes and the two output
// streams come back apart, standard input arrives whole and never shows in
// a process's argv, contexts bound commands, and many commands may run at
// once. It runs real commands on the transport's host (sh, printf, cat,
// sleep and /proc are needed there).
package transporttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	"github.com/runbook-dev/runbook/internal/transport/ssh"
)

// Run runs the suite against tr and closes it at the end.
func Run(t *testing.T, tr transport.Transport) {
	t.Helper()
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("second close: %v", err)
		}
	})
	if tr.Host() == "" {
		t.Error("Host() is empty")
	}
	t.Run("Argv", func(t *testing.T) { testArgv(t, tr) })
	t.Run("ExitCodes", func(t *testing.T) { testExitCodes(t, tr) })
	t.Run("Streams", func(t *testing.T) { testStreams(t, tr) })
	t.Run("Stdin", func(t *testing.T) { testStdin(t, tr) })
	t.Run("SecretNotInArgv", func(t *testing.T) { testSecretNotInArgv(t, tr) })
	t.Run("Timeout", func(t *testing.T) { testTimeout(t, tr) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, tr) })
	t.Run("Batch", func(t *testing.T) { testBatch(t, tr) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func rnd() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func run(t *testing.T, tr transport.Transport, args ...string) transport.Result {
	t.Helper()
	res, err := tr.Run(ctx(t), transport.Command{Args: args})
	if err != nil {
		t.Fatalf("run %s: %v", transport.Join(args), err)
	}
	return res
}

// Payloads are argument values a shell would act on if they were pasted
// into a command line unquoted. Each that could run a command tries to
// create the marker file MARK.
func Payloads(mark string) []string {
	return []string{
		"plain", "two words", " lead", "trail ", "", "tab\there", "new\nline", "\n",
		"it's", `"double"`, `back\slash`, `\`, `'`, `''`, `'\''`,
		"$(touch " + mark + ")", "`touch " + mark + "`", "${IFS}", "$HOME", "$0", "$$", "$1",
		"; touch " + mark, "&& touch " + mark, "| touch " + mark, "\ntouch " + mark, "'; touch " + mark + "; '",
		`"; touch ` + mark + `; "`, "$(IFS=_;cmd=touch_" + mark + ";$cmd)",
		"*", "?", "[a-z]*", "/*", "~", "~root", "{a,b}", "!", "!!", "#comment", "a#b",
		">" + mark, "<" + mark, "2>&1", "&", "a=b", "-n", "-e", "--", "-", "%s", "%n",
		"é ü 日本", "\x01\x7f",
	}
}

func testArgv(t *testing.T, tr transport.Transport) {
	mark := "/tmp/rb-transporttest-" + rnd()
	args := Payloads(mark)
	res := run(t, tr, append([]string{"printf", `%s\0`}, args...)...)
	if res.ExitCode != 0 {
		t.Fatalf("printf exit %d: %s", res.ExitCode, res.Stderr)
	}
	got := strings.Split(string(res.Stdout), "\x00")
	if len(got) != len(args)+1 || got[len(got)-1] != "" {
		t.Fatalf("got %d arguments back, want %d: %q", len(got)-1, len(args), res.Stdout)
	}
	for i, a := range args {
		if got[i] != a {
			t.Errorf("argument %d: got %q, want %q", i, got[i], a)
		}
	}
	// Each payload also as the whole argument list of its own command, and
	// as a program name: the marker must never appear. Eight at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, a := range args {
		wg.Add(1)
		sem <- struct{}{}
		go func(a string) {
			defer func() { <-sem; wg.Done() }()
			res, err := tr.Run(ctx(t), transport.Command{Args: []string{"printf", "%s", a}})
			if err != nil || string(res.Stdout) != a {
				t.Errorf("printf %%s %q: got %q, %v", a, res.Stdout, err)
			}
			if a == "" {
				return
			}
			// As a program name it names no program: never a builtin, an
			// assignment or an option.
			res, err = tr.Run(ctx(t), transport.Command{Args: []string{a, "arg"}})
			if err != nil || res.ExitCode != 127 {
				t.Errorf("program %q: exit %d, %v, want 127 (not found); stderr %q", a, res.ExitCode, err, res.Stderr)
			}
		}(a)
	}
	wg.Wait()
	res = run(t, tr, "test", "-e", mark)
	if res.ExitCode != 1 {
		t.Fatalf("an injected command ran: %s exists (test exit %d)", mark, res.ExitCode)
	}
	// NAME=value first is a program name, not an assignment.
	res = run(t, tr, "RB_X=1", "true")
	if res.ExitCode != 127 {
		t.Errorf("RB_X=1 true: exit %d, want 127 (program not found)", res.ExitCode)
	}
}

func testExitCodes(t *testing.T, tr transport.Transport) {
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"true"}, 0},
		{[]string{"false"}, 1},
		{[]string{"sh", "-c", "exit 3"}, 3},
		{[]string{"sh", "-c", "exit 255"}, 255},
		{[]string{"rb-no-such-program-" + rnd()}, 127},
		{[]string{"sh", "-c", "kill -9 $$"}, 137},
		{[]string{"sh", "-c", "kill -TERM $$"}, 143},
	} {
		res := run(t, tr, c.args...)
		if res.ExitCode != c.want {
			t.Errorf("%s: exit %d, want %d", transport.Join(c.args), res.ExitCode, c.want)
		}
	}
	if _, err := tr.Run(ctx(t), transport.Command{}); err == nil {
		t.Error("an empty command ran")
	}
}

func testStreams(t *testing.T, tr transport.Transport) {
	res := run(t, tr, "sh", "-c", "printf out1; printf err1 >&2; printf out2; printf err2 >&2; exit 4")
	if string(res.Stdout) != "out1out2" || string(res.Stderr) != "err1err2" || res.ExitCode != 4 {
		t.Errorf("got stdout %q stderr %q exit %d", res.Stdout, res.Stderr, res.ExitCode)
	}
	res = run(t, tr, "true")
	if len(res.Stdout) != 0 || len(res.Stderr) != 0 {
		t.Errorf("true printed %q / %q", res.Stdout, res.Stderr)
	}
}

func testStdin(t *testing.T, tr transport.Transport) {
	in := secret.New("line one\nline 'two' $(x)\n\x00binary\xff")
	res, err := tr.Run(ctx(t), transport.Command{Args: []string{"cat"}, Stdin: &in})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != in.Reveal() {
		t.Errorf("cat returned %q", res.Stdout)
	}
	// Large input.
	big := bytes.Repeat([]byte("0123456789abcdef"), 256*1024) // 4 MiB
	bv := secret.FromBytes(big)
	res, err = tr.Run(ctx(t), transport.Command{Args: []string{"wc", "-c"}, Stdin: &bv})
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(res.Stdout)) != fmt.Sprint(len(big)) {
		t.Errorf("wc -c of 4 MiB: %q", res.Stdout)
	}
	// Without Stdin, a command that reads its input sees the end at once.
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err = tr.Run(c, transport.Command{Args: []string{"cat"}})
	if err != nil || res.ExitCode != 0 || len(res.Stdout) != 0 {
		t.Errorf("cat without stdin: %v exit %d out %q", err, res.ExitCode, res.Stdout)
	}
	// A command that does not read its input still finishes.
	res, err = tr.Run(ctx(t), transport.Command{Args: []string{"true"}, Stdin: &bv})
	if err != nil || res.ExitCode != 0 {
		t.Errorf("true with unread stdin: %v exit %d", err, res.ExitCode)
	}
}

// testSecretNotInArgv writes a secret to a command's standard input and,
// while that command holds it, reads every process's argv and environment
// on the host through the transport.
func testSecretNotInArgv(t *testing.T, tr transport.Transport) {
	s := secret.New("rb-secret-" + rnd() + rnd())
	tag := "rb-holder-" + rnd()
	done := make(chan error, 1)
	go func() {
		res, err := tr.Run(ctx(t), transport.Command{
			Args:  []string{"sh", "-c", `IFS= read -r s; sleep 2; [ -n "$s" ]`, tag, "x"},
			Stdin: &s,
		})
		if err == nil && res.ExitCode != 0 {
			err = fmt.Errorf("holder exit %d: %s", res.ExitCode, res.Stderr)
		}
		done <- err
	}()
	sawHolder := false
	// One cat reads them all: a loop forking per process is too slow to
	// catch the holder on a busy host.
	scan := []string{"sh", "-c", `cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null; true`}
	for i := 0; ; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("holder: %v", err)
			}
			if !sawHolder {
				t.Fatal("no scan saw the command holding the secret; the check proved nothing")
			}
			return
		default:
		}
		res := run(t, tr, scan...)
		if bytes.Contains(res.Stdout, []byte(s.Reveal())) {
			t.Fatal("the secret written to standard input appears in a process's argv or environment on the host")
		}
		if bytes.Contains(res.Stdout, []byte(tag)) {
			sawHolder = true
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testTimeout(t *testing.T, tr transport.Transport) {
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := tr.Run(c, transport.Command{Args: []string{"sleep", "10"}})
	if err == nil {
		t.Fatal("sleep 10 under a 300ms context returned no error")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error does not wrap context.DeadlineExceeded: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Run returned %v after the deadline", d)
	}
	// A cancelled context before the start.
	c2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := tr.Run(c2, transport.Command{Args: []string{"true"}}); err == nil {
		t.Error("Run with a cancelled context returned no error")
	}
	// The transport still works.
	if res := run(t, tr, "true"); res.ExitCode != 0 {
		t.Errorf("true after a timeout: exit %d", res.ExitCode)
	}
}

func testConcurrent(t *testing.T, tr transport.Transport) {
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			want := fmt.Sprintf("cmd %d", i)
			res, err := tr.Run(ctx(t), transport.Command{Args: []string{"sh", "-c", `sleep 0.1; printf '%s' "$1"; printf '%s' "$1" >&2; exit $(($2 % 7))`, "x", want, fmt.Sprint(i)}})
			switch {
			case err != nil:
				errs <- err
			case string(res.Stdout) != want || string(res.Stderr) != want || res.ExitCode != i%7:
				errs <- fmt.Errorf("command %d: got %q / %q exit %d", i, res.Stdout, res.Stderr, res.ExitCode)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testBatch(t *testing.T, tr transport.Transport) {
	mark := "/tmp/rb-transporttest-" + rnd()
	pl := Payloads(mark)
	cmds := []ssh.Cmd{
		{Command: transport.Command{Args: append([]string{"printf", `%s\0`}, pl...)}},
		{Command: transport.Command{Args: []string{"sh", "-c", "printf 'no newline'; printf err >&2; exit 3"}}},
		{Command: transport.Command{Args: []string{"false"}}},
		{Command: transport.Command{Args: []string{"echo", "skipped"}}, OnlyIf: 3},
		{Command: transport.Command{Args: []string{"echo", "ran"}}, Unless: 3},
		{Command: transport.Command{Args: []string{"echo", "skipped"}}, Unless: 5},
		{Command: transport.Command{Args: []string{"echo", "ran"}}, OnlyIf: 5},
		{Command: transport.Command{Args: []string{"cat"}}},
		{Command: transport.Command{Args: []string{"sh", "-c", "exit 7"}}},
		{Command: transport.Command{Args: []string{"printf", "\nRBMARK 11 0\n"}}},
		{Command: transport.Command{Args: []string{"exit", "9"}}},
		{Command: transport.Command{Args: []string{"test", "-e", mark}}},
	}
	out, err := ssh.RunBatch(ctx(t), tr, cmds)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(cmds) {
		t.Fatalf("%d outcomes for %d commands", len(out), len(cmds))
	}
	got := strings.Split(string(out[0].Stdout), "\x00")
	if len(got) != len(pl)+1 {
		t.Fatalf("batch printf: %d arguments back, want %d", len(got)-1, len(pl))
	}
	for i, a := range pl {
		if got[i] != a {
			t.Errorf("batch argument %d: got %q, want %q", i, got[i], a)
		}
	}
	check := func(i int, stdout, stderr string, code int, skipped bool) {
		t.Helper()
		o := out[i]
		if string(o.Stdout) != stdout || string(o.Stderr) != stderr || o.ExitCode != code || o.Skipped != skipped {
			t.Errorf("command %d: got %q / %q exit %d skipped %v; want %q / %q exit %d skipped %v",
				i+1, o.Stdout, o.Stderr, o.ExitCode, o.Skipped, stdout, stderr, code, skipped)
		}
	}
	check(1, "no newline", "err", 3, false)
	check(2, "", "", 1, false)
	check(3, "", "", 0, true)
	check(4, "ran\n", "", 0, false)
	check(5, "", "", 0, true)
	check(6, "ran\n", "", 0, false)
	check(7, "", "", 0, false)
	check(8, "", "", 7, false)
	check(9, "\nRBMARK 11 0\n", "", 0, false)
	if out[10].ExitCode != 127 {
		t.Errorf("exit as a program: exit %d, want 127 (not found, never the builtin)", out[10].ExitCode)
	}
	check(11, "", "", 1, false)

	s := secret.New("x")
	if _, err := ssh.RunBatch(ctx(t), tr, []ssh.Cmd{{Command: transport.Command{Args: []string{"cat"}, Stdin: &s}}}); err == nil {
		t.Error("a batch took a command with standard input")
	}
	if _, err := ssh.RunBatch(ctx(t), tr, []ssh.Cmd{{Command: transport.Command{Args: []string{"true"}}, OnlyIf: 1}}); err == nil {
		t.Error("a batch took a condition on a later command")
	}
}
