package ssh

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Sentinels for errors.Is on host key errors.
var (
	ErrHostKeyUnknown = errors.New("host key unknown")
	ErrHostKeyChanged = errors.New("host key changed")
)

// HostKeyError stops all work on a host whose key known_hosts does not
// vouch for. It is never retryable: a retry cannot make an unknown key
// trusted, and a changed key may be an attack.
type HostKeyError struct {
	Host        string // inventory name
	Address     string // host:port
	KeyType     string
	Fingerprint string // SHA256:...
	KnownHosts  string // the file checked
	// Changed is true when known_hosts holds other keys for the host
	// (Known lists them as file:line); false when it holds none.
	Changed bool
	Known   []string
	Revoked bool
}

func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked:
		return fmt.Sprintf("host %s (%s) offered %s key %s, which %s marks @revoked; the host is not touched",
			e.Host, e.Address, e.KeyType, e.Fingerprint, e.KnownHosts)
	case e.Changed:
		return fmt.Sprintf("host key of %s (%s) has CHANGED: it offered %s key %s, but %s holds a different key (%s); "+
			"this may be an attack or a reinstalled host: the host is not touched; verify the new fingerprint out of band "+
			"(ssh-keygen -lf on the host's /etc/ssh/ssh_host_*_key.pub) before you replace the entry",
			e.Host, e.Address, e.KeyType, e.Fingerprint, e.KnownHosts, joinKnown(e.Known))
	}
	return fmt.Sprintf("host key of %s (%s) is unknown: it offered %s key %s, which %s does not list; "+
		"the host is not touched; verify the fingerprint out of band (ssh-keygen -lf on the host's /etc/ssh/ssh_host_*_key.pub), "+
		"then add it to known_hosts or accept new host keys explicitly",
		e.Host, e.Address, e.KeyType, e.Fingerprint, e.KnownHosts)
}

// Is lets errors.Is match ErrHostKeyUnknown and ErrHostKeyChanged.
func (e *HostKeyError) Is(target error) bool {
	switch target {
	case ErrHostKeyUnknown:
		return !e.Changed && !e.Revoked
	case ErrHostKeyChanged:
		return e.Changed || e.Revoked
	}
	return false
}

func joinKnown(k []string) string {
	if len(k) == 0 {
		return "none"
	}
	s := k[0]
	for _, x := range k[1:] {
		s += ", " + x
	}
	return s
}

// HostKeyAcceptance records a host key accepted because the run was told
// to accept new keys. The caller journals it.
type HostKeyAcceptance struct {
	Host        string
	Address     string
	KeyType     string
	Fingerprint string
	KnownHosts  string
	Time        time.Time
}

// hostKeys verifies host keys against one known_hosts file and, when told
// to, appends keys of hosts it does not list.
type hostKeys struct {
	file      string
	acceptNew bool
	onAccept  func(HostKeyAcceptance)

	mu       sync.Mutex
	cb       ssh.HostKeyCallback
	accepted []HostKeyAcceptance
	added    map[string]ssh.PublicKey // normalized address -> key accepted in this run
}

// probeKey is a key no host has: checking it returns the keys known_hosts
// holds for an address, from which the algorithms to ask for follow.
var probeKey ssh.PublicKey

func init() {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	probeKey, err = ssh.NewPublicKey(pub)
	if err != nil {
		panic(err)
	}
}

func newHostKeys(file string, acceptNew bool, onAccept func(HostKeyAcceptance)) (*hostKeys, error) {
	h := &hostKeys{file: file, acceptNew: acceptNew, onAccept: onAccept, added: map[string]ssh.PublicKey{}}
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		if !acceptNew {
			return nil, fmt.Errorf("ssh: known_hosts file %s does not exist: create it with the gateways' host keys (ssh-keyscan, then verify the fingerprints)", file)
		}
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, fmt.Errorf("ssh: create known_hosts: %w", err)
		}
		f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, fmt.Errorf("ssh: create known_hosts: %w", err)
		}
		f.Close()
	}
	cb, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("ssh: read known_hosts: %w", err)
	}
	h.cb = cb
	return h, nil
}

