package vault

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// guard is the HTTP transport every request to Vault goes through. It
// refuses, before anything is sent, a request to an address that is not on
// the allow-list, so the token cannot reach it even through a redirect.
type guard struct {
	address string          // the configured address, normalised
	allowed map[string]bool // normalised origins
	next    http.RoundTripper
}

// newGuard checks the address against the allow-list and returns the guard.
// An empty list allows the address alone. An http:// origin that is not
// loopback is allowed only when it is listed explicitly.
func newGuard(address string, allowList []string) (*guard, error) {
	if address == "" {
		return nil, fmt.Errorf("no vault address (set the inventory's vault.address or VAULT_ADDR)")
	}
	addr, err := origin(address)
	if err != nil {
		return nil, fmt.Errorf("vault address: %w", err)
	}
	g := &guard{address: addr, allowed: map[string]bool{}}
	explicit := map[string]bool{}
	for _, a := range allowList {
		o, err := origin(a)
		if err != nil {
			return nil, fmt.Errorf("allowed address %q: %w", a, err)
		}
		g.allowed[o] = true
		explicit[o] = true
	}
	if len(allowList) == 0 {
		g.allowed[addr] = true
	}
	if !g.allowed[addr] {
		return nil, &AddressError{Address: addr, Reason: "not on the allow-list"}
	}
	for o := range g.allowed {
		if strings.HasPrefix(o, "http://") && !isLoopback(o) && !explicit[o] {
			return nil, &AddressError{Address: o, Reason: "plain http to a non-loopback address; list it in allowed_addresses to accept that"}
		}
	}
	return g, nil
}

// AddressError is a refusal to send the token to an address.
type AddressError struct {
	Address string
	Reason  string
}

func (e *AddressError) Error() string {
	return fmt.Sprintf("vault address %s: %s", e.Address, e.Reason)
}

func (e *AddressError) Unwrap() error { return ErrAddressNotAllowed }

// RoundTrip implements http.RoundTripper.
func (g *guard) RoundTrip(r *http.Request) (*http.Response, error) {
	o, err := origin(r.URL.String())
	if err == nil && g.allowed[o] {
		return g.next.RoundTrip(r)
	}
	if r.Body != nil {
		_ = r.Body.Close()
	}
	if err != nil {
		return nil, &AddressError{Address: r.URL.Redacted(), Reason: err.Error()}
	}
	return nil, &AddressError{Address: o, Reason: "not on the allow-list; request not sent"}
}

// origin normalises a URL to "scheme://host:port" with a lowercase host and
// the scheme's default port made explicit.
func origin(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("parse url: %w", err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "https" && scheme != "http" {
		return "", fmt.Errorf("scheme must be https or http, got %q", u.Scheme)
	}
	if u.User != nil {
		return "", fmt.Errorf("user info in a vault address is not accepted")
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", fmt.Errorf("no host in %q", u.Redacted())
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if scheme == "http" {
			port = "80"
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port), nil
}

func isLoopback(o string) bool {
	u, err := url.Parse(o)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
