package firewall

import (
	"reflect"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/step"
)

// hostile are values a shell or iptables would act on.
var hostile = []string{
	"", " ", "4000; touch /tmp/x", "4000\ntouch /tmp/x", "$(touch /tmp/x)", "`touch /tmp/x`",
	"'", `"`, "a b", "-j ACCEPT", "--dport", "INPUT -j ACCEPT", "\x00", "é", "4000|x", "4000&", ">x",
}

func TestValidatePortRange(t *testing.T) {
	good := map[string]PortRange{"1": {1, 1}, "4000": {4000, 4000}, "65535": {65535, 65535}, "4000:4010": {4000, 4010}, "22:22": {22, 22}}
	for s, want := range good {
		got, err := ParsePortRange(s)
		if err != nil || got != want {
			t.Errorf("%q: %v %v", s, got, err)
		}
	}
	for _, s := range append([]string{"0", "65536", "-1", "+1", "4000:3999", "4000:", ":4000", "1e3", "04000x", "4000-4010", "123456", "0x10"}, hostile...) {
		if _, err := ParsePortRange(s); err == nil {
			t.Errorf("port %q accepted", s)
		}
	}
}

func TestValidateChain(t *testing.T) {
	for _, s := range []string{"INPUT", "DOCKER-USER", "my_chain", "a", strings.Repeat("a", 28)} {
		if err := ValidateChain(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range append([]string{"-INPUT", strings.Repeat("a", 29), "IN.PUT", "IN/PUT"}, hostile...) {
		if ValidateChain(s) == nil {
			t.Errorf("chain %q accepted", s)
		}
	}
}

func TestValidateTag(t *testing.T) {
	for _, s := range []string{"20261128-073000-ab12", "contain-fw", "a", "x.y_z"} {
		if err := ValidateTag("tag", s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range append([]string{"-x", ".x", "a:b", strings.Repeat("a", 65), "a\\b"}, hostile...) {
		if ValidateTag("tag", s) == nil {
			t.Errorf("tag %q accepted", s)
		}
	}
}

func TestParseSources(t *testing.T) {
	got, err := ParseSources([]string{"10.0.0.7/8", "192.0.2.1", "2001:db8::1/32", "::ffff:192.0.2.9", "10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, p := range got {
		s = append(s, p.String())
	}
	want := []string{"10.0.0.0/8", "192.0.2.1/32", "192.0.2.9/32", "2001:db8::/32"}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("got %v want %v", s, want)
	}
	for _, bad := range append([]string{"10.0.0.0/33", "fe80::1%eth0", "host.example", "10.0.0.0/8 -j ACCEPT"}, hostile...) {
		if _, err := ParseSources([]string{bad}); err == nil {
			t.Errorf("source %q accepted", bad)
		}
	}
}

func TestDropRules(t *testing.T) {
	srcs, _ := ParseSources([]string{"198.18.255.0/24", "2001:db8::/32"})
	sets := dropRules([]string{IPv4, IPv6}, "INPUT", "tcp", PortRange{4000, 4000}, srcs, Comment("r1", "t1"))
	if len(sets) != 2 || len(sets[0].Accepts) != 1 || len(sets[1].Accepts) != 1 {
		t.Fatalf("sets: %+v", sets)
	}
	want := "iptables -w -I INPUT 1 ! -i lo -p tcp -m tcp --dport 4000 -m comment --comment runbook:r1:t1 -j DROP"
	if got := strings.Join(sets[0].Drop.Args("-I", 1), " "); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	want = "ip6tables -w -C INPUT -s 2001:db8::/32 -p tcp -m tcp --dport 4000 -m comment --comment runbook:r1:t1 -j ACCEPT"
	if got := strings.Join(sets[1].Accepts[0].Args("-C"), " "); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestParseListing(t *testing.T) {
	out := `-P INPUT ACCEPT
-A INPUT -s 198.18.255.0/24 -p tcp -m tcp --dport 4000 -m comment --comment "runbook:r1:contain" -j ACCEPT
-A INPUT -p tcp -m tcp --dport 4000 -m comment --comment "runbook:r1:contain" -j DROP
-A INPUT -p tcp -m tcp --dport 4000 -m comment --comment "runbook:r2:other" -j DROP
-A INPUT -p tcp -m tcp --dport 22 -m comment --comment "someone else's rule" -j ACCEPT
-A INPUT -p tcp -m comment --comment "runbook:bad id:x" -j DROP
-A OTHER -p tcp -m comment --comment "runbook:r1:contain" -j DROP
-A INPUT -m comment --comment "unterminated -j DROP`
	got := parseListing(IPv4, "INPUT", out)
	if len(got) != 3 {
		t.Fatalf("found %d rules: %+v", len(got), got)
	}
	if got[0].Run != "r1" || got[0].Tag != "contain" || got[2].Run != "r2" {
		t.Errorf("parsed %+v", got)
	}
	want := []string{"-s", "198.18.255.0/24", "-p", "tcp", "-m", "tcp", "--dport", "4000", "-m", "comment", "--comment", "runbook:r1:contain", "-j", "ACCEPT"}
	if !reflect.DeepEqual(got[0].Spec, want) {
		t.Errorf("spec %q", got[0].Spec)
	}
}

func TestSSHServerPort(t *testing.T) {
	if p := sshServerPort("198.18.0.1 51234 198.18.0.2 22\n"); p != 22 {
		t.Errorf("got %d", p)
	}
	for _, s := range []string{"", "x", "1 2 3", "1 2 3 x", "1 2 3 70000"} {
		if p := sshServerPort(s); p != 0 {
			t.Errorf("%q: %d", s, p)
		}
	}
}

func TestNewRefusesHostileParams(t *testing.T) {
	for _, h := range hostile {
		for _, name := range []string{"port", "chain", "tag", "protocol"} {
			p := step.Params{"port": "4000"}
			p[name] = h
			if name == "tag" && h == "" {
				continue // empty tag means the default
			}
			if name == "protocol" && h == "" {
				continue // empty protocol means tcp
			}
			if _, err := DropSpec.New(p); err == nil {
				t.Errorf("firewall.drop accepted %s %q", name, h)
			}
		}
		if _, err := DropSpec.New(step.Params{"port": "4000", "exempt_sources": []string{h}}); err == nil {
			t.Errorf("firewall.drop accepted exempt source %q", h)
		}
		if _, err := DropSpec.New(step.Params{"port": "4000", "families": []string{h}}); err == nil {
			t.Errorf("firewall.drop accepted family %q", h)
		}
		if h != "" {
			if _, err := LiftSpec.New(step.Params{"run_id": h}); err == nil {
				t.Errorf("firewall.lift accepted run_id %q", h)
			}
			if _, err := LiftSpec.New(step.Params{"tag": h}); err == nil {
				t.Errorf("firewall.lift accepted tag %q", h)
			}
		}
	}
	if _, err := LiftSpec.New(step.Params{}); err == nil {
		t.Error("firewall.lift without run_id or tag accepted")
	}
}
