package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/secret"
	stepvault "github.com/runbook-dev/runbook/internal/step/vault"
	"github.com/runbook-dev/runbook/internal/vault"
)

func newKeysCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage LiteLLM virtual keys kept in Vault",
	}
	cmd.AddCommand(newKeysIssueCommand(g))
	return cmd
}

type keysIssueOptions struct {
	alias      string
	duration   string
	gateway    string
	host       string
	masterPath string
	storePath  string
	models     []string
	teamID     string
	userID     string
	maxBudget  float64
	show       bool
	allowHTTP  bool
	timeout    time.Duration
}

func (o *keysIssueOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.duration, "duration", "90d", `how long the key is valid, as LiteLLM takes it ("30d", "12h", "90d"); "" for no expiry`)
	f.StringVar(&o.gateway, "gateway", "", "gateway URL (default: the inventory variable litellm_url)")
	f.StringVar(&o.host, "host", "", "take litellm_url from this inventory host's variables")
	f.StringVar(&o.masterPath, "master-path", "", "Vault KV path of the master key (default: PREFIX/master, PREFIX being the inventory's vault.prefix or litellm)")
	f.StringVar(&o.storePath, "store-path", "", "Vault KV path to store the new key at (default: PREFIX/clients/ALIAS)")
	f.StringSliceVar(&o.models, "models", nil, "models the key may use (default: all)")
	f.StringVar(&o.teamID, "team-id", "", "team the key belongs to")
	f.StringVar(&o.userID, "user-id", "", "user the key belongs to")
	f.Float64Var(&o.maxBudget, "max-budget", 0, "budget of the key in USD (0: none)")
	f.BoolVar(&o.show, "show", false, "print the new key itself (default: only its fingerprint)")
	f.BoolVar(&o.allowHTTP, "allow-http", false, "allow a plain http:// gateway that is not on loopback (the master key crosses the network in clear)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "time allowed for each request")
}

