package ssh_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/transport"
	rbssh "github.com/runbook-dev/runbook/internal/transport/ssh"
	"github.com/runbook-dev/runbook/internal/transport/transporttest"
)

// Without the resident shell every command has a session of its own; the
// transport passes the same conformance suite.
func TestConformanceWithoutResidentShell(t *testing.T) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.NoResidentShell = true
	tr := dial(t, s, cfg)
	transporttest.Run(t, tr)
}

// Batches and stdin-less commands share one session, the resident shell;
// a command with a secret on its standard input gets its own.
func TestResidentShellOneSession(t *testing.T) {
	s := startSSHD(t)
	tr := dial(t, s, baseConfig(s))
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		res, err := tr.Run(ctx, transport.Command{Args: []string{"echo", fmt.Sprint(i)}})
		if err != nil || string(res.Stdout) != fmt.Sprintf("%d\n", i) {
			t.Fatalf("run %d: %v %q", i, err, res.Stdout)
		}
		out, err := tr.Batch(ctx, []rbssh.Cmd{
			{Command: transport.Command{Args: []string{"sh", "-c", "exit 4"}}},
			{Command: transport.Command{Args: []string{"echo", "b"}}},
		})
		if err != nil || out[0].ExitCode != 4 || string(out[1].Stdout) != "b\n" {
			t.Fatalf("batch %d: %v %+v", i, err, out)
		}
	}
	if n := rbssh.SessionsForTest(tr); n != 1 {
		t.Errorf("%d sessions for 20 batches, want 1", n)
	}
	res, err := tr.Run(ctx, transport.Command{Args: []string{"cat"}, Stdin: ptr(secret.New("on stdin"))})
	if err != nil || string(res.Stdout) != "on stdin" {
		t.Fatalf("cat: %v %q", err, res.Stdout)
	}
	if n := rbssh.SessionsForTest(tr); n != 2 {
		t.Errorf("%d sessions after a command with stdin, want 2", n)
	}
}

func ptr[T any](v T) *T { return &v }

// A resident shell that died while idle is replaced: the next command
// runs, in a new shell.
func TestResidentShellKilledWhileIdle(t *testing.T) {
	s := startSSHD(t)
	tr := dial(t, s, baseConfig(s))
	ctx := context.Background()
	res, err := tr.Run(ctx, transport.Command{Args: []string{"sh", "-c", "echo $PPID"}})
	if err != nil {
		t.Fatal(err)
	}
	// The subshell's parent is the resident shell.
	pid := strings.TrimSpace(string(res.Stdout))
	if _, err := tr.Run(ctx, transport.Command{Args: []string{"kill", "-KILL", pid}, Stdin: ptr(secret.New(""))}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	res, err = tr.Run(ctx, transport.Command{Args: []string{"echo", "again"}})
	if err != nil || string(res.Stdout) != "again\n" {
		t.Fatalf("after the shell died: %v %q", err, res.Stdout)
	}
}

// A command that outlives its timeout is killed with the shell (sshd
// signals the shell's process group), and the next command gets a new
// shell.
func TestResidentShellTimeoutKillsCommand(t *testing.T) {
	for _, resident := range []bool{true, false} {
		t.Run(fmt.Sprintf("resident=%v", resident), func(t *testing.T) { testTimeoutKills(t, resident) })
	}
}

func testTimeoutKills(t *testing.T, resident bool) {
	s := startSSHD(t)
	cfg := baseConfig(s)
	cfg.NoResidentShell = !resident
	cfg.CommandTimeout = 300 * time.Millisecond
	tr := dial(t, s, cfg)
	mark := fmt.Sprintf("rb-shell-timeout-%d", time.Now().UnixNano())
	// A process whose argv holds the mark, to look for afterwards.
	_, err := tr.Run(context.Background(), transport.Command{Args: []string{"sh", "-c", "sleep 30; : " + mark}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline", err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		if !processWithArg(t, mark) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the timed-out command still runs")
		}
		time.Sleep(50 * time.Millisecond)
	}
	res, err := tr.Run(context.Background(), transport.Command{Args: []string{"echo", "next"}})
	if err != nil || string(res.Stdout) != "next\n" {
		t.Fatalf("after a timeout: %v %q", err, res.Stdout)
	}
}

// processWithArg reports whether a process on this machine (the test's
// sshd runs here) has an argument containing s.
func processWithArg(t *testing.T, s string) bool {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), s) {
			return true
		}
	}
	return false
}

// A batch answers "printenv SSH_..." from the shell's environment, with the
// output and status of the program.
func TestBatchPrintenvAsProgram(t *testing.T) {
	s := startSSHD(t)
	tr := dial(t, s, baseConfig(s))
	ctx := context.Background()
	names := []string{"SSH_CONNECTION", "SSH_RB_UNSET_VARIABLE"}
	var cmds []rbssh.Cmd
	for _, n := range names {
		cmds = append(cmds, rbssh.Cmd{Command: transport.Command{Args: []string{"printenv", n}}})
	}
	out, err := tr.Batch(ctx, cmds)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		// Standard input makes Run use a session of its own: the real
		// printenv, in an environment set up the same way by sshd.
		want, err := tr.Run(ctx, transport.Command{Args: []string{"printenv", n}, Stdin: ptr(secret.New(""))})
		if err != nil {
			t.Fatal(err)
		}
		got := out[i]
		if got.ExitCode != want.ExitCode || string(got.Stdout) != string(want.Stdout) {
			t.Errorf("printenv %s: batch exit %d %q, program exit %d %q", n, got.ExitCode, got.Stdout, want.ExitCode, want.Stdout)
		}
	}
	if out[0].ExitCode != 0 || len(out[0].Stdout) < 10 {
		t.Errorf("SSH_CONNECTION: exit %d %q", out[0].ExitCode, out[0].Stdout)
	}
}

// Text a login shell's startup files print before the command is not taken
// for the pid line, nor lost from stderr.
func TestPIDWriter(t *testing.T) {
	for _, chunks := range [][]string{
		{"RBPID 42\nerr"},
		{"RB", "PID 4", "2\ne", "rr"},
		{"motd line\nRBPID 42\n", "err"},
	} {
		w := rbssh.NewPIDWriterForTest()
		for _, c := range chunks {
			if _, err := w.Write([]byte(c)); err != nil {
				t.Fatal(err)
			}
		}
		want := "err"
		if strings.HasPrefix(chunks[0], "motd") {
			want = "motd line\nerr"
		}
		if w.PID() != 42 || string(w.Bytes()) != want {
			t.Errorf("%q: pid %d stderr %q", chunks, w.PID(), w.Bytes())
		}
	}
}
