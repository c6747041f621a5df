package inventory

import (
	"fmt"
	"sort"
)

// Host returns the named host, or nil.
func (inv *Inventory) Host(name string) *Host {
	for _, h := range inv.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Has reports whether name is a group (AllGroup included) or a host.
func (inv *Inventory) Has(name string) bool {
	return name == AllGroup || inv.Groups[name] != nil || inv.Host(name) != nil
}

// Targets returns every name on: may use, sorted: AllGroup, the groups and
// the hosts.
func (inv *Inventory) Targets() []string {
	out := []string{AllGroup}
	for g := range inv.Groups {
		out = append(out, g)
	}
	for _, h := range inv.Hosts {
		out = append(out, h.Name)
	}
	sort.Strings(out)
	return out
}

// InGroup reports whether host h is in group g (every host is in AllGroup).
func (h *Host) InGroup(g string) bool {
	if g == AllGroup {
		return true
	}
	for _, x := range h.Groups {
		if x == g {
			return true
		}
	}
	return false
}

// Resolve expands group and host names to hosts, in inventory order and
// without duplicates. An unknown name is an error.
func (inv *Inventory) Resolve(targets []string) ([]*Host, error) {
	for _, t := range targets {
		if !inv.Has(t) {
			return nil, fmt.Errorf("resolve targets: unknown group or host %q in inventory %s", t, inv.File)
		}
	}
	var out []*Host
	for _, h := range inv.Hosts {
		for _, t := range targets {
			if t == h.Name || inv.Groups[t] != nil && h.InGroup(t) || t == AllGroup {
				out = append(out, h)
				break
			}
		}
	}
	return out, nil
}

// HostVars returns host h's variables: the inventory's, overridden by its
// groups' in the order the host lists them, overridden by the host's own.
func (inv *Inventory) HostVars(h *Host) map[string]string {
	out := make(map[string]string, len(inv.Vars)+len(h.Vars))
	for k, v := range inv.Vars {
		out[k] = v
	}
	for _, g := range h.Groups {
		if grp := inv.Groups[g]; grp != nil {
			for k, v := range grp.Vars {
				out[k] = v
			}
		}
	}
	for k, v := range h.Vars {
		out[k] = v
	}
	return out
}
