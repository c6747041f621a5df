// Package vault is the runner's access to HashiCorp Vault: KV version 2
// only, writes with check-and-set, versions and custom metadata, and an
// allow-list of addresses that may receive the token.
//
// The token never leaves the runner for an address that is not allowed: every
// HTTP request, redirects included, passes a guard in the client's transport
// before anything is sent. Secret values read from Vault come back as
// secret.Value; errors name paths and versions, never values or the token.
package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/runbook-dev/runbook/internal/secret"
)

// DefaultMount is the KV v2 mount used when Config.Mount is empty.
const DefaultMount = "secret"

// DefaultAppRoleMount is where the AppRole auth method is mounted unless
// Config.AppRoleMount says otherwise.
const DefaultAppRoleMount = "approle"

// Config says how to reach Vault and how to log in.
type Config struct {
	// Address is Vault's URL, such as https://vault.example:8200.
	Address string
	// Token is used as is. When it is empty, TokenFile is read; when that is
	// empty too, RoleID and SecretID log in through AppRole.
	Token     secret.Value
	TokenFile string
	// CACert is a PEM file of the certificate authorities to trust for
	// Vault's TLS certificate (default: the system's).
	CACert string
	// AllowedAddresses lists the addresses ("https://host:port") that may
	// receive the token. When empty, only Address may. An http:// address
	// that is not loopback must be listed here explicitly.
	AllowedAddresses []string
	// RoleID and SecretID log in through AppRole.
	RoleID, SecretID secret.Value
	// AppRoleMount is the AppRole auth mount (default "approle").
	AppRoleMount string
	// Mount is the KV v2 mount (default "secret").
	Mount string
	// Timeout bounds each request (default 30s).
	Timeout time.Duration
}

// Client is a Vault client bound to one KV v2 mount. It is safe for
// concurrent use.
type Client struct {
	api     *api.Client
	mount   string
	address string
}

// Sentinel errors. Errors returned by the client wrap them where they apply.
var (
	// ErrNotFound means the path has no secret (or no such version).
	ErrNotFound = errors.New("not found")
	// ErrDeleted means the version was deleted or destroyed.
	ErrDeleted = errors.New("version deleted")
	// ErrCASRequired means a write without check-and-set (AnyVersion) was
	// refused: the mount or the path requires check-and-set.
	ErrCASRequired = errors.New("check-and-set required")
	// ErrAddressNotAllowed means a request was refused before it was sent
	// because its address is not on the allow-list.
	ErrAddressNotAllowed = errors.New("address not allowed to receive the vault token")
	// ErrPermission means Vault refused the token for this request (403).
	ErrPermission = errors.New("permission denied")
	// ErrSealed means Vault answered that it is sealed (503): it serves
	// nothing until an operator unseals it.
	ErrSealed = errors.New("vault is sealed")
)

// CASError reports a check-and-set conflict: the path's current version was
// not the one the writer expected, so another writer got there first and
// nothing was written.
type CASError struct {
	Path string
	// Expected is the version the writer expected as current (0: the path
	// must not exist).
	Expected int
	// Current is the version Vault holds now, or -1 when it could not be read.
	Current int
}

func (e *CASError) Error() string {
	cur := "unknown"
	if e.Current >= 0 {
		cur = fmt.Sprint(e.Current)
	}
	if e.Expected == 0 {
		return fmt.Sprintf("check-and-set conflict on %s: expected no version, current is %s", e.Path, cur)
	}
	return fmt.Sprintf("check-and-set conflict on %s: expected version %d, current is %s", e.Path, e.Expected, cur)
}

// MountError reports a mount that is not KV version 2.
type MountError struct {
	Mount   string
	Type    string // "kv", "generic", ...
	Version string // "1", "2" or "" for a KV mount
}

func (e *MountError) Error() string {
	if e.Type == "kv" || e.Type == "generic" {
		v := e.Version
		if v == "" {
			v = "1"
		}
		return fmt.Sprintf("mount %s is KV version %s; the runner needs KV version 2 (vault kv enable-versioning %s)", e.Mount, v, e.Mount)
	}
	return fmt.Sprintf("mount %s is of type %q, not KV version 2", e.Mount, e.Type)
}

