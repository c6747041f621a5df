package inventory

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad decodes arbitrary bytes as an inventory: it must never panic or
// hang; errors have positions; a loaded inventory resolves.
func FuzzLoad(f *testing.F) {
	for _, p := range []string{"testdata/valid/inventory/*.yaml", "testdata/invalid/inventory/*.yaml"} {
		names, _ := filepath.Glob(filepath.Join(repoRoot, p))
		for _, n := range names {
			data, err := os.ReadFile(n)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		inv, err := Load("fuzz/inventory.yaml", data)
		if err != nil {
			var list DecodeErrors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("not DecodeErrors: %T %v", err, err)
			}
			for _, e := range list {
				if e.Line < 1 || e.Col < 1 {
					t.Fatalf("bad position in %v", e)
				}
			}
			_ = err.Error()
			return
		}
		hosts, err := inv.Resolve(inv.Targets())
		if err != nil || len(hosts) != len(inv.Hosts) {
			t.Fatalf("resolve all: %d of %d, %v", len(hosts), len(inv.Hosts), err)
		}
		for _, h := range hosts {
			if h.Port < 1 || h.Port > 65535 || h.User == "" || h.Address == "" {
				t.Fatalf("host without defaults: %+v", h)
			}
			inv.HostVars(h)
		}
	})
}
