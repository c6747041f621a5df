package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RunDir holds the machine-wide allocation files that let several labs run
// at once: one file per address block in use.
var RunDir = "/run/runbook-lab"

// Address plan: 198.18.0.0/15 (RFC 2544, benchmarking) is split into
// blocks of 1024 addresses, one per lab; a lab's gateway k (from 1) has the
// /30 at offset 4(k-1) in its block, the host side at .1 and the gateway at
// .2 of that /30.
const (
	blockSize   = 1024
	numBlocks   = 131072 / blockSize
	MaxGateways = blockSize / 4
)

var netBase = netip.MustParseAddr("198.18.0.0")

// blockPrefix is the prefix of every namespace and veth name of block i.
func blockPrefix(i int) string { return "rbl" + strconv.Itoa(i) + "-" }

// gatewayAddrs returns the host-side and gateway addresses of gateway k
// (from 1) in block i.
func gatewayAddrs(i, k int) (host, gw netip.Addr) {
	b := netBase.As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n += uint32(i*blockSize + (k-1)*4)
	at := func(off uint32) netip.Addr {
		v := n + off
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return at(1), at(2)
}

// allocation is the content of a block's file.
type allocation struct {
	Block int    `json:"block"`
	Dir   string `json:"dir"`
	// PID is the process that took the block; Owner, when set, is the
	// process whose end makes the lab disposable (a test binary).
	PID     int       `json:"pid"`
	Owner   int       `json:"owner,omitempty"`
	Created time.Time `json:"created"`
}

func blockFile(i int) string { return filepath.Join(RunDir, fmt.Sprintf("block-%03d.json", i)) }

func readAllocation(i int) (*allocation, error) {
	b, err := os.ReadFile(blockFile(i))
	if err != nil {
		return nil, err
	}
	var a allocation
	if err := json.Unmarshal(b, &a); err != nil {
		// A torn write: nobody can own it.
		return &allocation{Block: i}, nil
	}
	return &a, nil
}

// withAllocLock runs fn holding the machine-wide allocation lock.
func withAllocLock(fn func() error) error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	return withFileLock(filepath.Join(RunDir, "alloc.lock"), fn)
}

