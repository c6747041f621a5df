// Command measure runs a command and writes what the kernel accounted for
// that child alone to a JSON file: wall time from start to exit, user and
// system CPU time, and peak resident set (rusage ru_maxrss).
//
//	measure -o FILE -- COMMAND [ARG...]
//
// The benchmarks start the runner through it because a child's ru_maxrss
// also counts the memory of the process it was started from: Go starts
// children with vfork, so the new process runs in its parent's address
// space until exec, and the kernel keeps that space's high-water mark as
// the child's. Started from the benchmark's test binary, which holds
// seeded keys, the runner would be charged with the test's memory. This
// program is small, so the figure it reports is the runner's own (with a
// floor of this program's few MiB).
//
// Standard input, output and error and the environment pass through; the
// exit status is the command's. Should this program die, the command is
// killed with it.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// Usage is what the JSON file holds.
type Usage struct {
	WallNS    int64 `json:"wall_ns"`
	UserNS    int64 `json:"user_ns"`
	SystemNS  int64 `json:"system_ns"`
	MaxRSSKiB int64 `json:"max_rss_kib"`
	ExitCode  int   `json:"exit_code"`
}

func main() {
	out := flag.String("o", "", "file to write the usage to (JSON)")
	flag.Parse()
	if *out == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: measure -o FILE -- COMMAND [ARG...]")
		os.Exit(2)
	}
	code, err := run(*out, flag.Args())
	if err != nil {
		fmt.Fprintln(os.Stderr, "measure:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(out string, argv []string) (int, error) {
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	t0 := time.Now()
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", argv[0], err)
	}
	go func() {
		for s := range sigs {
			_ = c.Process.Signal(s)
		}
	}()
	err := c.Wait()
	wall := time.Since(t0)
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return 0, fmt.Errorf("wait %s: %w", argv[0], err)
	}
	st := c.ProcessState
	u := Usage{WallNS: wall.Nanoseconds(), UserNS: st.UserTime().Nanoseconds(), SystemNS: st.SystemTime().Nanoseconds(), ExitCode: st.ExitCode()}
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
		u.MaxRSSKiB = ru.Maxrss
	}
	b, err := json.Marshal(u)
	if err != nil {
		return 0, fmt.Errorf("write usage: %w", err)
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		return 0, fmt.Errorf("write usage: %w", err)
	}
	code := st.ExitCode()
	if code < 0 {
		code = 1 // killed by a signal
	}
	return code, nil
}
