package litellm

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/secret"
)

// fakeProxy answers the three endpoints the probes use, as LiteLLM does:
// readiness always 200 with the db field, /v1/models 200 for good and 401
// otherwise.
func fakeProxy(t *testing.T, good string, db string) (port int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health/liveliness", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`"I'm alive!"`)) })
	mux.HandleFunc("GET /health/readiness", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"healthy","db":"` + db + `","cache":null}` + "\n"))
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+good {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Write([]byte(`{"data":[],"object":"list"}`))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func TestProbeHTTP(t *testing.T) {
	good, bad := "sk-good-0123456789", "sk-bad-0123456789"
	port := fakeProxy(t, good, "connected")
	h := ProbeHTTP(context.Background(), http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(port), []secret.Value{secret.New(good), secret.New(bad)})
	if !h.Serving() || h.Models[0] != 200 || h.Models[1] != 401 || h.Err != "" {
		t.Fatalf("%+v", h)
	}
	port = fakeProxy(t, good, "Not connected")
	if h := ProbeHTTP(context.Background(), http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(port), nil); h.Serving() || h.Readiness != 200 {
		t.Fatalf("db not connected but serving: %+v", h)
	}
	// Nothing listens: no answer, no failure.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	h = ProbeHTTP(context.Background(), http.DefaultClient, "http://"+addr, []secret.Value{secret.New(good)})
	if h.Liveliness != 0 || h.Models[0] != 0 || h.Err == "" || strings.Contains(h.Err, good) {
		t.Fatalf("%+v", h)
	}
}

// TestProbeScript runs the probe script with bash against a real server:
// the keys go in on standard input and the output parses to what the HTTP
// probes see.
func TestProbeScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but bash is not installed")
		}
		t.Skip("no bash")
	}
	good, bad := "sk-good-0123456789", "sk-bad-0123456789"
	port := fakeProxy(t, good, "connected")
	in, err := ProbeStdin([]secret.Value{secret.New(good), secret.New(bad)})
	if err != nil {
		t.Fatal(err)
	}
	args := ProbeArgs(port, 5*time.Second)
	for _, a := range args {
		if strings.Contains(a, good) {
			t.Fatal("a key in argv")
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(in.Reveal())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	h, err := ParseProbeOutput(out, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Serving() || h.Models[0] != 200 || h.Models[1] != 401 || h.Err != "" {
		t.Fatalf("%+v\n%s", h, out)
	}

	// A closed port: every probe says 000, quickly.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	args = ProbeArgs(closed, 5*time.Second)
	cmd = exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(in.Reveal())
	cmd.Env = append(os.Environ(), "LANG=C")
	out, err = cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	h, err = ParseProbeOutput(out, 2)
	if err != nil || h.Liveliness != 0 || h.Readiness != 0 || h.Models[0] != 0 {
		t.Fatalf("%+v %v\n%s", h, err, out)
	}
}

func TestParseProbeOutput(t *testing.T) {
	h, err := ParseProbeOutput([]byte("noise\nRBPROBE liveliness 200\nRBPROBE readiness 200 {\"db\": \"connected\"}\nRBPROBE key1 401\n"), 1)
	if err != nil || !h.Serving() || h.Models[0] != 401 || h.Err != "" {
		t.Fatalf("%+v %v", h, err)
	}
	h, err = ParseProbeOutput([]byte("RBPROBE liveliness 200\n"), 1)
	if err != nil || h.Err == "" {
		t.Fatalf("a cut output is not reported: %+v %v", h, err)
	}
	for _, bad := range []string{"RBPROBE key2 200\n", "RBPROBE other 200\n", "RBPROBE liveliness 2000\n", "RBPROBE key1 ok\n"} {
		if _, err := ParseProbeOutput([]byte(bad), 1); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := ProbeStdin([]secret.Value{secret.New("a\nb")}); err == nil {
		t.Error("a key with a newline accepted")
	}
}
