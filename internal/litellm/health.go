package litellm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/internal/secret"
)

// Health is what one round of probes saw of a proxy. Status codes are 0
// when the request got no answer (refused, timed out, cut).
type Health struct {
	// Liveliness is the status of GET /health/liveliness (200 when up, 503
	// while shutting down).
	Liveliness int
	// Readiness is the status of GET /health/readiness; DB is its "db"
	// field ("connected" when healthy). The endpoint can answer 200 while
	// the database is down: only DB tells.
	Readiness int
	DB        string
	// Models holds the status of GET /v1/models for each key probed, in
	// the order given: 200 for a key the proxy accepts, 401 for one it
	// refuses.
	Models []int
	// Err describes the first request that got no answer. It never holds
	// a key.
	Err string
}

// Serving reports whether the proxy is up and has its database.
func (h Health) Serving() bool {
	return h.Liveliness == http.StatusOK && h.Readiness == http.StatusOK && h.DB == "connected"
}

// Summary describes the probes in a few words, for errors and logs.
func (h Health) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "liveliness %s, readiness %s", code(h.Liveliness), code(h.Readiness))
	if h.Readiness == http.StatusOK {
		db := h.DB
		if db == "" {
			db = "(none)"
		}
		fmt.Fprintf(&b, " (db %s)", db)
	}
	for i, c := range h.Models {
		fmt.Fprintf(&b, ", key %d: /v1/models %s", i+1, code(c))
	}
	if h.Err != "" {
		b.WriteString("; " + h.Err)
	}
	return b.String()
}

func code(c int) string {
	if c == 0 {
		return "no answer"
	}
	return strconv.Itoa(c)
}

// The proxy's endpoints the probes use.
const (
	PathLiveliness = "/health/liveliness"
	PathReadiness  = "/health/readiness"
	PathModels     = "/v1/models"
)

// maxProbeBody bounds what a probe reads of a response.
const maxProbeBody = 64 << 10

// ProbeHTTP probes the proxy at base (http://host:port) from here: the two
// health endpoints, then /v1/models with each key as a bearer token. Keys
// travel only in the Authorization header. Requests that get no answer
// leave their status 0; ProbeHTTP itself does not fail.
func ProbeHTTP(ctx context.Context, c *http.Client, base string, keys []secret.Value) Health {
	base = strings.TrimRight(base, "/")
	var h Health
	get := func(path string, key secret.Value) (int, []byte) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			h.noteErr(fmt.Sprintf("GET %s: %v", path, err))
			return 0, nil
		}
		if !key.IsZero() {
			req.Header.Set("Authorization", "Bearer "+key.Reveal())
		}
		req.Close = true
		resp, err := c.Do(req)
		if err != nil {
			h.noteErr(fmt.Sprintf("GET %s: %v", path, err))
			return 0, nil
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxProbeBody))
		return resp.StatusCode, body
	}
	h.Liveliness, _ = get(PathLiveliness, secret.Value{})
	var body []byte
	h.Readiness, body = get(PathReadiness, secret.Value{})
	h.DB = readinessDB(body)
	for _, k := range keys {
		st, _ := get(PathModels, k)
		h.Models = append(h.Models, st)
	}
	return h
}

func (h *Health) noteErr(s string) {
	if h.Err == "" {
		h.Err = s
	}
}

// readinessDB is the "db" field of a readiness answer ("" when absent).
func readinessDB(body []byte) string {
	var r struct {
		DB any `json:"db"`
	}
	if json.Unmarshal(bytes.TrimSpace(body), &r) != nil {
		return ""
	}
	s, _ := r.DB.(string)
	return s
}

