package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/runbook-dev/runbook/internal/engine"
	"github.com/runbook-dev/runbook/internal/journal"
	"github.com/runbook-dev/runbook/internal/record"
	"github.com/runbook-dev/runbook/internal/secret"
	"github.com/runbook-dev/runbook/internal/state"
)

// plan runs every step's observation and nothing else. It writes nothing:
// no lock, no journal, no record.
func (g *globals) plan(ctx context.Context, l *loaded, inputs map[string]string, masker *secret.Masker, progress engine.Progress) (*engine.Result, error) {
	d := newDeps(l.inv, masker, nil, g.stdin, false)
	defer d.Close()
	return engine.Run(ctx, engine.Options{
		Runbook: l.rb, Inventory: l.inv, Registry: l.reg, Inputs: inputs,
		RunID: "plan", DryRun: true, Transports: d, Deps: d,
		Secrets: masker, Progress: progress, Parallel: g.parallel,
	})
}

// runRequest is a new run or a resumed one.
type runRequest struct {
	l      *loaded
	inputs map[string]string
	reason string
	drill  bool
	// acceptNewHostKeys accepts (and journals) keys of hosts known_hosts
	// does not list; a changed key is never accepted.
	acceptNewHostKeys bool
	// For a resume: the run's id and what its journal holds.
	runID  string
	replay *journal.State
}

// execute takes the lock, journals and runs the runbook, and ends with the
// incident record, whatever happened.
func (g *globals) execute(ctx context.Context, req runRequest) (err error) {
	masker := &secret.Masker{}
	store, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	defer store.Close()

	now := time.Now().UTC()
	runID := req.runID
	if runID == "" {
		runID = newRunID(now)
	}
	hostname, _ := os.Hostname()
	holder := state.Holder{RunID: runID, Operator: g.operatorName(), Hostname: hostname, PID: os.Getpid(), Since: now}
	target := lockTarget(req.l.inv)
	lock, err := store.Lock(ctx, target, holder)
	if err != nil {
		var held *state.LockHeldError
		if errors.As(err, &held) {
			return withCode(ExitLockHeld, err)
		}
		return withCode(ExitInternal, fmt.Errorf("lock %s: %w", target, err))
	}
	defer lock.Release(context.WithoutCancel(ctx))

	p := newPrinter(g.stdout, masker, g.output)
	defer p.Close()
	if prev := lock.TookOver(); prev != nil {
		p.Printf("took over the lock on %s from %s, whose runner is gone\n", target, prev)
	}

	var jr *engine.Journal
	if req.replay == nil {
		jr = engine.NewJournal(store, runID, masker)
		if err := jr.Write(ctx, journal.Record{Type: journal.THeader, Header: g.header(req, runID, target, holder)}); err != nil {
			return withCode(ExitInternal, err)
		}
		p.Printf("run %s: %s on %s\n", runID, req.l.rb.Name, envName(req.l))
	} else {
		jr = engine.ContinueJournal(store, runID, req.replay, masker)
		if err := jr.Write(ctx, journal.Record{Type: journal.TResumed, Note: &journal.Note{Kind: "resumed", Fields: map[string]string{"operator": holder.Operator, "hostname": hostname, "pid": fmt.Sprint(holder.PID)}}}); err != nil {
			return withCode(ExitInternal, err)
		}
		p.Printf("resuming run %s: %s on %s\n", runID, req.l.rb.Name, envName(req.l))
	}

	// The first Ctrl-C (or SIGTERM) lets side effects in flight finish and
	// be journaled, then stops; a second one cancels them.
	interrupt := make(chan struct{})
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		n := 0
		for range sigs {
			n++
			if n == 1 {
				close(interrupt)
				fmt.Fprintln(g.stderr, "runbook: interrupt: finishing the side effects in flight, then stopping (Ctrl-C again to cancel them)")
				continue
			}
			cancel()
			return
		}
	}()

	d := newDeps(req.l.inv, masker, jr, g.stdin, req.acceptNewHostKeys)
	defer d.Close()
	if req.replay != nil {
		d.replayed(req.replay)
	}
	res, runErr := engine.Run(runCtx, engine.Options{
		Runbook: req.l.rb, Inventory: req.l.inv, Registry: req.l.reg, Inputs: req.inputs,
		RunID: runID, Transports: d, Deps: d, Secrets: masker, Progress: p,
		Journal: jr, Replay: req.replay, Interrupt: interrupt, Parallel: g.parallel,
	})

	end := &journal.End{Status: journal.StatusSucceeded}
	switch {
	case runErr == nil:
	case errors.Is(runErr, engine.ErrInterrupted) || runCtx.Err() != nil:
		end.Status, end.Error = journal.StatusInterrupted, runErr.Error()
		runErr = withCode(ExitInterrupted, fmt.Errorf("run %s interrupted: %w", runID, runErr), "finish it with: runbook resume "+runID)
	default:
		end.Status, end.Error = journal.StatusFailed, runErr.Error()
		code := ExitFailed
		var se *engine.StepError
		if !errors.As(runErr, &se) {
			code = ExitInternal
		}
		runErr = withCode(code, fmt.Errorf("run %s failed: %w", runID, runErr), "after fixing the cause, finish it with: runbook resume "+runID)
	}
	if err := jr.Write(context.WithoutCancel(ctx), journal.Record{Type: journal.TEnd, End: end}); err != nil {
		// The run's end is not journaled: whatever the steps did, the
		// state store failed, and that is what the exit code says.
		runErr = withCode(ExitInternal, errors.Join(runErr, err), "after fixing the state store, finish it with: runbook resume "+runID)
	}
	summarize(p, res)
	if paths, err := g.writeRecord(context.WithoutCancel(ctx), store, runID); err != nil {
		runErr = errors.Join(runErr, withCode(ExitInternal, err))
	} else {
		p.Printf("record: %s\n", paths[1])
		p.JSON(map[string]any{"event": "record", "run_id": runID, "status": end.Status, "json": paths[0], "markdown": paths[1]})
	}
	return runErr
}

