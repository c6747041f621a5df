// Package vault is the runner's access to HashiCorp Vault: KV version 2
// only, writes with check-and-set, versions and custom metadata, and an
// allow-list of addresses that may receive the token.
package vault

import "github.com/hashicorp/vault/api"

// Client is a Vault client bound to one KV v2 mount.
type Client struct {
	api   *api.Client
	mount string
}
