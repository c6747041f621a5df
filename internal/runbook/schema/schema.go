// Package schema holds the JSON Schemas (draft 2020-12) of runbook and
// inventory files, for editors that check YAML as they type.
//
// With the YAML language server (VS Code's YAML extension, Neovim's
// yamlls, ...) put a modeline on a file's first line that points at the
// schema, by path relative to the file or by URL:
//
//	# yaml-language-server: $schema=../internal/runbook/schema/runbook.schema.json
//	# yaml-language-server: $schema=../internal/runbook/schema/inventory.schema.json
//
// runbook.schema.json types `with:` as any mapping; runbook.GenerateSchema
// derives from it a schema that knows every registered step kind and its
// parameters. The decoder stays the authority: the schemas cannot see
// cross-references (undefined steps, inputs, groups), and the tests keep
// their keys in step with the decoder's.
package schema

import _ "embed"

// Runbook is runbook.schema.json.
//
//go:embed runbook.schema.json
var Runbook []byte

// Inventory is inventory.schema.json.
//
//go:embed inventory.schema.json
var Inventory []byte

// IDs of the schemas.
const (
	RunbookID   = "https://github.com/runbook-dev/runbook/internal/runbook/schema/runbook.schema.json"
	InventoryID = "https://github.com/runbook-dev/runbook/internal/runbook/schema/inventory.schema.json"
)
