package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
)

// The suite-wide leak scan (internal/reliability/RELIABILITY.md, section
// 5). A leakWatch watches the runner while it works against a lab and, once
// every secret of the run is known (the new keys are only read from Vault
// at the end), searches for each of them in
//   - the runner's captured stdout and stderr;
//   - every file the test names (the workdir: journal, state, records);
//   - the runner's temporary files: it runs with TMPDIR set to a fresh
//     directory, copied every few milliseconds while it runs, and the files
//     the runner holds open there or holds open deleted;
//   - /proc/*/cmdline of every process, sampled by one goroutine every
//     few milliseconds: the gateways' PID namespaces are children of the
//     root one, so their processes (sshd, the shells it starts, the
//     gateway) are in the root namespace's /proc; each sample is filed
//     under the network namespace of its process (a gateway or the root);
//   - the lab's files: every log (sshd, gateway, nginx, PostgreSQL, Vault)
//     must hold no secret; any other lab file that holds one (the
//     gateways' litellm.env, its .prev copy and the temporary files the
//     rollout writes beside them, copied while the run works, and the
//     lab's own key files, Vault's tokens and unseal key among them) must
//     be 0600.
// A hit names the secret by fingerprint, never by value.

// leakWatchInterval is the pause between two samples of /proc/*/cmdline;
// leakFileInterval between two copies of the watched directories.
const (
	leakWatchInterval = 3 * time.Millisecond
	leakFileInterval  = 20 * time.Millisecond
	leakMaxFile       = 16 << 20 // larger files are scanned in part
)

// leakTotals adds up every watch of the test binary.
var leakTotals struct {
	sync.Mutex
	leakCounts
	secrets map[string]bool // fingerprints
}

// leakCounts are the figures of one watch.
type leakCounts struct {
	Watches       int
	Watched       time.Duration // how long the samplers ran
	Files         int           // files scanned (each distinct copy once)
	Bytes         int64         // bytes scanned in them and in outputs
	Outputs       int           // captured outputs scanned
	TmpCopies     int           // distinct copies of the runner's temporary files
	DeletedCopies int           // of those, read through an open descriptor of a deleted file
	Samples       int           // passes over /proc
	Cmdlines      int           // cmdline reads in them
	Distinct      int           // distinct command lines seen
	GatewayProcs  int           // distinct processes seen in a gateway's network namespace
	SecretFiles   int           // lab files holding a secret, whose mode was checked
	Hits          int
}

func (c *leakCounts) add(o leakCounts) {
	c.Watches += o.Watches
	c.Watched += o.Watched
	c.Files += o.Files
	c.Bytes += o.Bytes
	c.Outputs += o.Outputs
	c.TmpCopies += o.TmpCopies
	c.DeletedCopies += o.DeletedCopies
	c.Samples += o.Samples
	c.Cmdlines += o.Cmdlines
	c.Distinct += o.Distinct
	c.GatewayProcs += o.GatewayProcs
	c.SecretFiles += o.SecretFiles
	c.Hits += o.Hits
}

func (c leakCounts) String() string {
	every := time.Duration(0)
	if c.Samples > 0 {
		every = c.Watched / time.Duration(c.Samples)
	}
	return fmt.Sprintf("%d files and %d outputs scanned (%d bytes; %d copies of temporary files, %d deleted files read while held open), "+
		"%d cmdline samples over %v (one every %v; %d reads, %d distinct command lines, %d gateway processes), "+
		"%d lab files holding a secret checked 0600, %d hits",
		c.Files, c.Outputs, c.Bytes, c.TmpCopies, c.DeletedCopies, c.Samples, c.Watched.Round(time.Millisecond),
		every.Round(100*time.Microsecond), c.Cmdlines, c.Distinct, c.GatewayProcs, c.SecretFiles, c.Hits)
}

// leakSummary logs the totals of every watch so far.
func leakSummary(t *testing.T) {
	t.Helper()
	leakTotals.Lock()
	defer leakTotals.Unlock()
	t.Logf("leak scan: %d watches, %d secrets tracked, %s", leakTotals.Watches, len(leakTotals.secrets), leakTotals.leakCounts)
}

// blob is something copied while the runner ran, kept until the scan.
type blob struct {
	where string
	mode  fs.FileMode // for lab files: the mode seen with this content
	data  []byte
}

// leakWatch is one watch; start it with watchLeaks, end it with finish.
type leakWatch struct {
	lb  *lab.Lab
	tmp string // the runner's TMPDIR

	stop             chan struct{}
	wg               sync.WaitGroup
	started, stopped time.Time

	mu       sync.Mutex
	cmdlines map[string]string // command line -> where first seen
	tmpSeen  map[[32]byte]blob // copies of temporary files by content
	labSeen  map[[32]byte]blob // copies of gateway files by content and mode
	runners  map[int]bool      // PIDs running the runner binary
	nsOf     map[int]string    // PID -> its network namespace's name
	gwPIDs   map[int]bool
	counts   leakCounts
	bin      string
	netns    map[uint64]string // inode of a network namespace -> name
	deleted  map[string]bool   // deleted files read through a runner's descriptor
}

