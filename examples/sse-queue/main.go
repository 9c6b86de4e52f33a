// Command sse-queue is a message queue that encrypts on the server side
// with keybroker, and a workload that shows keybroker's two levels of
// caching at work: the SDK's envelope encryption reuses a data key for
// many messages, and the edge keeps the key material the central tier
// would otherwise derive for every data key.
//
//	go run ./examples/sse-queue                     # in-process cluster, default workload
//	go run ./examples/sse-queue --messages 200000 --report 1s
//	source keybroker-dev/env && go run ./examples/sse-queue \
//	    --central-metrics https://127.0.0.1:7710/metrics --edge-metrics https://127.0.0.1:7711/metrics
//
// Service (service.go) is the queue; Workload (workload.go) the producers
// and consumers; the report (report.go) reads the SDK's counters and the
// nodes' /metrics. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Getenv, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sse-queue: %v\nRun sse-queue -h for the flags.\n", err)
		os.Exit(2)
	}
	// The first Ctrl-C stops the producers and lets the consumers drain
	// the queues; the second stops everything at once.
	stop := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "\nstopping the producers, draining the queues (Ctrl-C again to stop at once)")
		close(stop)
		<-sig
		cancel()
	}()
	if err := run(ctx, cfg, stop, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "sse-queue: %v\n", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	Workload
	// Reuse is the data-key reuse period; Report the interval of progress
	// lines (0: none).
	Reuse, Report time.Duration
	// DB is the queue file ("": a temporary one).
	DB string
	// DevDir is the in-process cluster's directory ("": a temporary one).
	DevDir string
	// Addrs are a running cluster's nodes; none starts one in-process.
	Addrs []string
	// CentralMetrics and EdgeMetrics are a running cluster's /metrics URLs.
	CentralMetrics string
	EdgeMetrics    []string
	getenv         func(string) string
}

// Limits of the flags.
const (
	maxWorkers = 1000
	maxQueues  = 1000
	maxSize    = 256 << 10 // the largest message, as in SQS
	maxBatch   = 10000
)