func summarize(p *printer, res *engine.Result) {
	if res == nil {
		return
	}
	counts := map[engine.Status]int{}
	for _, it := range res.Items {
		counts[it.Status]++
	}
	p.Printf("%d changed, %d ok, %d done before, %d skipped, %d failed, %d not run\n",
		counts[engine.StatusChanged], counts[engine.StatusOK], counts[engine.StatusDone],
		counts[engine.StatusSkipped], counts[engine.StatusFailed], counts[engine.StatusNotRun])
}

func (g *globals) header(req runRequest, runID, target string, h state.Holder) *journal.Header {
	rb, inv := req.l.rb, req.l.inv
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	hd := &journal.Header{
		RunID: runID, Runbook: rb.Name, RunbookFile: abs(rb.File), RunbookDigest: rb.Digest,
		InventoryFile: abs(inv.File), InventoryDigest: inv.Digest, Environment: inv.Environment,
		Target: target, Inputs: req.inputs, Reason: req.reason, Operator: h.Operator,
		Hostname: h.Hostname, PID: h.PID, Started: h.Since, Drill: req.drill,
	}
	for _, ph := range rb.Phases {
		jp := journal.Phase{Name: ph.Name, Steps: []string{}}
		if ph.Target > 0 {
			jp.Target = ph.Target.String()
		}
		for _, s := range rb.Steps {
			if s.Phase == ph.Name {
				jp.Steps = append(jp.Steps, s.ID)
			}
		}
		hd.Phases = append(hd.Phases, jp)
	}
	for _, s := range rb.Steps {
		hd.Steps = append(hd.Steps, journal.StepInfo{ID: s.ID, Kind: s.Kind, Phase: s.Phase, Name: s.Name})
	}
	return hd
}

// writeRecord renders the run's incident record from its journal into the
// records directory; it returns the JSON and Markdown paths.
func (g *globals) writeRecord(ctx context.Context, store state.Store, runID string) ([2]string, error) {
	recs, err := store.Journal(ctx, runID)
	if err != nil {
		return [2]string{}, fmt.Errorf("read journal of %s: %w", runID, err)
	}
	r, err := record.Build(recs)
	if err != nil {
		return [2]string{}, err
	}
	js, md, err := r.Write(g.recordsDir)
	return [2]string{js, md}, err
}