// watchLeaks starts watching a lab for the runner binary bin. Run the
// runner with env() added to its environment; call finish once every
// secret of the run is known.
func watchLeaks(t *testing.T, lb *lab.Lab, bin string) *leakWatch {
	t.Helper()
	tmp, err := os.MkdirTemp("", "rbtmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	w := &leakWatch{
		lb: lb, tmp: tmp, bin: bin, stop: make(chan struct{}),
		cmdlines: map[string]string{}, tmpSeen: map[[32]byte]blob{}, labSeen: map[[32]byte]blob{},
		runners: map[int]bool{}, deleted: map[string]bool{}, nsOf: map[int]string{}, gwPIDs: map[int]bool{}, netns: map[uint64]string{},
	}
	if ino, ok := nsInode("/proc/self/ns/net"); ok {
		w.netns[ino] = "root"
	}
	for _, g := range lb.Gateways {
		if ino, ok := nsInode(filepath.Join("/run/netns", g.Namespace)); ok {
			w.netns[ino] = g.Name
		}
	}
	w.started = time.Now()
	w.wg.Add(2)
	go w.sampleProc()
	go w.sampleFiles()
	t.Cleanup(w.halt)
	return w
}

// env is what the runner's environment needs for the watch.
func (w *leakWatch) env() []string { return []string{"TMPDIR=" + w.tmp} }

func (w *leakWatch) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
	if w.stopped.IsZero() {
		w.stopped = time.Now()
	}
}

func nsInode(path string) (uint64, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Ino, true
}

// sampleProc reads /proc/*/cmdline of every process, over and over. It
// keeps each process's cmdline open and rereads it with pread (after an
// exec the same file gives the new command line), which costs one system
// call per process and pass instead of five.
func (w *leakWatch) sampleProc() {
	defer w.wg.Done()
	self := os.Getpid()
	open := map[int]*os.File{}
	last := map[int]string{} // the command line of each process at the last pass
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	type seen struct {
		pid  int
		line string
	}
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		d, err := os.Open("/proc")
		if err != nil {
			return
		}
		names, _ := d.Readdirnames(-1)
		d.Close()
		live := map[int]bool{}
		var got []seen
		reads := 0
		for _, n := range names {
			pid, err := strconv.Atoi(n)
			if err != nil || pid == self {
				continue
			}
			live[pid] = true
			f := open[pid]
			if f == nil {
				if f, err = os.Open("/proc/" + n + "/cmdline"); err != nil {
					continue
				}
				open[pid] = f
			}
			k, err := f.ReadAt(buf, 0)
			if k == 0 && err != nil && err != io.EOF {
				f.Close()
				delete(open, pid)
				continue
			}
			reads++
			if k > 0 && last[pid] != string(buf[:k]) {
				last[pid] = string(buf[:k])
				got = append(got, seen{pid, last[pid]})
			}
		}
		var gone []int
		for pid, f := range open {
			if !live[pid] {
				f.Close()
				delete(open, pid)
				delete(last, pid)
				gone = append(gone, pid)
			}
		}
		w.mu.Lock()
		for _, pid := range gone {
			delete(w.nsOf, pid) // the PID may be reused
		}
		w.counts.Samples++
		w.counts.Cmdlines += reads
		for _, s := range got {
			ns, known := w.nsOf[s.pid]
			if !known {
				ns = "other"
				if ino, ok := nsInode("/proc/" + strconv.Itoa(s.pid) + "/ns/net"); ok {
					if name, ok := w.netns[ino]; ok {
						ns = name
					}
				}
				w.nsOf[s.pid] = ns
				if ns != "root" && ns != "other" {
					w.gwPIDs[s.pid] = true
				}
			}
			if _, ok := w.cmdlines[s.line]; !ok {
				w.cmdlines[s.line] = fmt.Sprintf("/proc/%d/cmdline (%s)", s.pid, ns)
			}
			if w.bin != "" && strings.HasPrefix(s.line, w.bin+"\x00") {
				w.runners[s.pid] = true
			}
		}
		w.mu.Unlock()
		select {
		case <-w.stop:
			return
		case <-time.After(leakWatchInterval):
		}
	}
}

// sampleFiles copies, over and over, the runner's temporary directory, the
// files the runner holds open there or deleted, and each gateway's files.
func (w *leakWatch) sampleFiles() {
	defer w.wg.Done()
	for {
		w.copyFiles()
		select {
		case <-w.stop:
			w.copyFiles()
			return
		case <-time.After(leakFileInterval):
		}
	}
}

