// Command sshfloor is the floor of the containment benchmark: the least a
// Go program can do to contain a fleet. It connects to every host at once
// with x/crypto/ssh and runs the containment commands in one session per
// host (stop the proxy, drop its port for IPv4 and IPv6, the work
// runbooks/contain.yaml does), with no plan, journal, retry or check.
//
//	sshfloor -i KEY -k KNOWN_HOSTS USER@ADDR:PORT...
//
// A user other than root runs the commands through sudo -n.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Command is what every way of containing runs on a gateway.
const Command = "systemctl stop litellm && iptables -w -I INPUT 1 -p tcp --dport 4000 -j DROP && ip6tables -w -I INPUT 1 -p tcp --dport 4000 -j DROP"

func main() {
	key := flag.String("i", "", "private key")
	kh := flag.String("k", "", "known_hosts file")
	flag.Parse()
	if err := run(*key, *kh, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "sshfloor:", err)
		os.Exit(1)
	}
}

func run(keyPath, khPath string, hosts []string) error {
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return fmt.Errorf("read key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return fmt.Errorf("parse key: %w", err)
	}
	cb, err := knownhosts.New(khPath)
	if err != nil {
		return fmt.Errorf("read known_hosts: %w", err)
	}
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = contain(h, signer, cb)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func contain(spec string, signer ssh.Signer, cb ssh.HostKeyCallback) error {
	user, addr, ok := strings.Cut(spec, "@")
	if !ok {
		return fmt.Errorf("host %q: want USER@ADDR:PORT", spec)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("host %q: %w", spec, err)
	}
	c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   cb,
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
		Timeout:           10 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return fmt.Errorf("session %s: %w", addr, err)
	}
	defer s.Close()
	cmd := Command
	if user != "root" {
		cmd = "sudo -n sh -c '" + Command + "'"
	}
	if out, err := s.CombinedOutput(cmd); err != nil {
		return fmt.Errorf("contain %s: %w: %s", addr, err, strings.TrimSpace(string(out)))
	}
	return nil
}
