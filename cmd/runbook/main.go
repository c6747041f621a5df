// Command runbook runs incident-response and key-rotation runbooks against
// LiteLLM gateways.
package main

import (
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/runbook-dev/runbook/internal/cli"
)

func main() {
	os.Exit(run())
}

// run is main with deferred calls. RUNBOOK_CPUPROFILE=FILE writes a CPU
// profile of the run to FILE, for `go tool pprof` (the benchmarks' profile
// notes come from it).
func run() int {
	if path := os.Getenv("RUNBOOK_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "runbook: error: cpu profile: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "runbook: error: cpu profile: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	return cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}
