package labtest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runbook-dev/runbook/internal/secret"
)

// LoadOptions bound a Load; zero means no bound. Finish stops it only once
// Min requests went out; it stops by itself after Max requests or when
// Limit has passed.
type LoadOptions struct {
	Min, Max int64
	Limit    time.Duration
}

// Load sends requests through the lab's nginx (loopback only) from several
// clients until Finish. Each request opens its own connection, so a failure
// is nginx's or a gateway's, never a client reusing a connection the
// server was closing. A request fails on a transport error or any status
// but 200.
type Load struct {
	Total, Failed atomic.Int64

	mu       sync.Mutex
	failures []string
	stop     chan struct{}
	once     sync.Once
	done     sync.WaitGroup
	started  time.Time
	elapsed  time.Duration
}

// StartLoad starts clients senders. Sender w sends request(w), then
// request(w+1), and so on: a request that alternates on i%2 alternates for
// every sender, each starting on its own side.
func StartLoad(clients int, o LoadOptions, request func(i int) (*http.Request, error)) *Load {
	g := &Load{stop: make(chan struct{}), started: time.Now()}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	var deadline time.Time
	if o.Limit > 0 {
		deadline = g.started.Add(o.Limit)
	}
	for w := 0; w < clients; w++ {
		g.done.Add(1)
		go func() {
			defer g.done.Done()
			for i := w; ; i++ {
				n := g.Total.Load()
				if (o.Max > 0 && n >= o.Max) || (!deadline.IsZero() && time.Now().After(deadline)) {
					return
				}
				select {
				case <-g.stop:
					if n >= o.Min {
						return
					}
				default:
				}
				g.Total.Add(1)
				req, err := request(i)
				if err != nil {
					g.fail(err.Error())
					continue
				}
				resp, err := client.Do(req)
				if err != nil {
					g.fail(fmt.Sprintf("%s %s: %v", req.Method, req.URL.Path, err))
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					g.fail(fmt.Sprintf("%s %s: status %d", req.Method, req.URL.Path, resp.StatusCode))
				}
			}
		}()
	}
	return g
}

func (g *Load) fail(s string) {
	g.Failed.Add(1)
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.failures) < 10 {
		g.failures = append(g.failures, fmt.Sprintf("at %v: %s", time.Since(g.started).Round(time.Millisecond), s))
	}
}

// Failures are the first ten failed requests, with when they failed.
func (g *Load) Failures() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.failures...)
}

// Finish stops the load (once Min requests went out) and waits for the
// requests in flight. It may be called more than once.
func (g *Load) Finish() {
	g.once.Do(func() {
		close(g.stop)
		g.done.Wait()
		g.elapsed = time.Since(g.started)
	})
}

// Elapsed is how long the load ran, once finished.
func (g *Load) Elapsed() time.Duration { return g.elapsed }

// ChatRequest is a chat completion of model through addr with a virtual
// key (in the Authorization header, never in the URL).
func ChatRequest(addr, model string, key secret.Value) (*http.Request, error) {
	body := `{"model":"` + model + `","messages":[{"role":"user","content":"ping"}]}`
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key.Reveal())
	return req, nil
}

// ModelsRequest lists the models through addr with a virtual key.
func ModelsRequest(addr string, key secret.Value) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/models", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key.Reveal())
	return req, nil
}

// ChatOrModels alternates: a chat completion on even i, a model list on
// odd.
func ChatOrModels(addr, model string, key secret.Value) func(i int) (*http.Request, error) {
	return func(i int) (*http.Request, error) {
		if i%2 == 0 {
			return ChatRequest(addr, model, key)
		}
		return ModelsRequest(addr, key)
	}
}