// parseFlags parses the command line; getenv supplies KEYBROKER_ADDR and
// the TLS files. -h prints the flags to out and returns flag.ErrHelp.
func parseFlags(args []string, getenv func(string) string, out io.Writer) (*config, error) {
	c := &config{getenv: getenv}
	fs := flag.NewFlagSet("sse-queue", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, not printed
	fs.IntVar(&c.Queues, "queues", 3, "number of queues, q1…qN, each with its own key queue-qN")
	fs.IntVar(&c.Producers, "producers", 4, "producer goroutines")
	fs.IntVar(&c.Consumers, "consumers", 4, "consumer goroutines")
	fs.IntVar(&c.Messages, "messages", 100000, "messages to put, over all queues")
	fs.IntVar(&c.Size, "size", 256, fmt.Sprintf("message body bytes (0 to %d)", maxSize))
	fs.IntVar(&c.Batch, "batch", 100, "messages per put and per receive (one database transaction)")
	fs.DurationVar(&c.Reuse, "reuse", envelope.DefaultReusePeriod, fmt.Sprintf("data-key reuse period (%s to %s)", envelope.MinReusePeriod, envelope.MaxReusePeriod))
	fs.DurationVar(&c.Report, "report", 5*time.Second, "interval of progress lines; 0 for none")
	fs.StringVar(&c.DB, "db", "", "bbolt file holding the queues (default: a temporary file)")
	fs.StringVar(&c.DevDir, "dev-dir", "", "directory of the in-process cluster, kept for the next run (default: a temporary one)")
	addr := fs.String("addr", "", "comma-separated node addresses of a running cluster (default $"+client.EnvAddr+"); TLS from $"+client.EnvCA+", $"+client.EnvCert+", $"+client.EnvKey)
	fs.StringVar(&c.CentralMetrics, "central-metrics", "", "a running cluster's central /metrics URL, e.g. https://127.0.0.1:7710/metrics")
	edgeMetrics := fs.String("edge-metrics", "", "a running cluster's edge /metrics URLs, comma-separated")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(out, "Usage: sse-queue [flags]\n\nRuns producers and consumers on queues encrypted with keybroker, then reports\nwhat it cost in data keys and calls. Without --addr or $"+client.EnvAddr+" it starts\nits own cluster in this process.\n\nFlags:")
			fs.SetOutput(out)
			fs.PrintDefaults()
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	for _, n := range []struct {
		name      string
		v, lo, hi int
	}{
		{"queues", c.Queues, 1, maxQueues},
		{"producers", c.Producers, 1, maxWorkers},
		{"consumers", c.Consumers, 1, maxWorkers},
		{"messages", c.Messages, 1, 1 << 40},
		{"size", c.Size, 0, maxSize},
		{"batch", c.Batch, 1, maxBatch},
	} {
		if n.v < n.lo || n.v > n.hi {
			return nil, fmt.Errorf("--%s %d is outside %d..%d", n.name, n.v, n.lo, n.hi)
		}
	}
	if c.Reuse < envelope.MinReusePeriod || c.Reuse > envelope.MaxReusePeriod {
		return nil, fmt.Errorf("--reuse %s is outside %s..%s", c.Reuse, envelope.MinReusePeriod, envelope.MaxReusePeriod)
	}
	if c.Report < 0 {
		return nil, fmt.Errorf("--report %s is negative", c.Report)
	}

	c.Addrs = splitList(*addr)
	switch {
	case set["addr"] && set["dev-dir"]:
		return nil, errors.New("--addr uses a running cluster and --dev-dir starts one: give one of them")
	case len(c.Addrs) == 0 && set["addr"]:
		return nil, errors.New("--addr is empty")
	case len(c.Addrs) == 0 && !set["dev-dir"]:
		// An explicit --dev-dir wins over an exported KEYBROKER_ADDR.
		c.Addrs = splitList(getenv(client.EnvAddr))
	}
	c.EdgeMetrics = splitList(*edgeMetrics)
	if len(c.Addrs) == 0 && (set["central-metrics"] || set["edge-metrics"]) {
		return nil, errors.New("--central-metrics and --edge-metrics are for a running cluster (--addr); the in-process cluster's metrics are read without them")
	}
	for _, u := range append([]string{c.CentralMetrics}, c.EdgeMetrics...) {
		if u == "" {
			continue
		}
		if p, err := url.Parse(u); err != nil || p.Scheme != "https" || p.Host == "" {
			return nil, fmt.Errorf("metrics URL %q is not https://host:port/metrics (the ops ports serve mutual TLS only)", u)
		}
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// run connects to (or starts) the cluster, runs the workload and prints
// the report, also when the workload fails or is stopped.
func run(ctx context.Context, cfg *config, stop <-chan struct{}, out io.Writer) (err error) {
	var temps []string
	defer func() {
		for _, t := range temps {
			os.RemoveAll(t)
		}
	}()
	tempDir := func(pattern string) (string, error) {
		d, err := os.MkdirTemp("", pattern)
		if err == nil {
			temps = append(temps, d)
		}
		return d, err
	}

	var cl *cluster
	if len(cfg.Addrs) > 0 {
		cl, err = connectCluster(ctx, cfg.Addrs, cfg.getenv, cfg.CentralMetrics, cfg.EdgeMetrics)
	} else {
		dir := cfg.DevDir
		if dir == "" {
			if dir, err = tempDir("sse-queue-cluster-"); err != nil {
				return err
			}
		}
		cl, err = startDevCluster(ctx, dir)
	}
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		err = errors.Join(err, cl.Close(sctx))
	}()

	db := cfg.DB
	if db == "" {
		d, err := tempDir("sse-queue-db-")
		if err != nil {
			return err
		}
		db = filepath.Join(d, "queues.db")
	}
	svc, err := NewService(ServiceConfig{DB: db, Client: cl.Client, Admin: cl.Admin, Reuse: cfg.Reuse})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, svc.Close()) }()

	var p Progress
	rep, err := newReporter(ctx, svc, &p, cl)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "sse-queue: %d messages on %d queues, %d producers, %d consumers, %d-byte bodies, %d per batch, data keys reused for %s\n",
		cfg.Messages, cfg.Queues, cfg.Producers, cfg.Consumers, cfg.Size, cfg.Batch, cfg.Reuse)
	fmt.Fprintf(out, "  cluster  %s\n  queues   %s\n\n", cl.About, db)

	stopTicks := func() {}
	if cfg.Report > 0 {
		stopTicks = every(ctx, cfg.Report, func(ctx context.Context) { rep.tick(out, rep.snapshot(ctx)) })
	}
	runErr := cfg.Workload.Run(ctx, svc, stop, &p)
	stopTicks()
	note := ""
	switch {
	case ctx.Err() != nil:
		runErr = errors.New("stopped before the queues were drained")
		note = "stopped at once"
	case isClosed(stop):
		note = fmt.Sprintf("stopped: %d of %d messages put", p.Put.Load(), cfg.Messages)
	}

	// The final report reads the nodes even after a second Ctrl-C.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	rep.final(out, rep.snapshot(fctx), note)
	return runErr
}

// every calls f every interval until the returned stop is called, which
// waits for a call in progress.
func every(ctx context.Context, interval time.Duration, f func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f(ctx)
			}
		}
	}()
	return func() { cancel(); <-done }
}
