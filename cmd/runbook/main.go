// Command runbook runs incident-response and key-rotation runbooks against
// LiteLLM gateways.
package main

import (
	"os"

	"github.com/runbook-dev/runbook/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