// APIError is a response error from Vault, with Vault's messages (which
// name paths, never values).
type APIError struct {
	Op         string
	Path       string
	StatusCode int
	Messages   []string
	// Address is the server that answered. The error names it for a
	// server error (5xx: sealed, unavailable), which is about the server,
	// not the request.
	Address string
}

func (e *APIError) Error() string {
	msg := strings.Join(e.Messages, "; ")
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	at := ""
	if e.StatusCode >= 500 && e.Address != "" {
		at = " at " + e.Address
	}
	if msg == "" {
		return fmt.Sprintf("vault %s %s%s: http %d", e.Op, e.Path, at, e.StatusCode)
	}
	return fmt.Sprintf("vault %s %s%s: http %d: %s", e.Op, e.Path, at, e.StatusCode, msg)
}

// Unwrap maps status codes to sentinels.
func (e *APIError) Unwrap() error {
	switch e.StatusCode {
	case http.StatusForbidden:
		return ErrPermission
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusServiceUnavailable:
		for _, m := range e.Messages {
			if strings.Contains(m, "Vault is sealed") {
				return ErrSealed
			}
		}
	}
	return nil
}

// New builds a client, logs in when needed, and checks that the mount is KV
// version 2. The token is sent only to allowed addresses.
func New(ctx context.Context, cfg Config) (*Client, error) {
	g, err := newGuard(cfg.Address, cfg.AllowedAddresses)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	tr := &http.Transport{
		Proxy:                 nil, // a proxy would see the token in clear on http
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
	}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("vault client: read ca cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vault client: ca cert %s holds no PEM certificate", cfg.CACert)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	g.next = tr
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	acfg := &api.Config{
		Address: g.address,
		HttpClient: &http.Client{
			Transport: g,
			// Vault's client follows one redirect itself; the guard checks
			// it too. net/http must not follow any on its own.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Timeout: timeout,
		// A refusal by the guard is final; anything else follows Vault's
		// own policy (connection errors, 5xx, 412).
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			if errors.Is(err, ErrAddressNotAllowed) {
				return false, err
			}
			return api.DefaultRetryPolicy(ctx, resp, err)
		},
		MaxRetries:   2,
		MinRetryWait: 200 * time.Millisecond,
		MaxRetryWait: time.Second,
	}
	ac, err := api.NewClient(acfg)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	// api.NewClient picks up VAULT_TOKEN, VAULT_NAMESPACE and VAULT_HEADERS
	// from the environment behind the caller's back. Only what Config says
	// counts.
	ac.ClearToken()
	ac.ClearNamespace()
	ac.SetHeaders(http.Header{api.RequestHeaderName: []string{"true"}})

	c := &Client{api: ac, mount: strings.Trim(cfg.Mount, "/"), address: g.address}
	if c.mount == "" {
		c.mount = DefaultMount
	}
	switch {
	case !cfg.Token.IsZero():
		ac.SetToken(strings.TrimSpace(cfg.Token.Reveal()))
	case cfg.TokenFile != "":
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("vault client: read token file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("vault client: token file %s is empty", cfg.TokenFile)
		}
		ac.SetToken(tok)
	case !cfg.RoleID.IsZero():
		if err := c.appRoleLogin(ctx, cfg); err != nil {
			return nil, fmt.Errorf("vault client: %w", err)
		}
	default:
		return nil, errors.New("vault client: no token, token file or approle credentials")
	}
	if err := c.checkMount(ctx); err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	return c, nil
}

