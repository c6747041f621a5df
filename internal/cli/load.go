package cli

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/runbook"
	"github.com/runbook-dev/runbook/internal/state"
	statefs "github.com/runbook-dev/runbook/internal/state/fs"
	statepg "github.com/runbook-dev/runbook/internal/state/pg"
	"github.com/runbook-dev/runbook/internal/step"
	"github.com/runbook-dev/runbook/internal/step/all"
)

// runbookPath turns a runbook name into its file: a path is used as it is,
// a bare name is looked up as DIR/NAME.yaml.
func (g *globals) runbookPath(name string) string {
	if strings.ContainsRune(name, '/') || strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml") {
		return name
	}
	return filepath.Join(g.runbooksDir, name+".yaml")
}

// inventoryPath turns -i into a file: a path is used as it is, a bare
// environment name is looked up as inventories/NAME.yaml.
func (g *globals) inventoryPath() string {
	i := g.inventory
	if strings.ContainsRune(i, '/') || strings.HasSuffix(i, ".yaml") || strings.HasSuffix(i, ".yml") {
		return i
	}
	return filepath.Join("inventories", i+".yaml")
}

func (g *globals) operatorName() string {
	if g.operator != "" {
		return g.operator
	}
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "unknown"
}

// loaded is a runbook validated against an inventory.
type loaded struct {
	rb  *runbook.Runbook
	inv *inventory.Inventory
	reg *step.Registry
}

// load reads and validates a runbook and the inventory. Any error here is a
// usage error: nothing has run.
func (g *globals) load(name string) (*loaded, error) {
	reg := all.Registry()
	rb, err := runbook.LoadFile(g.runbookPath(name))
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	inv, err := inventory.LoadFile(g.inventoryPath())
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	if err := runbook.Validate(rb, reg, inv); err != nil {
		return nil, withCode(ExitUsage, err)
	}
	return &loaded{rb: rb, inv: inv, reg: reg}, nil
}

// inputs checks the given --input values against the runbook's declared
// inputs and fills defaults.
func resolveInputs(rb *runbook.Runbook, given []string, reason string) (map[string]string, error) {
	vals := map[string]string{}
	declared := map[string]*runbook.Input{}
	for i := range rb.Inputs {
		declared[rb.Inputs[i].Name] = &rb.Inputs[i]
	}
	for _, kv := range given {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, usageError("--input %q: want name=value", kv)
		}
		if declared[k] == nil {
			return nil, usageError("--input %s: runbook %s declares no input %q (it has: %s)", k, rb.Name, k, inputNames(rb))
		}
		vals[k] = v
	}
	if reason != "" {
		if declared["reason"] != nil {
			if _, set := vals["reason"]; !set {
				vals["reason"] = reason
			}
		}
	}
	for _, in := range rb.Inputs {
		v, set := vals[in.Name]
		if !set {
			if in.HasDefault {
				vals[in.Name] = in.Default
				continue
			}
			if in.Required {
				hint := "--input " + in.Name + "=VALUE"
				if in.Name == "reason" {
					hint = "--reason TEXT"
				}
				return nil, withCode(ExitUsage, fmt.Errorf("input %s is required", in.Name), "pass "+hint)
			}
			continue
		}
		if err := checkInput(in, v); err != nil {
			return nil, usageError("--input %s: %v", in.Name, err)
		}
	}
	return vals, nil
}

func inputNames(rb *runbook.Runbook) string {
	var names []string
	for _, in := range rb.Inputs {
		names = append(names, in.Name)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func checkInput(in runbook.Input, v string) error {
	switch in.Type {
	case runbook.InputInt:
		if _, err := strconv.Atoi(v); err != nil {
			return fmt.Errorf("want an integer, got %q", v)
		}
	case runbook.InputBool:
		if _, err := strconv.ParseBool(v); err != nil {
			return fmt.Errorf("want true or false, got %q", v)
		}
	case runbook.InputDuration:
		if _, err := runbook.ParseDuration(v); err != nil {
			return fmt.Errorf("want a duration such as 30m or 90d, got %q", v)
		}
	}
	if len(in.Allowed) > 0 {
		for _, a := range in.Allowed {
			if a == v {
				return nil
			}
		}
		return fmt.Errorf("%q is not one of %s", v, strings.Join(in.Allowed, ", "))
	}
	return nil
}

// openStore opens the state store named by --state.
func (g *globals) openStore(ctx context.Context) (state.Store, error) {
	u := g.stateURL
	if strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://") {
		s, err := statepg.Open(ctx, u)
		if err != nil {
			return nil, withCode(ExitInternal, fmt.Errorf("open state store: %w", err))
		}
		return s, nil
	}
	s, err := statefs.Open(u)
	if err != nil {
		return nil, withCode(ExitInternal, fmt.Errorf("open state store: %w", err))
	}
	return s, nil
}

// lockTarget is what one lock covers: the fleet an inventory describes, so
// that no two runs (of any runbook) change the same environment at once.
func lockTarget(inv *inventory.Inventory) string {
	if inv.Environment != "" {
		return "env:" + inv.Environment
	}
	abs, err := filepath.Abs(inv.File)
	if err != nil {
		abs = inv.File
	}
	return "inventory:" + abs
}

// newRunID makes a run id: UTC time to the second and 4 random hex digits,
// so ids sort by start and stay short enough for firewall rule comments.
func newRunID(now time.Time) string {
	var b [2]byte
	f, err := os.Open("/dev/urandom")
	if err == nil {
		_, _ = f.Read(b[:])
		f.Close()
	}
	return fmt.Sprintf("%s-%02x%02x", now.UTC().Format("20060102-150405"), b[0], b[1])
}