// algorithms returns the host key algorithms to ask addr for: those of the
// keys known_hosts holds for it, so that a host with several keys shows the
// one we know. Nil (the library's default) for a host not listed.
func (h *hostKeys) algorithms(addr string) []string {
	h.mu.Lock()
	cb := h.cb
	added := h.added[knownhosts.Normalize(addr)]
	h.mu.Unlock()
	var types []string
	if added != nil {
		types = append(types, added.Type())
	}
	var ke *knownhosts.KeyError
	if err := cb(addr, fakeAddr(addr), probeKey); errors.As(err, &ke) {
		for _, k := range ke.Want {
			types = append(types, k.Key.Type())
		}
	}
	if len(types) == 0 {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			algos = append(algos, a)
		}
	}
	for _, t := range types {
		switch t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512)
			add(ssh.KeyAlgoRSASHA256)
			add(ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return algos
}

// fakeAddr is addr as a net.Addr, for the probe only.
func fakeAddr(addr string) net.Addr {
	host, port, _ := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	if ip == nil {
		ip = net.IPv4zero
	}
	p := 0
	fmt.Sscan(port, &p)
	return &net.TCPAddr{IP: ip, Port: p}
}

// check verifies key for the host name (inventory) at addr (as dialed).
func (h *hostKeys) check(name, addr string, remote net.Addr, key ssh.PublicKey) error {
	norm := knownhosts.Normalize(addr)
	h.mu.Lock()
	defer h.mu.Unlock()
	if k, ok := h.added[norm]; ok {
		if string(k.Marshal()) == string(key.Marshal()) {
			return nil
		}
		return &HostKeyError{Host: name, Address: addr, KeyType: key.Type(), Fingerprint: ssh.FingerprintSHA256(key),
			KnownHosts: h.file, Changed: true, Known: []string{"accepted earlier in this run"}}
	}
	err := h.cb(addr, remote, key)
	if err == nil {
		return nil
	}
	herr := &HostKeyError{Host: name, Address: addr, KeyType: key.Type(), Fingerprint: ssh.FingerprintSHA256(key), KnownHosts: h.file}
	var rev *knownhosts.RevokedError
	if errors.As(err, &rev) {
		herr.Revoked = true
		return herr
	}
	var ke *knownhosts.KeyError
	if !errors.As(err, &ke) {
		return fmt.Errorf("verify host key of %s: %w", name, err)
	}
	if len(ke.Want) > 0 {
		herr.Changed = true
		for _, w := range ke.Want {
			herr.Known = append(herr.Known, fmt.Sprintf("%s:%d %s %s", w.Filename, w.Line, w.Key.Type(), ssh.FingerprintSHA256(w.Key)))
		}
		sort.Strings(herr.Known)
		return herr
	}
	if !h.acceptNew {
		return herr
	}
	if err := h.appendLine(norm, key); err != nil {
		return fmt.Errorf("accept host key of %s: %w", name, err)
	}
	h.added[norm] = key
	acc := HostKeyAcceptance{Host: name, Address: addr, KeyType: key.Type(), Fingerprint: ssh.FingerprintSHA256(key), KnownHosts: h.file, Time: time.Now().UTC()}
	h.accepted = append(h.accepted, acc)
	if h.onAccept != nil {
		h.onAccept(acc)
	}
	return nil
}

func (h *hostKeys) appendLine(norm string, key ssh.PublicKey) error {
	f, err := os.OpenFile(h.file, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	line := knownhosts.Line([]string{norm}, key) + "\n"
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if r, err := os.Open(h.file); err == nil {
			if _, err := r.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
				line = "\n" + line
			}
			r.Close()
		}
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (h *hostKeys) acceptedList() []HostKeyAcceptance {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]HostKeyAcceptance(nil), h.accepted...)
}