func newKeysIssueCommand(g *globals) *cobra.Command {
	o := &keysIssueOptions{}
	cmd := &cobra.Command{
		Use:   "issue ALIAS",
		Short: "Create a virtual key for a client and keep it in Vault",
		Long: `issue creates a virtual key for the client ALIAS through the gateway's
/key/generate, authenticated with the master key read from Vault at call time,
and stores the key in Vault (PREFIX/clients/ALIAS). The key is written to Vault
before the gateway learns it, so it is never lost; running issue again after a
failure reuses the pending key. Only the key's fingerprint is printed unless
--show is given.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.alias = args[0]
			return g.runKeysIssue(cmd.Context(), o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

var (
	aliasRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	durationRE = regexp.MustCompile(`^[0-9]+(s|m|h|d|w|mo)$`)
)

// issued is what keys issue reports. Fields are listed one by one; the key
// is set only with --show.
type issued struct {
	Alias       string `json:"alias"`
	Fingerprint string `json:"fingerprint"`
	VaultPath   string `json:"vault_path"`
	Version     int    `json:"vault_version"`
	Expires     string `json:"expires,omitempty"`
	Reused      bool   `json:"reused_pending,omitempty"`
	Key         string `json:"key,omitempty"`
}

func (g *globals) runKeysIssue(ctx context.Context, o *keysIssueOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if !aliasRE.MatchString(o.alias) {
		return usageError("alias %q: use letters, digits, '_', '.', '-' (at most 128)", o.alias)
	}
	if o.duration != "" && !durationRE.MatchString(o.duration) {
		return usageError("--duration %q: want a number and s, m, h, d, w or mo (like 90d)", o.duration)
	}
	inv, err := inventory.LoadFile(g.inventoryPath())
	if err != nil {
		return withCode(ExitUsage, err)
	}
	gw, err := gatewayURL(inv, o)
	if err != nil {
		return withCode(ExitUsage, err)
	}
	prefix := strings.Trim(inv.Vault.Prefix, "/")
	if prefix == "" {
		prefix = "litellm"
	}
	masterPath, storePath := o.masterPath, o.storePath
	if masterPath == "" {
		masterPath = path.Join(prefix, "master")
	}
	if storePath == "" {
		storePath = path.Join(prefix, "clients", o.alias)
	}
	for flag, p := range map[string]string{"--master-path": masterPath, "--store-path": storePath} {
		if err := stepvault.ValidatePath(p); err != nil {
			return usageError("%s: %v", flag, err)
		}
	}

	vc, err := vault.FromInventory(ctx, inv.Vault, func(ref inventory.SecretRef) (secret.Value, error) {
		return vault.ResolveSecretRef(ctx, ref, nil)
	})
	if err != nil {
		return err
	}
	master, err := vc.ReadCurrent(ctx, masterPath)
	if err != nil {
		return fmt.Errorf("read the master key: %w", err)
	}
	mk := master.Secret("key")
	if mk.IsZero() {
		return fmt.Errorf("read the master key: %s version %d has no field key", vc.Display(masterPath), master.Version)
	}

	mask := &secret.Masker{}
	mask.Add(mk)
	gc := &gatewayClient{base: gw, master: mk, mask: mask, http: &http.Client{
		Timeout:   o.timeout,
		Transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext},
		// Never follow a redirect with the master key.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}

	// A client whose current key the gateway still knows keeps it: issue
	// makes keys, it does not replace live ones.
	if cur, err := vc.ReadCurrent(ctx, storePath); err == nil && !cur.Secret("key").IsZero() {
		if live, _ := gc.known(ctx, cur.Secret("key")); live {
			return withCode(ExitUsage, fmt.Errorf("%s already has a live key (%s, %s version %d); nothing changed",
				o.alias, cur.Secret("key").Fingerprint(), vc.Display(storePath), cur.Version),
				"delete it at the gateway first (POST /key/delete), or choose another alias")
		}
	} else if err != nil && !errors.Is(err, vault.ErrNotFound) && !errors.Is(err, vault.ErrNoCurrent) && !errors.Is(err, vault.ErrDeleted) {
		return fmt.Errorf("read %s: %w", vc.Display(storePath), err)
	}

	// The key is made here and written to Vault first, pending: if the
	// gateway call fails, it is not lost, and the next issue reuses it.
	res := issued{Alias: o.alias, VaultPath: vc.Display(storePath)}
	key, version, reused, err := pendingClientKey(ctx, vc, storePath, o.alias)
	if err != nil {
		return err
	}
	mask.Add(key)
	res.Version, res.Reused = version, reused
	res.Fingerprint = key.Fingerprint()

	expires, err := gc.generate(ctx, key, o)
	if err != nil {
		return fmt.Errorf("issue key for %s (pending in %s version %d, fingerprint %s; run issue again to retry with it): %w",
			o.alias, res.VaultPath, version, res.Fingerprint, err)
	}
	res.Expires = expires

	// Mark it current.
	md, err := vc.Metadata(ctx, storePath)
	if err != nil {
		return fmt.Errorf("key issued but not marked current in %s: %w", res.VaultPath, err)
	}
	cm := md.CustomMetadata
	if cm == nil {
		cm = map[string]string{}
	}
	cm[vault.MetaCurrentVersion] = strconv.Itoa(version)
	delete(cm, vault.MetaPendingVersion)
	cm["alias"] = o.alias
	cm["issued_at"] = time.Now().UTC().Format(time.RFC3339)
	cm["expires"] = expires
	if err := vc.WriteCustomMetadata(ctx, storePath, cm); err != nil {
		return fmt.Errorf("key issued but not marked current in %s: %w", res.VaultPath, err)
	}

	if o.show {
		res.Key = key.Reveal()
	}
	if g.output == "json" {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprintf(g.stdout, "issued a key for %s: %s\n", o.alias, res.Fingerprint)
	fmt.Fprintf(g.stdout, "stored in Vault at %s (version %d)\n", res.VaultPath, res.Version)
	if expires != "" {
		fmt.Fprintf(g.stdout, "expires %s\n", expires)
	}
	if o.show {
		fmt.Fprintf(g.stdout, "key: %s\n", key.Reveal())
	}
	return nil
}

// gatewayURL picks the gateway: --gateway, else litellm_url from the
// named host's variables or the inventory's. A plain http:// address that
// is not loopback needs --allow-http.
func gatewayURL(inv *inventory.Inventory, o *keysIssueOptions) (*url.URL, error) {
	raw := o.gateway
	if raw == "" && o.host != "" {
		h := inv.Host(o.host)
		if h == nil {
			return nil, fmt.Errorf("--host %s: no such host in %s", o.host, inv.File)
		}
		raw = inv.HostVars(h)["litellm_url"]
	}
	if raw == "" {
		raw = inv.Vars["litellm_url"]
	}
	if raw == "" {
		return nil, errors.New("no gateway: give --gateway or set the inventory variable litellm_url")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("gateway %q: want http(s)://host[:port]", raw)
	}
	if u.Scheme == "http" && !o.allowHTTP {
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("gateway %s is plain http and not loopback: the master key would cross the network in clear (give --allow-http to accept that)", u.Redacted())
		}
	}
	return u, nil
}

// pendingClientKey returns the key to issue for alias: the pending version
// a failed issue left, else a new key written as a pending version with
// check-and-set.
func pendingClientKey(ctx context.Context, vc *vault.Client, storePath, alias string) (secret.Value, int, bool, error) {
	plain := append([]string{"alias", "token_hash"}, vault.PlainFields...)
	cas := 0
	latest, err := vc.Read(ctx, storePath, plain...)
	switch {
	case err == nil:
		cas = latest.Version
		cur := latest.CustomMetadata[vault.MetaCurrentVersion]
		if latest.Plain[vault.FieldState] == vault.StatePending && cur != strconv.Itoa(latest.Version) && !latest.Secret("key").IsZero() {
			return latest.Secret("key"), latest.Version, true, nil
		}
	case errors.Is(err, vault.ErrNotFound):
	case errors.Is(err, vault.ErrDeleted):
		md, merr := vc.Metadata(ctx, storePath)
		if merr != nil {
			return secret.Value{}, 0, false, merr
		}
		cas = md.CurrentVersion
	default:
		return secret.Value{}, 0, false, fmt.Errorf("read %s: %w", vc.Display(storePath), err)
	}
	key, err := litellm.NewVirtualKey()
	if err != nil {
		return secret.Value{}, 0, false, err
	}
	v, err := vc.Write(ctx, storePath, vault.Data{
		Secrets: map[string]secret.Value{"key": key},
		Plain: map[string]string{
			"alias":          alias,
			"token_hash":     litellm.HashToken(key.Reveal()),
			vault.FieldState: vault.StatePending,
			vault.FieldRunID: "keys-issue",
		},
	}, cas)
	if err != nil {
		return secret.Value{}, 0, false, err
	}
	if md, err := vc.Metadata(ctx, storePath); err == nil {
		cm := md.CustomMetadata
		cm[vault.MetaPendingVersion] = strconv.Itoa(v)
		_ = vc.WriteCustomMetadata(ctx, storePath, cm)
	}
	return key, v, false, nil
}

type gatewayClient struct {
	base   *url.URL
	master secret.Value
	http   *http.Client
	// mask hides the master key and the new key should the gateway echo
	// either in an error message.
	mask *secret.Masker
}

// generate asks the gateway to create key; it returns the expiry LiteLLM
// reports. A key the gateway already holds under this alias (an earlier
// attempt whose answer was lost) counts as created.
func (c *gatewayClient) generate(ctx context.Context, key secret.Value, o *keysIssueOptions) (string, error) {
	body := map[string]any{"key": key.Reveal(), "key_alias": o.alias}
	if o.duration != "" {
		body["duration"] = o.duration
	}
	if len(o.models) > 0 {
		body["models"] = o.models
	}
	if o.teamID != "" {
		body["team_id"] = o.teamID
	}
	if o.userID != "" {
		body["user_id"] = o.userID
	}
	if o.maxBudget > 0 {
		body["max_budget"] = o.maxBudget
	}
	b, err := json.Marshal(body)
	if err != nil {
		return "", err
	}
	var ans struct {
		Key     string  `json:"key"`
		Token   string  `json:"token"`
		Expires *string `json:"expires"`
	}
	code, msg, err := c.do(ctx, http.MethodPost, "/key/generate", b, &ans)
	clear(b)
	if err != nil {
		return "", err
	}
	if code == http.StatusOK {
		if ans.Key != key.Reveal() {
			return "", errors.New("the gateway answered with a different key than the one asked for")
		}
		if ans.Expires != nil {
			return *ans.Expires, nil
		}
		return "", nil
	}
	// Did an earlier attempt create it?
	var info struct {
		Info struct {
			KeyAlias *string `json:"key_alias"`
			Expires  *string `json:"expires"`
		} `json:"info"`
	}
	icode, _, ierr := c.do(ctx, http.MethodGet, "/key/info?key="+url.QueryEscape(litellm.HashToken(key.Reveal())), nil, &info)
	if ierr == nil && icode == http.StatusOK && info.Info.KeyAlias != nil && *info.Info.KeyAlias == o.alias {
		if info.Info.Expires != nil {
			return *info.Info.Expires, nil
		}
		return "", nil
	}
	return "", fmt.Errorf("gateway /key/generate: http %d: %s", code, c.mask.MaskString(msg))
}

// known reports whether the gateway holds key.
func (c *gatewayClient) known(ctx context.Context, key secret.Value) (bool, error) {
	var info map[string]any
	code, _, err := c.do(ctx, http.MethodGet, "/key/info?key="+url.QueryEscape(litellm.HashToken(key.Reveal())), nil, &info)
	if err != nil {
		return false, err
	}
	return code == http.StatusOK, nil
}

// do sends a request with the master key and decodes a 200 answer into
// out. It returns the status and, for other statuses, LiteLLM's error
// message (which never holds the key: the gateway does not echo it).
func (c *gatewayClient) do(ctx context.Context, method, p string, body []byte, out any) (int, string, error) {
	u := *c.base
	rel, err := url.Parse(p)
	if err != nil {
		return 0, "", err
	}
	u.Path = strings.TrimRight(u.Path, "/") + rel.Path
	u.RawQuery = rel.RawQuery
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return 0, "", fmt.Errorf("gateway %s %s: %w", method, rel.Path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.master.Reveal())
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// url.Error names the URL, whose query holds at most a token hash.
		return 0, "", fmt.Errorf("gateway %s %s: %w", method, rel.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, "", fmt.Errorf("gateway %s %s: %w", method, rel.Path, err)
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, out); err != nil {
			return 0, "", fmt.Errorf("gateway %s %s: answer is not JSON", method, rel.Path)
		}
		return resp.StatusCode, "", nil
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	msg := resp.Status
	if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
	}
	return resp.StatusCode, msg, nil
}