func (w *leakWatch) copyFiles() {
	keep := func(m map[[32]byte]blob, where string, mode fs.FileMode, data []byte) bool {
		h := sha256.Sum256(append([]byte(mode.String()+"\x00"), data...))
		w.mu.Lock()
		defer w.mu.Unlock()
		if _, ok := m[h]; ok {
			return false
		}
		m[h] = blob{where: where, mode: mode, data: data}
		return true
	}
	walk := func(m map[[32]byte]blob, root string) {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			if b, err := readCapped(p); err == nil {
				keep(m, p, info.Mode(), b)
			}
			return nil
		})
	}
	walk(w.tmpSeen, w.tmp)
	for _, g := range w.lb.Gateways {
		walk(w.labSeen, g.Dir)
	}
	// Files the runner holds open: in its TMPDIR, or deleted anywhere.
	w.mu.Lock()
	var pids []int
	for pid := range w.runners {
		pids = append(pids, pid)
	}
	w.mu.Unlock()
	for _, pid := range pids {
		fdDir := fmt.Sprintf("/proc/%d/fd", pid)
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			w.mu.Lock()
			delete(w.runners, pid)
			w.mu.Unlock()
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || !strings.HasPrefix(link, "/") {
				continue
			}
			deleted := strings.HasSuffix(link, " (deleted)")
			if !deleted && !strings.HasPrefix(link, w.tmp+"/") {
				continue
			}
			fi, err := os.Stat(filepath.Join(fdDir, fd.Name()))
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			if b, err := readCapped(filepath.Join(fdDir, fd.Name())); err == nil {
				keep(w.tmpSeen, "runner's open file "+link, fi.Mode(), b)
				if deleted {
					w.mu.Lock()
					w.deleted[fmt.Sprintf("%d %s", pid, link)] = true
					w.mu.Unlock()
				}
			}
		}
	}
}

// readCapped reads at most leakMaxFile bytes of a file.
func readCapped(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, leakMaxFile))
}

// leakMatcher finds which of many secrets a blob holds, in one pass per
// distinct three-byte head rather than one per secret.
type leakMatcher struct {
	heads map[string][]secret.Value
}

// minSecretLen: shorter values are not tracked (they would match by chance).
const minSecretLen = 12

func newLeakMatcher(secrets []secret.Value) *leakMatcher {
	m := &leakMatcher{heads: map[string][]secret.Value{}}
	seen := map[string]bool{}
	for _, s := range secrets {
		v := s.Reveal()
		if len(v) < minSecretLen || seen[v] {
			continue
		}
		seen[v] = true
		m.heads[v[:3]] = append(m.heads[v[:3]], s)
	}
	return m
}

func (m *leakMatcher) count() int {
	n := 0
	for _, l := range m.heads {
		n += len(l)
	}
	return n
}

// find returns the fingerprints of the secrets in b.
func (m *leakMatcher) find(b []byte) []string {
	var out []string
	for head, list := range m.heads {
		h := []byte(head)
		found := map[int]bool{}
		for off := 0; off < len(b); {
			i := bytes.Index(b[off:], h)
			if i < 0 {
				break
			}
			at := off + i
			for j, s := range list {
				if !found[j] && bytes.HasPrefix(b[at:], s.Bytes()) {
					found[j] = true
					out = append(out, s.Fingerprint())
				}
			}
			off = at + 1
		}
	}
	sort.Strings(out)
	return out
}

// labSecrets are the secrets the lab itself holds: the master key, Vault's
// tokens and unseal key (hex, as its file holds it, and base64, which
// Vault's sys/unseal takes too), every seeded virtual key (and grace key),
// the credentials stored encrypted at rest, and the lines of the runner's
// SSH private key.
func labSecrets(lb *lab.Lab) []secret.Value {
	out := []secret.Value{lb.MasterKey, lb.SaltKey}
	if lb.Vault != nil {
		out = append(out, lb.Vault.RootToken, lb.Vault.RunnerToken, lb.Vault.UnsealKey)
		if raw, err := hex.DecodeString(lb.Vault.UnsealKey.Reveal()); err == nil && len(raw) > 0 {
			out = append(out, secret.New(base64.StdEncoding.EncodeToString(raw)))
		}
	}
	if lb.Seed != nil {
		for _, k := range lb.Seed.Keys {
			out = append(out, k.Key, k.GraceKey)
		}
		// Stored credentials: the keys, and the environment variables of
		// LiteLLM_Config; not the model names and API bases stored
		// encrypted beside them, which are no secret.
		for _, v := range lb.Seed.AtRest {
			if strings.HasSuffix(v.Field, "key") || v.Table == strings.Trim(litellm.TableConfig, `"`) {
				out = append(out, v.Plain)
			}
		}
	}
	if b, err := os.ReadFile(lb.ClientKey); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if len(line) >= 40 && !strings.HasPrefix(line, "-----") {
				out = append(out, secret.New(line))
			}
		}
	}
	return out
}

