package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/secret"
)

// progressEvent lets the JSON form embed an engine event beside its kind.
type progressEvent = engine.Event

// printer draws engine events: live on a terminal, plain lines otherwise,
// JSON lines with --output json. Every line goes through the masker.
type printer struct {
	mu     sync.Mutex
	w      io.Writer
	masker *secret.Masker
	mode   string // "tty", "plain", "json"
	start  time.Time
	// running hosts of the current step, for the live line.
	running map[string]time.Time
	live    bool // a live line is drawn and must be cleared first
	stop    chan struct{}
	done    chan struct{}
}

func newPrinter(w io.Writer, masker *secret.Masker, output string) *printer {
	mode := "plain"
	switch {
	case output == "json":
		mode = "json"
	case isTerminal(w):
		mode = "tty"
	}
	p := &printer{w: w, masker: masker, mode: mode, start: time.Now(), running: map[string]time.Time{}}
	if mode == "tty" {
		p.stop, p.done = make(chan struct{}), make(chan struct{})
		go p.tick()
	}
	return p
}

// Close stops the live line.
func (p *printer) Close() {
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop = nil
	}
	p.mu.Lock()
	p.clearLive()
	p.mu.Unlock()
}

func (p *printer) tick() {
	defer close(p.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			p.drawLive()
			p.mu.Unlock()
		}
	}
}

func (p *printer) clearLive() {
	if p.live {
		fmt.Fprint(p.w, "\r\033[K")
		p.live = false
	}
}

func (p *printer) drawLive() {
	p.clearLive()
	if len(p.running) == 0 {
		return
	}
	keys := make([]string, 0, len(p.running))
	for k := range p.running {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for i, k := range keys {
		if i == 4 {
			parts = append(parts, fmt.Sprintf("+%d more", len(keys)-4))
			break
		}
		parts = append(parts, fmt.Sprintf("%s %s", k, time.Since(p.running[k]).Round(100*time.Millisecond)))
	}
	fmt.Fprintf(p.w, "  ... %s", strings.Join(parts, ", "))
	p.live = true
}

// line prints one masked line.
func (p *printer) line(format string, a ...any) {
	s := p.masker.MaskString(fmt.Sprintf(format, a...))
	p.clearLive()
	fmt.Fprintln(p.w, s)
}

// Printf prints outside the event stream (summaries), masked.
func (p *printer) Printf(format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == "json" {
		return
	}
	p.clearLive()
	fmt.Fprint(p.w, p.masker.MaskString(fmt.Sprintf(format, a...)))
}

// JSON prints one JSON object as a line (json mode only).
func (p *printer) JSON(v any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != "json" {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	fmt.Fprintln(p.w, p.masker.MaskString(string(b)))
}

// Event implements engine.Progress.
func (p *printer) Event(e engine.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode == "json" {
		b, err := json.Marshal(struct {
			Kind string `json:"event"`
			progressEvent
		}{"progress", e})
		if err == nil {
			fmt.Fprintln(p.w, p.masker.MaskString(string(b)))
		}
		return
	}
	key := e.Step + " " + e.Host
	if e.Host == "" {
		key = e.Step
	}
	switch e.Type {
	case engine.EventStepStart:
		where := "once"
		if e.Hosts > 0 {
			where = fmt.Sprintf("%d host(s)", e.Hosts)
		}
		phase := ""
		if e.Phase != "" {
			phase = "[" + e.Phase + "] "
		}
		p.line("%s %s%s (%s, %s)", p.stamp(e.Time), phase, e.Step, e.Kind, where)
	case engine.EventHostStart:
		p.running[key] = e.Time
	case engine.EventRetry:
		p.line("%s   %s: retrying: %s", p.stamp(e.Time), hostOr(e.Host), e.Message)
	case engine.EventHostDone:
		delete(p.running, key)
		it := e.Item
		detail := ""
		switch {
		case it.Error != "":
			detail = ": " + it.Error
		case it.Change != "":
			detail = ": " + it.Change
		case it.Reason != "":
			detail = ": " + it.Reason
		}
		p.line("%s   %-12s %s%s (%s)", p.stamp(e.Time), hostOr(it.Host), it.Status, detail, it.Elapsed.Round(time.Millisecond))
	case engine.EventNote:
		p.line("%s   %s", p.stamp(e.Time), e.Message)
	}
	if p.mode == "tty" {
		p.drawLive()
	}
}

func (p *printer) stamp(t time.Time) string {
	return fmt.Sprintf("[%7.3fs]", t.Sub(p.start).Seconds())
}

func hostOr(h string) string {
	if h == "" {
		return "(once)"
	}
	return h
}

// renderPlan prints a plan: per step and host, ok / change / change after.
func renderPlan(w io.Writer, l *loaded, res *engine.Result, masker *secret.Masker) {
	var b strings.Builder
	fmt.Fprintf(&b, "Plan: %s on %s (%s)\n", l.rb.Name, envName(l), l.inv.File)
	phase := "\x00"
	step := ""
	counts := map[engine.Status]int{}
	for _, it := range res.Items {
		counts[it.Status]++
		if it.Phase != phase {
			phase = it.Phase
			if phase != "" {
				fmt.Fprintf(&b, "\n%s\n", phase)
			}
		}
		if it.Step != step {
			step = it.Step
			fmt.Fprintf(&b, "  %s (%s)\n", it.Step, it.Kind)
		}
		switch it.Status {
		case engine.StatusChange:
			fmt.Fprintf(&b, "    %-12s change: %s\n", hostOr(it.Host), it.Change)
		case engine.StatusChangeAfter:
			fmt.Fprintf(&b, "    %-12s change after %s\n", hostOr(it.Host), it.After)
		case engine.StatusFailed:
			fmt.Fprintf(&b, "    %-12s error: %s\n", hostOr(it.Host), it.Error)
		case engine.StatusSkipped:
			fmt.Fprintf(&b, "    %-12s skipped: %s\n", hostOr(it.Host), it.Reason)
		default:
			fmt.Fprintf(&b, "    %-12s %s\n", hostOr(it.Host), it.Status)
		}
	}
	fmt.Fprintf(&b, "\n%d to change, %d after an earlier change, %d ok", counts[engine.StatusChange], counts[engine.StatusChangeAfter], counts[engine.StatusOK])
	if n := counts[engine.StatusSkipped]; n > 0 {
		fmt.Fprintf(&b, ", %d skipped", n)
	}
	if n := counts[engine.StatusFailed]; n > 0 {
		fmt.Fprintf(&b, ", %d could not be checked", n)
	}
	b.WriteString(".\n")
	fmt.Fprint(w, masker.MaskString(b.String()))
}

func envName(l *loaded) string {
	if l.inv.Environment != "" {
		return l.inv.Environment
	}
	return "inventory"
}