// ProbeScript makes the probes of ProbeHTTP from the gateway itself,
// against 127.0.0.1, for a proxy whose port the runner cannot reach (closed
// by a containment firewall rule, say). It needs nothing but bash: each
// request goes through bash's /dev/tcp redirection and its printf and read
// builtins, so the keys, read from standard input one per line, never
// become a process argument. Its argument is the port. For each probe it
// prints one line: "RBPROBE NAME STATUS" (000 for no answer), with the
// readiness answer's body, joined on one line, after the status.
//
// A connection to a port that drops packets (rather than refusing them)
// waits for the kernel's connect timeout, so run it under a time limit:
// ProbeArgs wraps it in coreutils' timeout.
const ProbeScript = `set -u
port=$1
keys=()
while IFS= read -r k || [ -n "$k" ]; do keys+=("$k"); done
probe() {
	local name=$1 path=$2 key=${3-} line status=000 body= inbody=
	if ! { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
		printf 'RBPROBE %s 000\n' "$name"
		return
	fi
	if [ -n "$key" ]; then
		printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' "$path" "$key" >&3
	else
		printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
	fi
	if IFS= read -r -t 5 line <&3; then
		status=${line#* }
		status=${status%% *}
		case $status in [0-9][0-9][0-9]) ;; *) status=000 ;; esac
		while IFS= read -r -t 5 line <&3 || [ -n "$line" ]; do
			line=${line%$'\r'}
			if [ -n "$inbody" ]; then
				body+=$line
			elif [ -z "$line" ]; then
				inbody=1
			fi
			line=
		done
	fi
	exec 3<&-
	if [ "$name" = readiness ]; then
		printf 'RBPROBE %s %s %s\n' "$name" "$status" "$body"
	else
		printf 'RBPROBE %s %s\n' "$name" "$status"
	fi
}
probe liveliness /health/liveliness
probe readiness /health/readiness
i=0
for k in "${keys[@]}"; do
	i=$((i + 1))
	probe "key$i" /v1/models "$k"
done
`

// ProbeArgs is the command that runs ProbeScript on a gateway against
// 127.0.0.1:port, bounded by limit.
func ProbeArgs(port int, limit time.Duration) []string {
	secs := int(limit / time.Second)
	if secs < 1 {
		secs = 1
	}
	return []string{"timeout", strconv.Itoa(secs), "bash", "-c", ProbeScript, "litellm-probe", strconv.Itoa(port)}
}

// ProbeStdin is ProbeScript's standard input: the keys, one per line. A
// key with a line break cannot be sent and is an error.
func ProbeStdin(keys []secret.Value) (secret.Value, error) {
	var b strings.Builder
	for i, k := range keys {
		if k.IsZero() || strings.ContainsAny(k.Reveal(), "\r\n\x00") {
			return secret.Value{}, fmt.Errorf("probe key %d is empty or holds a line break", i+1)
		}
		b.WriteString(k.Reveal())
		b.WriteByte('\n')
	}
	return secret.New(b.String()), nil
}

// ErrProbeOutput is wrapped by errors about output ProbeScript cannot
// have printed.
var ErrProbeOutput = errors.New("unexpected probe output")

// ParseProbeOutput reads what ProbeScript printed for nkeys keys. Probes
// missing from the output (the time limit cut the script) count as no
// answer.
func ParseProbeOutput(out []byte, nkeys int) (Health, error) {
	h := Health{Models: make([]int, nkeys)}
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 4096), maxProbeBody+256)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "RBPROBE ")
		if !ok {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		st, body, _ := strings.Cut(rest, " ")
		status, err := strconv.Atoi(st)
		if err != nil || len(st) != 3 {
			return h, fmt.Errorf("%w: status %q of %s", ErrProbeOutput, st, name)
		}
		seen++
		switch {
		case name == "liveliness":
			h.Liveliness = status
		case name == "readiness":
			h.Readiness = status
			h.DB = readinessDB([]byte(body))
		case strings.HasPrefix(name, "key"):
			n, err := strconv.Atoi(name[3:])
			if err != nil || n < 1 || n > nkeys {
				return h, fmt.Errorf("%w: probe %q", ErrProbeOutput, name)
			}
			h.Models[n-1] = status
		default:
			return h, fmt.Errorf("%w: probe %q", ErrProbeOutput, name)
		}
	}
	if seen < 2+nkeys {
		h.noteErr(fmt.Sprintf("%d of %d probes answered before the time limit", seen, 2+nkeys))
	}
	return h, nil
}