// labLog reports whether a lab file is a log: it must hold no secret
// whatever its mode.
func labLog(p string) bool {
	base := filepath.Base(p)
	return strings.HasSuffix(base, ".log") || strings.HasSuffix(base, ".out")
}

// finish stops the watch and scans everything against secrets (labSecrets
// are added), the captured outputs and the files under dirs. Every hit is
// a test error. It returns the watch's figures, also added to leakTotals.
func (w *leakWatch) finish(t *testing.T, secrets []secret.Value, outputs map[string][]byte, dirs ...string) leakCounts {
	t.Helper()
	all := append(append([]secret.Value(nil), secrets...), labSecrets(w.lb)...)
	c, hits := w.scan(all, outputs, dirs...)
	for _, h := range hits {
		t.Errorf("leak scan: %s", h)
	}
	if len(w.gwPIDs) == 0 && len(w.lb.Gateways) > 0 {
		t.Errorf("leak scan: no process of a gateway's namespace was seen in /proc: the cmdline samples do not reach the gateways")
	}
	m := newLeakMatcher(all)
	leakTotals.Lock()
	leakTotals.add(c)
	if leakTotals.secrets == nil {
		leakTotals.secrets = map[string]bool{}
	}
	for _, l := range m.heads {
		for _, s := range l {
			leakTotals.secrets[s.Fingerprint()] = true
		}
	}
	leakTotals.Unlock()
	t.Logf("leak scan: %d secrets tracked, %s", m.count(), c)
	return c
}

// scan stops the watch and searches everything for secrets; it returns
// the figures and one line per hit (naming the secret by fingerprint).
func (w *leakWatch) scan(secrets []secret.Value, outputs map[string][]byte, dirs ...string) (leakCounts, []string) {
	w.halt()
	m := newLeakMatcher(secrets)
	c := w.counts
	c.Watches = 1
	c.Watched = w.stopped.Sub(w.started)
	var hits []string
	hit := func(where string, fps []string) {
		for _, fp := range fps {
			c.Hits++
			hits = append(hits, fmt.Sprintf("secret %s found in %s", fp, where))
		}
	}
	scan := func(where string, b []byte) {
		c.Bytes += int64(len(b))
		hit(where, m.find(b))
	}

	for where, b := range outputs {
		c.Outputs++
		scan(where, b)
	}
	// The runner's workdir (journal, state, records) and its TMPDIR now.
	for _, d := range append(append([]string(nil), dirs...), w.tmp) {
		_ = filepath.WalkDir(d, func(p string, de fs.DirEntry, err error) error {
			if err != nil || !de.Type().IsRegular() {
				return nil
			}
			if b, err := readCapped(p); err == nil {
				c.Files++
				scan(p, b)
			}
			return nil
		})
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// Every copy of a temporary file taken while the runner ran.
	for _, b := range w.tmpSeen {
		c.Files++
		c.TmpCopies++
		scan(b.where+" (copied while the runner ran)", b.data)
	}
	c.DeletedCopies = len(w.deleted)
	// Every command line seen.
	c.Distinct = len(w.cmdlines)
	c.GatewayProcs = len(w.gwPIDs)
	for line, where := range w.cmdlines {
		c.Bytes += int64(len(line))
		hit(where, m.find([]byte(line)))
	}
	// The gateways' files as they were while the runner ran: a copy that
	// holds a secret must have been 0600.
	mode := func(where string, md fs.FileMode, b []byte) {
		c.Files++
		c.Bytes += int64(len(b))
		fps := m.find(b)
		if len(fps) == 0 {
			return
		}
		if labLog(where) {
			hit(where, fps)
			return
		}
		c.SecretFiles++
		if md.Perm()&0o077 != 0 {
			c.Hits++
			hits = append(hits, fmt.Sprintf("%s holds %d secret(s) and is %v, want 0600", where, len(fps), md.Perm()))
		}
	}
	for _, b := range w.labSeen {
		mode(b.where+" (copied while the runner ran)", b.mode, b.data)
	}
	// The lab's files now: logs hold no secret, files holding one are
	// 0600. PostgreSQL's data files are left to the tests that read the
	// database.
	pgData := ""
	if w.lb.Postgres != nil {
		pgData = filepath.Join(w.lb.Postgres.Dir, "data")
	}
	_ = filepath.WalkDir(w.lb.Dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if de.IsDir() && p == pgData {
			return filepath.SkipDir
		}
		if !de.Type().IsRegular() {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return nil
		}
		if b, err := readCapped(p); err == nil {
			mode(p, info.Mode(), b)
		}
		return nil
	})

	return c, hits
}
