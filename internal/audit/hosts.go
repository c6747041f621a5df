package audit

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/runbook-dev/runbook/internal/inventory"
	"github.com/runbook-dev/runbook/internal/litellm"
	"github.com/runbook-dev/runbook/internal/step/firewall"
	"github.com/runbook-dev/runbook/internal/transport"
)

// tokenRE matches what may be a LiteLLM key in a file.
var tokenRE = regexp.MustCompile(`sk-[A-Za-z0-9_-]+`)

// ConfigFiles reads, over each host's transport, the files its
// client_config_files variable names and looks for the master key by hash:
// every candidate token in a file is hashed on the runner and compared with
// the hashes of the master key's versions. The key itself is never sent
// anywhere. The current key in a file fails; an earlier version warns (a
// stale configuration).
func ConfigFiles(ctx context.Context, env Env, master []masterKey) []Result {
	inv := env.Inventory
	var hosts []*inventory.Host
	for _, h := range sortedHosts(inv.Hosts) {
		if strings.TrimSpace(inv.HostVars(h)[HostVarConfigFiles]) != "" {
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return []Result{{Check: CheckMasterInConfig, Status: Warn,
			Reason: "no host names client configuration files to scan (host variable " + HostVarConfigFiles + ": comma-separated paths)"}}
	}
	if len(master) == 0 {
		return []Result{{Check: CheckMasterInConfig, Status: Warn, Reason: "cannot check: the master key could not be read from Vault"}}
	}
	return perHost(hosts, func(h *inventory.Host) Result {
		return scanHost(ctx, env, h, master)
	})
}

func scanHost(ctx context.Context, env Env, h *inventory.Host, master []masterKey) Result {
	r := Result{Check: CheckMasterInConfig, Target: h.Name}
	var files []string
	for _, f := range strings.Split(env.Inventory.HostVars(h)[HostVarConfigFiles], ",") {
		if f = strings.TrimSpace(f); f != "" {
			files = append(files, f)
		}
	}
	tr, err := env.Transport(ctx, h)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return r
	}
	byHash := map[string]masterKey{}
	for _, k := range master {
		byHash[k.Hash] = k
	}
	var current, stale, unread []string
	for _, f := range files {
		if !strings.HasPrefix(f, "/") {
			unread = append(unread, f+": not an absolute path")
			continue
		}
		res, err := tr.Run(ctx, transport.Command{Args: []string{"cat", "--", f}, Sudo: true})
		if err != nil {
			unread = append(unread, f+": "+env.mask(err))
			continue
		}
		if res.ExitCode != 0 {
			unread = append(unread, fmt.Sprintf("%s: cannot read (exit %d)", f, res.ExitCode))
			continue
		}
		seen := map[int]bool{}
		for _, tok := range tokenRE.FindAll(res.Stdout, -1) {
			k, ok := byHash[litellm.HashToken(string(tok))]
			if !ok || seen[k.Version] {
				continue
			}
			seen[k.Version] = true
			if k.Current {
				current = append(current, fmt.Sprintf("%s: holds the current master key (version %d)", f, k.Version))
			} else {
				stale = append(stale, fmt.Sprintf("%s: holds an earlier master key (version %d)", f, k.Version))
			}
		}
		// Drop the file's bytes now: they may hold other secrets.
		clear(res.Stdout)
	}
	r.Details = append(append(append(r.Details, current...), stale...), unread...)
	switch {
	case len(current) > 0:
		r.Status, r.Reason = Fail, fmt.Sprintf("the master key is in %d client configuration files: clients must use virtual keys; rotate the master key if these files were shared", len(current))
	case len(stale) > 0:
		r.Status, r.Reason = Warn, fmt.Sprintf("an earlier master key is in %d client configuration files", len(stale))
	case len(unread) > 0:
		r.Status, r.Reason = Warn, fmt.Sprintf("%d of %d files could not be read", len(unread), len(files))
	default:
		r.Status, r.Reason = Pass, fmt.Sprintf("no master key version in %d files", len(files))
	}
	return r
}

// Containment lists, on every host, the firewall DROP rules the runner
// made (their comment is "runbook:RUN:TAG") that are still in place:
// containment that was never lifted keeps the proxy unreachable.
func Containment(ctx context.Context, env Env) []Result {
	hosts := sortedHosts(env.Inventory.Hosts)
	if len(hosts) == 0 {
		return []Result{{Check: CheckContainment, Status: Warn, Reason: "the inventory has no hosts"}}
	}
	return perHost(hosts, func(h *inventory.Host) Result {
		return containmentHost(ctx, env, h)
	})
}

func containmentHost(ctx context.Context, env Env, h *inventory.Host) Result {
	r := Result{Check: CheckContainment, Target: h.Name}
	tr, err := env.Transport(ctx, h)
	if err != nil {
		r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
		return r
	}
	var found []string
	listed := 0
	for _, bin := range []string{"iptables", "ip6tables"} {
		res, err := tr.Run(ctx, transport.Command{Args: []string{bin, "-w", "-S"}, Sudo: true})
		if err != nil {
			r.Status, r.Reason = Warn, "cannot check: "+env.mask(err)
			return r
		}
		if res.ExitCode != 0 {
			continue // ip6tables may be absent; iptables absent is caught below
		}
		listed++
		found = append(found, runnerDrops(bin, string(res.Stdout))...)
	}
	switch {
	case listed == 0:
		r.Status, r.Reason = Warn, "cannot list the firewall rules (iptables -S failed)"
	case len(found) > 0:
		r.Details = found
		r.Status, r.Reason = Fail, fmt.Sprintf("%d DROP rules from runbook runs are still in place: lift them (runbook exec lift-containment) once the gateway is healthy", len(found))
	default:
		r.Status, r.Reason = Pass, "no DROP rule from a runbook run is in place"
	}
	return r
}

// runnerDrops finds DROP rules with a runner's comment in `iptables -S`
// output.
func runnerDrops(bin, out string) []string {
	var found []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "-A" {
			continue
		}
		var run, tag string
		var ok, drop bool
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "--comment":
				run, tag, ok = firewall.ParseComment(strings.Trim(f[i+1], `"`))
			case "-j":
				drop = f[i+1] == "DROP"
			}
		}
		if ok && drop {
			found = append(found, fmt.Sprintf("%s chain %s: run %s, step %s", bin, f[1], run, tag))
		}
	}
	return found
}

// perHost runs fn for every host at once and returns the results in the
// hosts' order.
func perHost(hosts []*inventory.Host, fn func(*inventory.Host) Result) []Result {
	out := make([]Result, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = fn(h)
		}()
	}
	wg.Wait()
	return out
}
