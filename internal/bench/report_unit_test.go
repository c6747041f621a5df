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
	md := markdown(r)
	for _, want := range []string{
		"| 20 | 16.67 | 20.00 | 1.20 | 0.30 |",
		"| containment of 20 gateways | under 0.35 s | 0.300 s | met |",
		"| containment of 1 gateway (process start included) | under 0.12 s | 0.200 s | **MISSED** |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