// allocateBlock takes a free address block for the lab in dir. A block
// whose lab is gone (its directory removed, its owner process dead, or
// never finished by a process that died) is reclaimed: what is left of its
// lab is torn down first.
func allocateBlock(dir string, owner int) (int, error) {
	got := -1
	err := withAllocLock(func() error {
		// Sweep first, so that what dead labs left is cleared even when a
		// lower block is free.
		free := -1
		for i := 0; i < numBlocks; i++ {
			a, err := readAllocation(i)
			if errors.Is(err, fs.ErrNotExist) {
				if free < 0 {
					free = i
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("read allocation %d: %w", i, err)
			}
			if a.Dir == dir || allocationStale(a) {
				reclaimBlock(a)
				if free < 0 {
					free = i
				}
			}
		}
		if free < 0 {
			return fmt.Errorf("all %d address blocks of 198.18.0.0/15 are in use", numBlocks)
		}
		na := allocation{Block: free, Dir: dir, PID: os.Getpid(), Owner: owner, Created: time.Now().UTC()}
		b, _ := json.Marshal(na)
		tmp := blockFile(free) + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return fmt.Errorf("write allocation: %w", err)
		}
		if err := os.Rename(tmp, blockFile(free)); err != nil {
			return fmt.Errorf("write allocation: %w", err)
		}
		got = free
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("allocate lab addresses: %w", err)
	}
	return got, nil
}

// allocationStale reports whether the lab that took a block is gone.
func allocationStale(a *allocation) bool {
	if a.Dir == "" {
		return true
	}
	if _, err := os.Stat(a.Dir); err != nil {
		return true
	}
	st, err := readState(a.Dir)
	if err != nil || st.Block != a.Block || st.Partial {
		// Up has not finished: stale only if the process doing it died.
		return !alive(a.PID)
	}
	if st.Owner != 0 && !alive(st.Owner) {
		return true
	}
	return false
}

// reclaimBlock tears down what is left of the lab that held a block. The
// caller holds the allocation lock.
func reclaimBlock(a *allocation) {
	if a.Dir != "" {
		if st, err := readState(a.Dir); err == nil && st.Block == a.Block {
			st.stopProcesses()
			_ = os.Remove(filepath.Join(a.Dir, stateFile))
		}
	}
	cleanupPrefix(blockPrefix(a.Block))
	if a.Dir != "" {
		// Servers of a lab whose directory or state is gone. SIGINT is
		// PostgreSQL's fast shutdown; the others take it as SIGTERM.
		orphans := orphanServers(a.Dir)
		for _, pid := range orphans {
			_ = syscall.Kill(pid, syscall.SIGINT)
		}
		if !waitGone(5*time.Second, orphans...) {
			_ = terminate(time.Second, orphans...)
		}
	}
	_ = os.Remove(blockFile(a.Block))
}

// releaseBlock gives block i back if dir holds it.
func releaseBlock(i int, dir string) error {
	return withAllocLock(func() error {
		a, err := readAllocation(i)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if a.Dir != dir {
			return nil
		}
		if err := os.Remove(blockFile(i)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("release block %d: %w", i, err)
		}
		return nil
	})
}

// cleanupPrefix removes every network namespace and veth whose name starts
// with prefix, ending the processes inside the namespaces first.
func cleanupPrefix(prefix string) []error {
	var errs []error
	var nss []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			nss = append(nss, e.Name())
		}
	}
	if err := terminate(3*time.Second, netnsPIDsOf(nss...)...); err != nil {
		errs = append(errs, err)
	}
	// Deleting a namespace destroys the veth end inside it and so the
	// pair; the kernel does that asynchronously, so veths still there are
	// deleted by name.
	var batch strings.Builder
	for _, ns := range nss {
		batch.WriteString("netns del " + ns + "\n")
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if strings.HasPrefix(l.Name(), prefix) {
			batch.WriteString("link del " + l.Name() + "\n")
		}
	}
	if batch.Len() > 0 {
		// -force goes on past a veth that vanished meanwhile.
		_, _ = run(bgctx(), []byte(batch.String()), "ip", "-force", "-batch", "-")
	}
	for _, ns := range nss {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			errs = append(errs, fmt.Errorf("namespace %s is left", ns))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		links, _ := os.ReadDir("/sys/class/net")
		for _, l := range links {
			if strings.HasPrefix(l.Name(), prefix) {
				left = append(left, l.Name())
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("veths %s are left", strings.Join(left, ", ")))
			break
		}
		for _, name := range left {
			_, _ = run(bgctx(), nil, "ip", "link", "del", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errs
}

// orphanServers lists the lab's server processes (nginx, PostgreSQL, Vault)
// still running from files under dir: they name the directory on their
// command line.
func orphanServers(dir string) []int {
	if dir == "" || dir == "/" {
		return nil
	}
	prefix := strings.TrimRight(dir, "/") + "/"
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		argv := cmdline(pid)
		if len(argv) == 0 {
			continue
		}
		line := strings.Join(argv, " ")
		first := strings.Fields(argv[0])
		if len(first) == 0 {
			continue
		}
		prog := filepath.Base(first[0])
		switch {
		case strings.HasPrefix(line, "nginx: master process"), prog == "postgres", strings.HasPrefix(prog, "vaultserver-"):
		default:
			continue
		}
		if strings.Contains(line, prefix) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// netnsPIDs lists the processes whose network namespace is the named one.
func netnsPIDs(ns string) []int { return netnsPIDsOf(ns) }

// netnsPIDsOf lists the processes in any of the named network namespaces,
// in one pass over /proc.
func netnsPIDsOf(names ...string) []int {
	var targets []os.FileInfo
	for _, ns := range names {
		if fi, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			targets = append(targets, fi)
		}
	}
	if len(targets) == 0 {
		return nil
	}
	procs, _ := os.ReadDir("/proc")
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fi, err := os.Stat("/proc/" + p.Name() + "/ns/net")
		if err != nil {
			continue
		}
		for _, t := range targets {
			if os.SameFile(fi, t) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}
