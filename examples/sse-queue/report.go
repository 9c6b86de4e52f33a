package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// nodeMetrics reads, from the nodes' Prometheus endpoints, what happened
// behind the SDK's calls.
type nodeMetrics struct {
	HTTP *http.Client
	// Central is the central node's /metrics URL; Edges the edges'. Empty
	// skips them.
	Central string
	Edges   []string
}

// tierCalls are the calls the edges made to the central tier and the
// calls the central tier made to its root of trust.
type tierCalls struct {
	// HaveEdges says whether the edges' counters were read.
	HaveEdges bool
	// Fetches is keybroker_edge_fetches_total: material fetched from the
	// central tier on first use. (A prefetching edge gets material in its
	// replication stream instead, which is not a call.)
	Fetches uint64
	// Forwards is keybroker_edge_forwards_total: calls the edges passed
	// on to the central tier (admin calls, keys they may not hold).
	Forwards uint64

	// HaveCentral says whether the central node's counters were read.
	HaveCentral bool
	// Backend is keybroker_backend_calls_total by operation.
	Backend map[string]uint64
}

// Read scrapes the endpoints.
func (m *nodeMetrics) Read(ctx context.Context) (tierCalls, error) {
	var t tierCalls
	var errs []error
	for _, url := range m.Edges {
		mf, err := m.scrape(ctx, url)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.HaveEdges = true
		t.Fetches += sum(mf["keybroker_edge_fetches_total"], "")[""]
		t.Forwards += sum(mf["keybroker_edge_forwards_total"], "")[""]
	}
	if m.Central != "" {
		mf, err := m.scrape(ctx, m.Central)
		if err != nil {
			errs = append(errs, err)
		} else {
			t.HaveCentral = true
			t.Backend = sum(mf["keybroker_backend_calls_total"], "op")
		}
	}
	return t, errors.Join(errs...)
}

func (m *nodeMetrics) scrape(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := m.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return mf, nil
}

// sum adds up a counter family's samples by the value of label ("" adds
// them all up under "").
func sum(mf *dto.MetricFamily, label string) map[string]uint64 {
	out := map[string]uint64{}
	for _, m := range mf.GetMetric() {
		by := ""
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				by = lp.GetValue()
			}
		}
		out[by] += uint64(m.GetCounter().GetValue())
	}
	return out
}

// Sub is t minus an earlier reading: what happened in between, as far as
// both readings go.
func (t tierCalls) Sub(base tierCalls) tierCalls {
	out := tierCalls{HaveEdges: t.HaveEdges && base.HaveEdges, HaveCentral: t.HaveCentral && base.HaveCentral}
	if out.HaveEdges {
		out.Fetches, out.Forwards = t.Fetches-base.Fetches, t.Forwards-base.Forwards
	}
	if out.HaveCentral {
		out.Backend = map[string]uint64{}
		for op, n := range t.Backend {
			if d := n - base.Backend[op]; d > 0 {
				out.Backend[op] = d
			}
		}
	}
	return out
}

// CentralCalls is what the edges asked of the central tier.
func (t tierCalls) CentralCalls() uint64 { return t.Fetches + t.Forwards }

// BackendCalls is what the central tier asked of its root of trust.
func (t tierCalls) BackendCalls() uint64 {
	var n uint64
	for _, v := range t.Backend {
		n += v
	}
	return n
}

// reporter takes snapshots of a run and prints them.
type reporter struct {
	svc     *Service
	prog    *Progress
	metrics *nodeMetrics
	names   map[string]string
	start   time.Time
	base    tierCalls
}

// snapshot is a run's counts at one moment.
type snapshot struct {
	Elapsed                      time.Duration
	Put, PutBytes, Got, GotBytes uint64
	Stats                        Stats
	// Tiers are the nodes' counters since the run started, as far as they
	// could be read (TiersErr says what could not).
	Tiers    tierCalls
	TiersErr error
}

// newReporter reads the nodes' counters as they are before the run.
func newReporter(ctx context.Context, svc *Service, p *Progress, c *cluster) (*reporter, error) {
	base, err := c.Metrics.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the nodes' metrics: %w", err)
	}
	return &reporter{svc: svc, prog: p, metrics: c.Metrics, names: c.Names, start: time.Now(), base: base}, nil
}

