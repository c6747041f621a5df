package bench_test

import (
	"strings"
	"testing"
)

// TestReport checks the report's arithmetic and verdicts on made-up
// figures; it needs no lab.
func TestReport(t *testing.T) {
	r := &Results{Mode: "full", Machine: map[string]string{}, Versions: map[string]string{}}
	add := func(way string, n int, v ...float64) {
		s := &Sample{Way: way, Gateways: n, Seconds: v}
		summarize(s)
		r.Samples = append(r.Samples, s)
	}
	add(wayRunbook, 20, 0.30, 0.20, 0.40, 0.25, 0.35)
	add(wayAnsible, 20, 5, 6, 4, 5, 5)
	add(wayAnsibleStock, 20, 6, 6, 6, 6, 6)
	add(wayOpenSSH, 20, 1, 1, 1, 1, 1)
	add(wayFloor, 20, 0.25, 0.25, 0.25, 0.25)
	add(wayRunbook, 1, 0.2)
	s := r.find(wayRunbook, 20)
	if s.Median != 0.30 || s.Min != 0.20 || s.Max != 0.40 {
		t.Fatalf("summary %+v", s)
	}
	if f := r.find(wayFloor, 20); f.Median != 0.25 {
		t.Fatalf("even median %v", f.Median)
	}
	series := func(v ...float64) Series {
		var s Series
		for _, x := range v {
			s.add(x)
		}
		return s
	}
	r.Plan = &PlanResult{Gateways: 20, Seconds: series(0.9, 1.1, 0.8), CPUSeconds: series(0.1), MaxRSSMiB: series(30)}
	r.Reissue = []*ReissueResult{
		{Keys: 10000, Seconds: series(6, 4, 5, 7, 3), StepSeconds: series(4), RunnerCPU: series(1), VaultCPU: series(8), MaxRSSMiB: series(40, 45)},
		{Keys: 100000, Seconds: series(29.5), MaxRSSMiB: series(151), Note: "1 timed run"},
	}
	r.Compromise = &CompromiseResult{Gateways: 3, Keys: 10000, Seconds: series(16, 14, 15.5), MaxRSSMiB: series(60),
		Steps: []*NamedSeries{{Name: "reissue", Seconds: series(9)}, {Name: "rollout", Seconds: series(4)}}}
	r.Rotation = &RotationResult{Gateways: 3, Clients: 8, Seconds: series(9, 9), Requests: series(100, 120), Failed: series(0, 2),
		Failures: []string{"run 2: at 1s: GET /v1/models: status 502"}}
	r.Elapsed = 600
	md := markdown(r)
	for _, want := range []string{
		"at this run's medians, take 7.2 minutes before any lab",
		"starts (4.6 minutes with each re-issue size run as often as here)",
		"| 20 | 16.67 | 20.00 | 1.20 | 0.30 |",
		"| containment of 20 gateways | under 0.35 s | 0.300 s | met |",
		"| containment of 1 gateway (process start included) | under 0.12 s | 0.200 s | **MISSED** |",
		"| plan of compromise-master on 20 gateways | under 1 s | 0.900 s | met |",
		"| re-issue of 10,000 keys, Vault writes included | under 5 s | 5.000 s | **MISSED** |",
		"| re-issue of 100,000 keys, Vault writes included | under 30 s | 29.500 s | met |",
		"| compromise-master end to end, 3 gateways, 10,000 keys | under 15 s | 15.500 s | **MISSED** |",
		"| rotate-master on 3 gateways under load: failed requests | zero | 2 of 220 | **MISSED** |",
		"| peak RSS, re-issue of 10,000 keys | under 150 MiB | 45.0 MiB | met |",
		"| peak RSS, re-issue of 100,000 keys | under 150 MiB | 151.0 MiB | **MISSED** |",
		"| 10,000 | 5 | 5.00 s (3.00 s to 7.00 s) | 4.00 s | 2000 |",
		"100,000 keys: 1 timed run.",
		"| step reissue | | 9.00 s |",
		"the longest steps: reissue 9.00 s, rollout 4.00 s.",
		"- run 2: at 1s: GET /v1/models: status 502",
		"per key the runner spent 100 µs of CPU and Vault 800 µs",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if count(1000) != "1,000" || count(100000) != "100,000" || count(50) != "50" {
		t.Errorf("count: %s %s %s", count(1000), count(100000), count(50))
	}
}

// TestParseTop reads the top of `go tool pprof -top -cum`.
func TestParseTop(t *testing.T) {
	out := `File: vaultserver
Type: cpu
Duration: 25.16s, Total samples = 10.70s (42.52%)
Showing nodes accounting for 7.31s, 68.32% of 10.70s total
      flat  flat%   sum%        cum   cum%
         0     0%     0%      7.79s 72.80%  net/http.(*conn).serve
         0     0% 0.093%      6.32s 59.07%  github.com/hashicorp/vault/vault.(*Core).HandleRequest (inline)
     0.01s 0.093%  0.28%      4.66s 43.55%  runtime.systemstack
         0     0% 31.03%      3.32s 31.03%  github.com/hashicorp/vault/vault.(*PolicyStore).ACL
     0.27s  2.52% 38.79%      3.08s 28.79%  crypto/internal/fips140/hmac.New[go.shape.interface { BlockSize int }]
         0     0% 37.48%      1.88s 17.57%  runtime.gcBgMarkWorker
     0.01s 0.093% 30.84%      2.38s 22.24%  runtime.gcAssistAlloc
`
	header, gc, top := parseTop(out)
	if header != "Duration: 25.16s, Total samples = 10.70s (42.52%)" {
		t.Errorf("header %q", header)
	}
	if gc < 39.80 || gc > 39.82 {
		t.Errorf("gc %v", gc)
	}
	want := []string{"github.com/hashicorp/vault/vault.(*Core).HandleRequest (inline)", "github.com/hashicorp/vault/vault.(*PolicyStore).ACL",
		"crypto/internal/fips140/hmac.New[go.shape.interface { BlockSize int }]"}
	if len(top) != len(want) {
		t.Fatalf("top %+v", top)
	}
	for i, w := range want {
		if top[i].Func != w {
			t.Errorf("top[%d] = %q, want %q", i, top[i].Func, w)
		}
	}
	if top[2].FlatPct != 2.52 || top[2].CumPct != 28.79 {
		t.Errorf("percentages %+v", top[2])
	}
}