func (c *Client) appRoleLogin(ctx context.Context, cfg Config) error {
	mount := strings.Trim(cfg.AppRoleMount, "/")
	if mount == "" {
		mount = DefaultAppRoleMount
	}
	path := "auth/" + mount + "/login"
	data := map[string]any{"role_id": cfg.RoleID.Reveal()}
	if !cfg.SecretID.IsZero() {
		data["secret_id"] = cfg.SecretID.Reveal()
	}
	s, err := c.api.Logical().WriteWithContext(ctx, path, data)
	if err != nil {
		return c.wrapAPI("approle login", path, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return fmt.Errorf("vault approle login %s: no token in the response", path)
	}
	c.api.SetToken(s.Auth.ClientToken)
	return nil
}

// checkMount reads the mount's type through sys/internal/ui/mounts, which
// any token with a capability under the mount may read.
func (c *Client) checkMount(ctx context.Context) error {
	path := "sys/internal/ui/mounts/" + c.mount
	s, err := c.api.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return c.wrapAPI("check mount", c.mount, err)
	}
	if s == nil || s.Data == nil {
		return fmt.Errorf("vault check mount %s: %w (or the token has no access under it)", c.mount, ErrNotFound)
	}
	typ, _ := s.Data["type"].(string)
	var version string
	if opts, ok := s.Data["options"].(map[string]any); ok {
		version, _ = opts["version"].(string)
	}
	if (typ == "kv" || typ == "generic") && version == "2" {
		return nil
	}
	return &MountError{Mount: c.mount, Type: typ, Version: version}
}

// Address is the Vault address the client talks to.
func (c *Client) Address() string { return c.address }

// Mount is the KV v2 mount the client is bound to.
func (c *Client) Mount() string { return c.mount }

// Entry is one version of a KV v2 secret. Every printed form of it keeps
// secret fields redacted.
type Entry struct {
	// Path is relative to the mount ("litellm/master").
	Path    string
	Version int
	Created time.Time
	// Secrets holds the fields read as secrets; Plain the fields the reader
	// named as plain (run ids, states), which hold no secret.
	Secrets map[string]secret.Value
	Plain   map[string]string
	// CustomMetadata is the path's custom metadata as of the read.
	CustomMetadata map[string]string
}

// Secret returns a secret field (the zero Value when absent).
func (e *Entry) Secret(name string) secret.Value { return e.Secrets[name] }

// Data is what a write stores: secret fields and plain fields. A name must
// not be in both.
type Data struct {
	Secrets map[string]secret.Value
	Plain   map[string]string
}

// VersionInfo describes one version in a path's metadata.
type VersionInfo struct {
	Version   int
	Created   time.Time
	DeletedAt time.Time // zero unless deleted
	Destroyed bool
}

// Deleted reports whether the version's data is gone (deleted or destroyed).
func (v VersionInfo) Deleted() bool { return !v.DeletedAt.IsZero() || v.Destroyed }

// Metadata is a path's KV v2 metadata.
type Metadata struct {
	Path           string
	CurrentVersion int
	OldestVersion  int
	MaxVersions    int
	CASRequired    bool
	Created        time.Time
	Updated        time.Time
	CustomMetadata map[string]string
	// Versions in ascending order.
	Versions []VersionInfo
}

// Version returns the info of version n.
func (m *Metadata) Version(n int) (VersionInfo, bool) {
	for _, v := range m.Versions {
		if v.Version == n {
			return v, true
		}
	}
	return VersionInfo{}, false
}

func (c *Client) dataPath(p string) string     { return c.mount + "/data/" + cleanPath(p) }
func (c *Client) metadataPath(p string) string { return c.mount + "/metadata/" + cleanPath(p) }

func cleanPath(p string) string { return strings.Trim(p, "/") }

// Display is the path as people write it: mount and path.
func (c *Client) Display(p string) string { return c.mount + "/" + cleanPath(p) }

// Read returns the latest version of path. Fields named in plain are
// returned in Entry.Plain; every other field is a secret. A path without
// versions is ErrNotFound; a deleted latest version is ErrDeleted.
func (c *Client) Read(ctx context.Context, path string, plain ...string) (*Entry, error) {
	return c.read(ctx, path, 0, plain)
}

