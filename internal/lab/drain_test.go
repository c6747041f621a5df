package lab_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/lab"
	"github.com/runbook-dev/runbook/internal/lab/labtest"
	"github.com/runbook-dev/runbook/internal/secret"
)

// TestDrainTakesAGatewayOutOfNginx drains gw1 under load through nginx,
// restarts it while POST requests keep coming, and undrains it: no request
// fails and, while drained, none reaches gw1.
func TestDrainTakesAGatewayOutOfNginx(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	g := l.Gateway("gw1")
	t.Cleanup(func() {
		if out, err := l.Systemctl(ctx, g, "start", "litellm"); err != nil {
			t.Errorf("start gw1: %v: %s", err, out)
		}
		if err := l.Undrain(ctx, "gw1"); err != nil {
			t.Errorf("undrain gw1: %v", err)
		}
	})
	if !slices.Contains(l.EnvLines(), "export RUNBOOK_LAB_DIR='"+l.Dir+"'") {
		t.Errorf("env lines do not export RUNBOOK_LAB_DIR: %d lines", len(l.EnvLines()))
	}
	for _, name := range []string{"gw9", "198.18.255.255", ""} {
		err := l.Drain(ctx, name)
		if err == nil || !strings.Contains(err.Error(), "drain "+name+": no such gateway") {
			t.Errorf("drain %q: %v, want no such gateway", name, err)
		}
	}

	key := chatKey(t, l)
	accessLog := filepath.Join(l.Nginx.Dir, "access.log")
	// Liveliness checks, and once post is set every other request a chat
	// completion.
	var post atomic.Bool
	var posts atomic.Int64
	load := labtest.StartLoad(4, labtest.LoadOptions{}, func(i int) (*http.Request, error) {
		if post.Load() && i%2 == 0 {
			posts.Add(1)
			return labtest.ChatRequest(l.Nginx.Addr, "gpt-4o-mini", key)
		}
		return http.NewRequest(http.MethodGet, "http://"+l.Nginx.Addr+"/health/liveliness", nil)
	})
	defer load.Finish()

	off := fileSize(t, accessLog)
	time.Sleep(300 * time.Millisecond)
	if n := upstreamCounts(t, accessLog, off)[g.Address]; n == 0 {
		t.Fatalf("before the drain gw1 served no request")
	}

	// nginx keeps idle connections to gw1 open (keepalive 32): those are
	// what a restart of gw1 can close under a request.
	pooled := establishedOn4000(t, g)
	t.Logf("established connections to gw1 before the drain: %d", pooled)
	if pooled == 0 {
		t.Errorf("under load gw1 has no established connection on port 4000")
	}
	start := time.Now()
	if err := l.Drain(ctx, "gw1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("drain gw1: %s", time.Since(start).Round(time.Millisecond))
	// No worker from before the reload is left, so no pooled upstream
	// connection to gw1 either: gw1 sees none open.
	if n := establishedOn4000(t, g); n != 0 {
		t.Errorf("after the drain gw1 has %d established connections on port 4000", n)
	}
	start = time.Now()
	if err := l.Drain(ctx, g.Address); err != nil {
		t.Fatalf("drain gw1 again, by address: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("draining a drained gateway took %s: it should do nothing", d)
	}
	conf, err := os.ReadFile(filepath.Join(l.Nginx.Dir, "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "server "+g.Address+":4000 down ") {
		t.Errorf("nginx.conf does not mark gw1 down")
	}
	// The mark is in the lab's state: Up of the same lab keeps it.
	cfg := l.Config
	reused, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if reused.Nginx.PID != l.Nginx.PID || !slices.Equal(reused.Nginx.Drained, []string{"gw1"}) {
		t.Errorf("lab up again: nginx pid %d (was %d), drained %v", reused.Nginx.PID, l.Nginx.PID, reused.Nginx.Drained)
	}

	off = fileSize(t, accessLog)
	time.Sleep(time.Second)
	counts := upstreamCounts(t, accessLog, off)
	t.Logf("requests per gateway in the second after the drain: %v", counts)
	if counts[g.Address] != 0 {
		t.Errorf("gw1 got %d requests while drained", counts[g.Address])
	}
	for _, o := range l.Gateways[1:] {
		if counts[o.Address] == 0 {
			t.Errorf("%s served no request while gw1 was drained", o.Name)
		}
	}

	// POST requests, which nginx does not retry on another gateway, while
	// gw1 stops and starts again.
	post.Store(true)
	time.Sleep(200 * time.Millisecond)
	if out, err := l.Systemctl(ctx, g, "stop", "litellm"); err != nil {
		t.Fatalf("stop gw1: %v: %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	if out, err := l.Systemctl(ctx, g, "start", "litellm"); err != nil {
		t.Fatalf("start gw1: %v: %s", err, out)
	}

	start = time.Now()
	if err := l.Undrain(ctx, "gw1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("undrain gw1: %s", time.Since(start).Round(time.Millisecond))
	if err := l.Undrain(ctx, "gw1"); err != nil {
		t.Fatalf("undrain gw1 again: %v", err)
	}
	off = fileSize(t, accessLog)
	time.Sleep(time.Second)
	counts = upstreamCounts(t, accessLog, off)
	t.Logf("requests per gateway in the second after the undrain: %v", counts)
	if counts[g.Address] == 0 {
		t.Errorf("gw1 got no request after the undrain")
	}
	load.Finish()
	t.Logf("load: %d requests (%d POST), %d failed", load.Total.Load(), posts.Load(), load.Failed.Load())
	if load.Failed.Load() != 0 {
		t.Errorf("%d requests failed: %s", load.Failed.Load(), strings.Join(load.Failures(), "; "))
	}
	if posts.Load() == 0 {
		t.Errorf("no POST request was sent")
	}
}

// TestDrainWaitsForOldWorkers holds a request in an nginx worker (its
// body unfinished): Drain waits for that worker, and gives up after
// DrainTimeout with an error that names the gateway. Undrain afterwards
// puts the gateway back although the state never said it was drained.
func TestDrainWaitsForOldWorkers(t *testing.T) {
	l := sharedLab(t)
	ctx := context.Background()
	c, err := net.Dial("tcp", l.Nginx.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: lab\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	defer func(d time.Duration) { lab.DrainTimeout = d }(lab.DrainTimeout)
	lab.DrainTimeout = 300 * time.Millisecond
	err = l.Drain(ctx, "gw2")
	t.Logf("drain with a request held: %v", err)
	if err == nil || !strings.Contains(err.Error(), "drain gw2: ") || !strings.Contains(err.Error(), "from before the reload still run") {
		t.Fatalf("drain with a request held: %v, want the old worker still running", err)
	}
	c.Close()
	lab.DrainTimeout = 10 * time.Second
	if err := l.Undrain(ctx, "gw2"); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(l.Nginx.Dir, "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(conf), " down ") || len(l.Nginx.Drained) != 0 {
		t.Errorf("after undrain: drained %v, nginx.conf marks a server down: %v", l.Nginx.Drained, strings.Contains(string(conf), " down "))
	}
}

// chatKey is a seeded virtual key with which a chat completion through
// nginx succeeds.
func chatKey(t *testing.T, l *lab.Lab) secret.Value {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	now := time.Now()
	for _, k := range l.Seed.Keys {
		if !k.Valid(now.Add(time.Hour)) {
			continue
		}
		req, err := labtest.ChatRequest(l.Nginx.Addr, "gpt-4o-mini", k.Key)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("chat completion: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return k.Key
		}
	}
	t.Fatal("no seeded key is allowed a chat completion")
	return secret.Value{}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// upstreamCounts counts the requests per gateway address (every gateway
// tried) in nginx's access log from byte off on.
func upstreamCounts(t *testing.T, path string, off int64) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		_, rest, ok := strings.Cut(sc.Text(), " upstream=")
		if !ok {
			t.Fatalf("access log line without upstream=: %q", sc.Text())
		}
		// "ADDR:4000, ADDR:4000" when nginx tried more than one.
		addrs, _, _ := strings.Cut(rest, " upstream_status=")
		for _, a := range strings.Split(addrs, ",") {
			host, _, _ := strings.Cut(strings.TrimSpace(a), ":")
			counts[host]++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return counts
}

// establishedOn4000 counts the established TCP connections to port 4000
// in g's network namespace (the gateway's socket is dual-stack, so they
// show in tcp6).
func establishedOn4000(t *testing.T, g *lab.Gateway) int {
	t.Helper()
	n := 0
	for _, file := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", g.SSHDPID, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 3 && strings.HasSuffix(f[1], ":0FA0") && f[3] == "01" {
				n++
			}
		}
	}
	return n
}