func (r *reporter) snapshot(ctx context.Context) snapshot {
	s := snapshot{
		Elapsed: time.Since(r.start),
		Put:     r.prog.Put.Load(), PutBytes: r.prog.PutBytes.Load(),
		Got: r.prog.Got.Load(), GotBytes: r.prog.GotBytes.Load(),
		Stats: r.svc.Stats(),
	}
	t, err := r.metrics.Read(ctx)
	s.Tiers, s.TiersErr = t.Sub(r.base), err
	return s
}

// tick prints one line of progress.
func (r *reporter) tick(w io.Writer, s snapshot) {
	line := fmt.Sprintf("%8s  put %d  got %d  data keys %d generated, %d fetched  SDK calls %d",
		s.Elapsed.Round(100*time.Millisecond), s.Put, s.Got, s.Stats.Encryptor.DataKeys, s.Stats.Decryptor.DataKeys, total(s.Stats.Calls))
	if s.Tiers.HaveEdges {
		line += fmt.Sprintf("  edge→central %d", s.Tiers.CentralCalls())
	}
	if s.Tiers.HaveCentral {
		line += fmt.Sprintf("  backend %d", s.Tiers.BackendCalls())
	}
	fmt.Fprintln(w, line)
}

// final prints the whole report, with a note on how the run ended.
func (r *reporter) final(w io.Writer, s snapshot, note string) {
	secs := max(s.Elapsed.Seconds(), 1e-9)
	if note != "" {
		note = " (" + note + ")"
	}
	fmt.Fprintf(w, "\nafter %s%s:\n", s.Elapsed.Round(time.Millisecond), note)
	fmt.Fprintf(w, "  put        %d messages, %s (%.0f messages/s)\n", s.Put, mb(s.PutBytes), float64(s.Put)/secs)
	fmt.Fprintf(w, "  got        %d messages, %s, every body checked\n", s.Got, mb(s.GotBytes))
	enc, dec := s.Stats.Encryptor, s.Stats.Decryptor
	fmt.Fprintf(w, "  data keys  %d generated by the Encryptors for %d messages; %d fetched by the Decryptor, %d cache hits\n",
		enc.DataKeys, enc.Messages, dec.DataKeys, dec.CacheHits)
	fmt.Fprintf(w, "  SDK        %d calls (lookups included): %s\n", total(s.Stats.Calls), r.perNode(s.Stats.Calls))

	chain := fmt.Sprintf("%d messages → %d data keys → %d SDK calls", s.Put, enc.DataKeys, total(s.Stats.Calls))
	switch {
	case s.Tiers.HaveEdges:
		fmt.Fprintf(w, "  edge       %d calls to the central tier: %d material fetches, %d forwarded calls\n",
			s.Tiers.CentralCalls(), s.Tiers.Fetches, s.Tiers.Forwards)
		chain += fmt.Sprintf(" → %d central-tier calls", s.Tiers.CentralCalls())
	case len(r.metrics.Edges) == 0:
		fmt.Fprintln(w, "  edge       not read: give --edge-metrics https://EDGE-OPS-ADDR/metrics")
	}
	switch {
	case s.Tiers.HaveCentral:
		fmt.Fprintf(w, "  central    %d calls to the root of trust%s\n", s.Tiers.BackendCalls(), byOp(s.Tiers.Backend))
		chain += fmt.Sprintf(" → %d backend calls", s.Tiers.BackendCalls())
	case r.metrics.Central == "":
		fmt.Fprintln(w, "  central    not read: give --central-metrics https://CENTRAL-OPS-ADDR/metrics")
	}
	if s.TiersErr != nil {
		fmt.Fprintf(w, "  metrics    not all read: %v\n", s.TiersErr)
	}
	fmt.Fprintf(w, "\n  %s\n", chain)
}

// perNode lists calls by node, named where the node is known.
func (r *reporter) perNode(calls map[string]uint64) string {
	var parts []string
	for _, addr := range slices.Sorted(maps.Keys(calls)) {
		name := addr
		if id := r.names[addr]; id != "" {
			name = id + " (" + addr + ")"
		}
		parts = append(parts, fmt.Sprintf("%s %d", name, calls[addr]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func byOp(ops map[string]uint64) string {
	var parts []string
	for _, op := range slices.Sorted(maps.Keys(ops)) {
		parts = append(parts, fmt.Sprintf("%s %d", op, ops[op]))
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, ", ")
}

func total(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

func mb(n uint64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