// ReadVersion returns version n of path (see Read).
func (c *Client) ReadVersion(ctx context.Context, path string, n int, plain ...string) (*Entry, error) {
	if n <= 0 {
		return nil, fmt.Errorf("vault read %s: version must be positive, got %d", c.Display(path), n)
	}
	return c.read(ctx, path, n, plain)
}

func (c *Client) read(ctx context.Context, path string, n int, plain []string) (*Entry, error) {
	var q map[string][]string
	if n > 0 {
		q = map[string][]string{"version": {fmt.Sprint(n)}}
	}
	disp := c.Display(path)
	if n > 0 {
		disp = fmt.Sprintf("%s (version %d)", disp, n)
	}
	s, err := c.api.Logical().ReadWithDataWithContext(ctx, c.dataPath(path), q)
	if err != nil {
		return nil, c.wrapAPI("read", disp, err)
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault read %s: %w", disp, ErrNotFound)
	}
	md, _ := s.Data["metadata"].(map[string]any)
	e := &Entry{Path: cleanPath(path), Secrets: map[string]secret.Value{}, Plain: map[string]string{}}
	if md != nil {
		e.Version = toInt(md["version"])
		e.Created = toTime(md["created_time"])
		e.CustomMetadata = toStringMap(md["custom_metadata"])
		if !toTime(md["deletion_time"]).IsZero() || md["destroyed"] == true {
			return nil, fmt.Errorf("vault read %s (version %d): %w", c.Display(path), e.Version, ErrDeleted)
		}
	}
	data, ok := s.Data["data"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("vault read %s: %w", disp, ErrNotFound)
	}
	isPlain := map[string]bool{}
	for _, p := range plain {
		isPlain[p] = true
	}
	for k, v := range data {
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("vault read %s: field %q is not a string", disp, k)
		}
		if isPlain[k] {
			e.Plain[k] = str
		} else {
			e.Secrets[k] = secret.New(str)
		}
	}
	return e, nil
}

// Metadata returns path's metadata; a path never written is ErrNotFound.
func (c *Client) Metadata(ctx context.Context, path string) (*Metadata, error) {
	s, err := c.api.Logical().ReadWithContext(ctx, c.metadataPath(path))
	if err != nil {
		return nil, c.wrapAPI("read metadata", c.Display(path), err)
	}
	if s == nil || s.Data == nil {
		return nil, fmt.Errorf("vault read metadata %s: %w", c.Display(path), ErrNotFound)
	}
	d := s.Data
	m := &Metadata{
		Path:           cleanPath(path),
		CurrentVersion: toInt(d["current_version"]),
		OldestVersion:  toInt(d["oldest_version"]),
		MaxVersions:    toInt(d["max_versions"]),
		CASRequired:    d["cas_required"] == true,
		Created:        toTime(d["created_time"]),
		Updated:        toTime(d["updated_time"]),
		CustomMetadata: toStringMap(d["custom_metadata"]),
	}
	if vs, ok := d["versions"].(map[string]any); ok {
		for k, v := range vs {
			vm, _ := v.(map[string]any)
			var n int
			if _, err := fmt.Sscan(k, &n); err != nil {
				continue
			}
			m.Versions = append(m.Versions, VersionInfo{
				Version:   n,
				Created:   toTime(vm["created_time"]),
				DeletedAt: toTime(vm["deletion_time"]),
				Destroyed: vm["destroyed"] == true,
			})
		}
	}
	sortVersions(m.Versions)
	return m, nil
}

// AnyVersion is Write's cas for a write without check-and-set: a new
// version over whatever version is current.
const AnyVersion = -1

