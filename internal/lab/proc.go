package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// alive reports whether pid names a running process. A zombie (exited but
// not yet reaped) counts as gone.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	switch b[i+2] {
	case 'Z', 'X', 'x':
		return false
	}
	return true
}

// cmdline returns the argv of pid, empty when the process is gone.
func cmdline(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// runs reports whether pid is alive and its executable path ends in name,
// which guards against a recycled PID.
func runs(pid int, name string) bool {
	if !alive(pid) {
		return false
	}
	argv := cmdline(pid)
	if len(argv) == 0 {
		return false
	}
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return strings.HasSuffix(argv[0], name) || strings.HasSuffix(exe, name)
}

// terminate sends SIGTERM to each pid, waits up to grace for them to go,
// then sends SIGKILL to what is left and waits for that too.
func terminate(grace time.Duration, pids ...int) error {
	var live []int
	for _, pid := range pids {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			live = append(live, pid)
		}
	}
	if waitGone(grace, live...) {
		return nil
	}
	for _, pid := range live {
		if alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if waitGone(5*time.Second, live...) {
		return nil
	}
	var left []string
	for _, pid := range live {
		if alive(pid) {
			left = append(left, strconv.Itoa(pid))
		}
	}
	return fmt.Errorf("processes %s did not exit", strings.Join(left, ", "))
}

// waitGone polls until none of pids is alive or d has passed.
func waitGone(d time.Duration, pids ...int) bool {
	deadline := time.Now().Add(d)
	for {
		any := false
		for _, pid := range pids {
			if alive(pid) {
				any = true
				break
			}
		}
		if !any {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// daemon starts a long-running process in its own session with standard
// input from /dev/null and its output appended to logPath, so that it
// outlives the lab's caller. While the caller lives, a goroutine reaps it.
func daemon(name string, args []string, env []string, logPath string) (int, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }()
	return cmd.Process.Pid, nil
}

// run runs a command to completion and returns its combined output; the
// error carries the output's tail.
func run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(out.Bytes()))
	}
	return out.Bytes(), nil
}

// waitFile polls until path exists and is not empty, the process pid dies,
// or ctx ends.
func waitFile(ctx context.Context, path string, pid int, what string) ([]byte, error) {
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return b, nil
		}
		if pid > 0 && !alive(pid) {
			return nil, fmt.Errorf("wait for %s: process %d exited", what, pid)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// bgctx is the context for clean-up commands, which must run even when
// the caller's context has ended.
func bgctx() context.Context { return context.Background() }