// Write stores data as a new version of path with check-and-set: cas 0
// means the path must have no version yet, cas N means the current version
// must be N. A conflict is a *CASError and nothing is written. With cas
// AnyVersion there is no check; a mount that requires one refuses the
// write with ErrCASRequired. It returns the new version.
func (c *Client) Write(ctx context.Context, path string, data Data, cas int) (int, error) {
	if cas < AnyVersion {
		return 0, fmt.Errorf("vault write %s: check-and-set version must not be negative", c.Display(path))
	}
	fields := make(map[string]any, len(data.Secrets)+len(data.Plain))
	for k, v := range data.Plain {
		fields[k] = v
	}
	for k, v := range data.Secrets {
		if _, dup := fields[k]; dup {
			return 0, fmt.Errorf("vault write %s: field %q is both secret and plain", c.Display(path), k)
		}
		fields[k] = v.Reveal()
	}
	body := map[string]any{"data": fields}
	if cas != AnyVersion {
		body["options"] = map[string]any{"cas": cas}
	}
	s, err := c.api.Logical().WriteWithContext(ctx, c.dataPath(path), body)
	if err != nil {
		if cas == AnyVersion && isCASRequired(err) {
			return 0, fmt.Errorf("vault write %s: %w", c.Display(path), ErrCASRequired)
		}
		if isCASMismatch(err) {
			cur := -1
			if m, merr := c.Metadata(ctx, path); merr == nil {
				cur = m.CurrentVersion
			} else if errors.Is(merr, ErrNotFound) {
				cur = 0
			}
			return 0, &CASError{Path: c.Display(path), Expected: cas, Current: cur}
		}
		return 0, c.wrapAPI("write", c.Display(path), err)
	}
	if s == nil || s.Data == nil {
		return 0, fmt.Errorf("vault write %s: no version in the response", c.Display(path))
	}
	v := toInt(s.Data["version"])
	if v <= 0 {
		return 0, fmt.Errorf("vault write %s: no version in the response", c.Display(path))
	}
	return v, nil
}

// WriteCustomMetadata replaces path's custom metadata with md. Custom
// metadata holds no secret.
func (c *Client) WriteCustomMetadata(ctx context.Context, path string, md map[string]string) error {
	m := make(map[string]any, len(md))
	for k, v := range md {
		m[k] = v
	}
	_, err := c.api.Logical().WriteWithContext(ctx, c.metadataPath(path), map[string]any{"custom_metadata": m})
	if err != nil {
		return c.wrapAPI("write metadata", c.Display(path), err)
	}
	return nil
}

// List returns the keys directly under path (folders end in "/"); an empty
// or missing folder gives none.
func (c *Client) List(ctx context.Context, path string) ([]string, error) {
	s, err := c.api.Logical().ListWithContext(ctx, c.metadataPath(path))
	if err != nil {
		return nil, c.wrapAPI("list", c.Display(path), err)
	}
	if s == nil || s.Data == nil {
		return nil, nil
	}
	raw, _ := s.Data["keys"].([]any)
	out := make([]string, 0, len(raw))
	for _, k := range raw {
		if str, ok := k.(string); ok {
			out = append(out, str)
		}
	}
	return out, nil
}

func isCASRequired(err error) bool { return badRequestSays(err, "check-and-set parameter required") }

func isCASMismatch(err error) bool {
	return badRequestSays(err, "check-and-set parameter did not match")
}

// badRequestSays reports whether err is Vault's 400 with a message that
// contains msg.
func badRequestSays(err error, msg string) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest {
		return false
	}
	for _, m := range re.Errors {
		if strings.Contains(m, msg) {
			return true
		}
	}
	return false
}

// wrapAPI turns an error from Vault's client into one that names the
// operation and path. Vault's response errors carry Vault's messages only;
// transport errors name the server (a timeout does not say it otherwise),
// never the token or a request body.
func (c *Client) wrapAPI(op, path string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		msgs := re.Errors
		if re.RawError {
			// A raw body is not Vault's; it could be anything.
			msgs = []string{"unparsable response body"}
		}
		return &APIError{Op: op, Path: path, StatusCode: re.StatusCode, Messages: msgs, Address: c.address}
	}
	if !strings.Contains(err.Error(), c.address) {
		return fmt.Errorf("vault %s %s at %s: %w", op, path, c.address, err)
	}
	return fmt.Errorf("vault %s %s: %w", op, path, err)
}
