package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/loadgen"
)

// benchOps are the operations keybroker bench drives, by name, with what
// each needs and does.
var benchOps = map[string]string{
	"encrypt":       "Encrypt --size bytes under --key",
	"decrypt":       "Decrypt a ciphertext of --size bytes made under --key at the start",
	"datakey":       "GenerateDataKey under --key",
	"sign":          "Sign a --size message (at most 64 KiB) with --sign-key (default --key)",
	"mac":           "GenerateMac over a --size message (at most 64 KiB) with --mac-key (default --key)",
	"lookup":        "LookupKey for encrypt with --key",
	"batch-encrypt": "BatchEncrypt of --batch items of --size bytes under --key",
	"batch-decrypt": "BatchDecrypt of --batch ciphertexts of --size bytes made at the start",
	"noop":          "grpc.health.v1.Health/Check: no key, no policy, no audit",
	"create":        "CreateKey of --count keys named from --prefix, as an admin, alone (see below)",
}

func benchOpNames() string { return strings.Join(slices.Sorted(maps.Keys(benchOps)), ", ") }

// benchFlags are keybroker bench's settings.
type benchFlags struct {
	// protocol is grpc, awsjson (the AWS KMS API beside gRPC) or xks.
	protocol    string
	endpoint    string
	region      string
	rate        float64
	awsClient   string
	http1       bool
	ops         string
	key         string
	signKey     string
	macKey      string
	size        sizeValue
	batch       int
	workers     int
	conns       int
	duration    time.Duration
	count       uint64
	warmup      time.Duration
	interval    time.Duration
	encCtx      pairsValue
	compareNoop bool
	rounds      int
	metrics     []string
	maxGrowth   float64
	// For --op create.
	prefix   string
	existing int
	probe    string
}

// weightedOp is one entry of --op: an operation and its share of the calls.
type weightedOp struct {
	Name   string `json:"op"`
	Weight int    `json:"weight"`
	Key    string `json:"key,omitempty"`
}

// parseBenchOps reads --op: "encrypt", or a mix "encrypt:6,decrypt:3,datakey:1".
func parseBenchOps(s string) ([]weightedOp, error) {
	var out []weightedOp
	seen := map[string]bool{}
	for part := range strings.SplitSeq(s, ",") {
		name, w, hasWeight := strings.Cut(strings.TrimSpace(part), ":")
		if _, ok := benchOps[name]; !ok {
			return nil, fmt.Errorf("--op: %q is not an operation; choose from %s", name, benchOpNames())
		}
		if seen[name] {
			return nil, fmt.Errorf("--op: %s is given twice", name)
		}
		seen[name] = true
		weight := 1
		if hasWeight {
			n, err := strconv.Atoi(w)
			if err != nil || n < 1 || n > 1000 {
				return nil, fmt.Errorf("--op: the weight of %s must be a whole number from 1 to 1000, not %q", name, w)
			}
			weight = n
		}
		out = append(out, weightedOp{Name: name, Weight: weight})
	}
	return out, nil
}

// benchJSON is the --output json result.
type benchJSON struct {
	Target      string              `json:"target"`
	Ops         []weightedOp        `json:"ops"`
	Size        int                 `json:"size_bytes"`
	Batch       int                 `json:"batch_items,omitempty"`
	Workers     int                 `json:"workers"`
	Connections int                 `json:"connections"`
	Warmup      float64             `json:"warmup_s"`
	Result      loadgen.Stats       `json:"result"`
	Calls       map[string]uint64   `json:"calls_by_op"` // calls made, those cut short by the end of the run included
	Noop        *loadgen.Stats      `json:"noop,omitempty"`
	RatioToNoop float64             `json:"ratio_to_noop,omitempty"`
	RoundRatios []float64           `json:"round_ratios,omitempty"`
	Intervals   []benchIntervalJSON `json:"intervals,omitempty"`
	Memory      []memoryJSON        `json:"memory,omitempty"`
}

type benchIntervalJSON struct {
	loadgen.Stats
	Readings []reading `json:"-"`
}

// MarshalJSON puts the readings next to the period's figures.
func (b benchIntervalJSON) MarshalJSON() ([]byte, error) {
	stats, err := b.Stats.MarshalJSON()
	if err != nil || len(b.Readings) == 0 {
		return stats, err
	}
	var rs bytes.Buffer
	rs.WriteString(`,"processes":[`)
	for i, r := range b.Readings {
		if i > 0 {
			rs.WriteByte(',')
		}
		if r.err != nil {
			fmt.Fprintf(&rs, `{"metrics":%q,"error":%q}`, r.url, r.err.Error())
			continue
		}
		fmt.Fprintf(&rs, `{"metrics":%q,"resident_bytes":%.0f,"goroutines":%.0f}`, r.url, r.rss, r.goroutines)
	}
	rs.WriteString("]}")
	return append(stats[:len(stats)-1], rs.Bytes()...), nil
}

// memoryJSON sums up one process's resident memory over the run.
type memoryJSON struct {
	Metrics  string  `json:"metrics"`
	First    float64 `json:"first_bytes"`
	Last     float64 `json:"last_bytes"`
	Peak     float64 `json:"peak_bytes"`
	GrowthPc float64 `json:"growth_percent"`
}

func (a *app) benchCmd() *cobra.Command {
	f := &benchFlags{size: sizeValue(1024)}
	cmd := &cobra.Command{
		Use:   "bench --op OP[:WEIGHT],... --key KEY",
		Short: "Drive load at one node and measure throughput, latency and errors",
		Long: `Drive concurrent load at the node --addr names and report what it did:
operations per second, latency percentiles (p50, p90, p99, p99.9, max) and
failed calls counted by gRPC code. Each of --concurrency workers makes one
call at a time, over --connections gRPC connections (mutual TLS as always),
for --duration or until --count calls in all, after a --warmup whose figures
are thrown away.

Operations (--op):
` + benchOpHelp() + `
A mix gives weights: --op encrypt:6,decrypt:3,datakey:1 makes six encrypts,
three decrypts and one data key of every ten calls on each worker.

--compare-noop then runs the same load of no-op calls
(grpc.health.v1.Health/Check) against the same node, over the same TLS and
interceptors with no key, policy, audit or payload, and prints the ratio:
how close the operation comes to the ceiling of any RPC service on this
machine and network.

The two loads alternate in --rounds rounds (default 5) of --duration ÷ rounds
each, and the ratio printed is the median of the rounds' ratios, so a change
in the machine's load meets both alike. With --count, --interval or --rounds 1
the no-op runs once, after the operation.

--interval prints the figures of each period as the run goes. With
--metrics URL (a node's ops /metrics, fetched with the client certificate,
which the node's ops.allow must admit: an admin's by default) each period also reads the process's resident memory and goroutines, and
the end of the run reports their growth from the first period to the last;
--max-rss-growth fails the run when resident memory grew more than that
many percent. This is what make soak uses.

--op create grows the registry instead, to measure how the cost of a key
change and the memory per key move with the number of keys: the workers
create --count keys (default 10000; derive-mode AES-256-GCM) named
PREFIX0, PREFIX1, … (--prefix; default bench-DATE-TIME-, so runs do not
collide) at the node --addr names, a central node or an edge that forwards
admin calls, with an admin's credentials. It reports creates/s, p50 and p99
per decade of keys present (0-1k, 1k-10k, 10k-100k, 100k-1M, …), the keys
present before the run counted once with ListKeys or given by --existing.
--metrics name=host:port,… names nodes' operations ports: their
process_resident_memory_bytes and go_memstats_heap_inuse_bytes are read
(over mutual TLS, with the command's credentials) at each decade's
boundary and at the end, and divided by the keys present: bytes per key.
--probe KEY adds one worker calling LookupKey then Encrypt on KEY at the
node every 10 ms while the keys are created, and reports their p50 and p99
per decade.
--duration, --warmup, --interval, --size and the no-op comparison do not
apply to it. A derive-mode CreateKey makes a call to the root of trust,
and a central node bounds each principal's such calls (backend_budget,
500/s by default): past it, creates fail with ResourceExhausted.

--protocol awsjson drives encrypt, decrypt or datakey (a mix too) through
the AWS KMS API at --endpoint (env AWS_ENDPOINT_URL_KMS), a central node's
or an edge's aws_kms listener, with the AWS SDK for Go's own KMS client
signing each call (SigV4) with the access key in AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY for --region (env AWS_REGION), trusting --ca (or
AWS_CA_BUNDLE). The same operations then run through gRPC at --addr, the
two alternating in --rounds rounds as --compare-noop's do, and the report
gives both and the AWS path's ops/s as a share of gRPC's. --aws-client
signer sends the same requests signed by the SDK's SigV4 signer over
net/http instead of through the SDK's client, whose own CPU cost (about
three times a gRPC call's, measured) competes with the node's when both
run on one machine. Either client uses the AWS SDK's HTTP client, which
speaks HTTP/2 when the node offers it (it does); --http1 keeps to
HTTP/1.1 as the AWS CLI and most other SDKs do.

--protocol xks starts XKS proxy requests (encrypt or decrypt of --size
bytes, --key as the external key id) at a fixed --rate (default 1,800/s,
AWS KMS's default quota for an external key store) for --duration,
whatever the latency — as AWS KMS does — on at most --concurrency
requests in flight, signed for the service kms-xks-proxy with the same
access key. --endpoint is the proxy's URL with its path prefix
(https://host:port/prefix). It reports p50, p99 and the requests that
started more than 10 ms late because every worker was busy (the rate was
not held). No gRPC connection is made.

Results are correct or they fail: decrypts are compared with what was
encrypted. Exit status 1 when any call failed, after the report.`,
		Example: `  keybroker bench --op encrypt --key demo --size 1KiB -c 64 --duration 10s --compare-noop
  keybroker bench --op decrypt --key demo --count 100000 --output json
  keybroker bench --op encrypt:6,decrypt:3,datakey:1 --key demo --duration 10m --interval 30s \
      --metrics https://127.0.0.1:7710/metrics --max-rss-growth 25
  keybroker bench --op sign --sign-key signer --size 32 -c 8
  keybroker bench --protocol awsjson --endpoint https://127.0.0.1:7720 --region eu-west-1 \
      --op encrypt --key demo --size 1KiB -c 64 --duration 10s
  keybroker bench --protocol xks --endpoint https://127.0.0.1:7730/kb/xks --region eu-west-1 \
      --op encrypt --key demo --rate 1800 -c 64 --duration 10s
  keybroker bench --op create --count 100000 -c 8 --prefix tenant- --probe demo \
      --metrics central=127.0.0.1:7710,edge-us=127.0.0.1:7711`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.bench(cmd, f) },
	}
	fs := cmd.Flags()
	fs.StringVar(&f.protocol, "protocol", protoGRPC, "grpc; awsjson: the operations through the AWS KMS API at --endpoint, beside gRPC at --addr; xks: one XKS operation at --rate")
	fs.StringVar(&f.endpoint, "endpoint", "", "--protocol awsjson: the AWS KMS API's URL (env "+envAWSEndpointKMS+"); xks: the XKS proxy's URL with its path prefix")
	fs.StringVar(&f.region, "region", "", "--protocol awsjson and xks: the region requests are signed for (env "+envAWSRegion+")")
	fs.StringVar(&f.awsClient, "aws-client", awsClientSDK, "--protocol awsjson: sdk (the AWS SDK for Go's KMS client) or signer (its SigV4 signer over net/http: a thinner client)")
	fs.BoolVar(&f.http1, "http1", false, "--protocol awsjson and xks: keep to HTTP/1.1 (one connection per call in flight), as the AWS CLI does, instead of HTTP/2 when the node offers it")
	fs.Float64Var(&f.rate, "rate", defaultXKSRate, "--protocol xks: requests started per second, whatever the latency")
	fs.StringVar(&f.ops, "op", "encrypt", "operation, or a weighted mix op:weight,...; one of "+benchOpNames())
	fs.StringVar(&f.key, "key", "", "key for encrypt, decrypt, datakey, lookup and the batches")
	fs.StringVar(&f.signKey, "sign-key", "", "signing key for sign (default --key)")
	fs.StringVar(&f.macKey, "mac-key", "", "HMAC key for mac (default --key)")
	fs.Var(&f.size, "size", "payload size: bytes, or with a unit (64B, 1KiB, 4MiB)")
	fs.IntVar(&f.batch, "batch", 16, "items per call of batch-encrypt and batch-decrypt (1-100)")
	fs.IntVarP(&f.workers, "concurrency", "c", 16, "concurrent workers, each making one call at a time")
	fs.IntVar(&f.conns, "connections", 1, "gRPC connections the workers share")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "how long to measure; 0 with --count runs until the count")
	fs.Uint64Var(&f.count, "count", 0, "stop after this many calls in all (the warm-up's not counted); --op create: keys to create (default 10000)")
	fs.DurationVar(&f.warmup, "warmup", time.Second, "load run first and not measured")
	fs.DurationVar(&f.interval, "interval", 0, "print each period's figures this often (e.g. 30s); 0 prints the total only")
	fs.Var(&f.encCtx, "context", "encryption context pair k=v; repeat for more")
	fs.BoolVar(&f.compareNoop, "compare-noop", false, "also run no-op calls with the same load against the same node and print the ratio")
	fs.IntVar(&f.rounds, "rounds", 5, "with --compare-noop and --duration: alternate the operation and the no-op this many times and report the median ratio")
	fs.StringSliceVar(&f.metrics, "metrics", nil, "ops /metrics URL of a process to read resident memory from at each --interval; repeat for more. --protocol awsjson: each node process (once each) whose CPU per call to report, read around each round. --op create: name=host:port of a node's operations port, read at each decade of keys")
	fs.Float64Var(&f.maxGrowth, "max-rss-growth", 0, "fail when resident memory grew more than this many percent from the first period to the last; 0 only reports")
	fs.StringVar(&f.prefix, "prefix", "", "--op create: key ids are PREFIX0, PREFIX1, … (default bench-DATE-TIME-)")
	fs.IntVar(&f.existing, "existing", -1, "--op create: keys present before the run; -1 counts them with ListKeys")
	fs.StringVar(&f.probe, "probe", "", "--op create: a key one more worker calls LookupKey and Encrypt on every 10 ms while keys are created")
	a.addClientFlags(fs)
	fs.Lookup("timeout").Usage = "time limit of each call; 0 means none"
	return cmd
}

func benchOpHelp() string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(benchOps)) {
		fmt.Fprintf(&b, "  %-14s %s\n", name, benchOps[name])
	}
	return b.String()
}

// benchCheck checks the flags that do not need the network.
func (f *benchFlags) check(ops []weightedOp) error {
	switch {
	case f.workers < 1 || f.workers > 10000:
		return usageErrorf("--concurrency must be 1 to 10000, not %d", f.workers)
	case f.conns < 1 || f.conns > f.workers:
		return usageErrorf("--connections must be 1 to --concurrency (%d), not %d", f.workers, f.conns)
	case f.duration < 0 || f.warmup < 0 || f.interval < 0:
		return usageErrorf("--duration, --warmup and --interval must not be negative")
	case f.duration == 0 && f.count == 0:
		return usageErrorf("--duration 0 needs --count")
	case f.batch < 1 || f.batch > 100:
		return usageErrorf("--batch must be 1 to 100 (the API's limit), not %d", f.batch)
	case f.rounds < 1 || f.rounds > 1000:
		return usageErrorf("--rounds must be 1 to 1000, not %d", f.rounds)
	case f.maxGrowth < 0:
		return usageErrorf("--max-rss-growth must not be negative")
	case (f.maxGrowth > 0 || len(f.metrics) > 0) && f.interval == 0 && f.protocol != protoAWSJSON:
		return usageErrorf("--metrics and --max-rss-growth need --interval: memory is read once per period")
	}
	for _, m := range f.metrics {
		if u, err := url.Parse(m); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return usageErrorf("--metrics %q is not an http(s) URL such as https://127.0.0.1:7710/metrics", m)
		}
	}
	size := int(f.size)
	for _, op := range ops {
		switch op.Name {
		case "sign", "mac":
			if size > maxMessage {
				return invalidInputf("--size %s: %s takes messages of at most %s", sizeText(size), op.Name, sizeText(maxMessage))
			}
		case "encrypt", "decrypt":
			if size > maxPlaintext {
				return invalidInputf("--size %s: %s takes at most %s", sizeText(size), op.Name, sizeText(maxPlaintext))
			}
		case "batch-encrypt", "batch-decrypt":
			if size*f.batch > maxPlaintext {
				return invalidInputf("--size %s × --batch %d is over a request's %s", sizeText(size), f.batch, sizeText(maxPlaintext))
			}
		}
		if k := f.keyFor(op.Name); k == "" && op.Name != "noop" {
			return usageErrorf("--op %s needs --key", op.Name)
		}
	}
	return nil
}

func (f *benchFlags) keyFor(op string) string {
	switch op {
	case "noop":
		return ""
	case "sign":
		return firstOf(f.signKey, f.key)
	case "mac":
		return firstOf(f.macKey, f.key)
	}
	return f.key
}

// firstOf is the first non-empty string.
func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func (a *app) bench(cmd *cobra.Command, f *benchFlags) error {
	ops, err := parseBenchOps(f.ops)
	if err != nil {
		return usageError(err)
	}
	switch f.protocol {
	case protoGRPC:
	case protoAWSJSON:
		return a.benchAWSJSON(cmd, f, ops)
	case protoXKS:
		return a.benchXKS(cmd, f, ops)
	default:
		return usageErrorf("--protocol must be %s, %s or %s, not %q", protoGRPC, protoAWSJSON, protoXKS, f.protocol)
	}
	if slices.ContainsFunc(ops, func(o weightedOp) bool { return o.Name == "create" }) {
		return a.benchCreate(cmd, f, ops)
	}
	if err := f.check(ops); err != nil {
		return err
	}
	b, closeRun, err := a.startBench(cmd, f, ops)
	if err != nil {
		return err
	}
	defer closeRun()
	s, ctx := b.s, cmd.Context()
	out := benchJSON{Target: s.addr, Ops: ops, Size: int(f.size), Workers: f.workers, Connections: f.conns, Warmup: f.warmup.Seconds()}
	if slices.ContainsFunc(ops, func(o weightedOp) bool { return strings.HasPrefix(o.Name, "batch") }) {
		out.Batch = f.batch
	}
	if !a.jsonOutput() {
		fmt.Fprintf(a.env.stdout, "bench %s at %s: %s\n", describeOps(ops, f), s.addr, describeLoad(f))
	}

	scraper := &metricsReader{client: &http.Client{Transport: &http.Transport{TLSClientConfig: s.tls}, Timeout: 10 * time.Second}}
	calls := make([]map[string]uint64, f.workers)
	cfg := loadgen.Config{Workers: f.workers, Duration: f.duration, Count: f.count, Warmup: f.warmup, Interval: f.interval}
	cfg.OnStart = func() {
		for _, c := range calls {
			clear(c)
		}
	}
	cfg.OnInterval = func(st loadgen.Stats) {
		iv := benchIntervalJSON{Stats: st}
		for _, url := range f.metrics {
			iv.Readings = append(iv.Readings, scraper.read(ctx, url))
		}
		out.Intervals = append(out.Intervals, iv)
		if !a.jsonOutput() {
			a.printInterval(iv, st.Start.Add(st.Elapsed).Sub(out.Intervals[0].Start))
		}
	}
	newOp := func(w int) (loadgen.Op, error) {
		calls[w] = map[string]uint64{}
		return b.newWorker(ctx, w, ops, calls[w])
	}
	newNoop := func(w int) (loadgen.Op, error) {
		return b.newWorker(ctx, w, []weightedOp{{Name: "noop", Weight: 1}}, map[string]uint64{})
	}
	paired := f.compareNoop && f.rounds > 1 && f.count == 0 && f.interval == 0
	var res loadgen.Stats
	if paired {
		p, err := loadgen.RunPaired(ctx, cfg, f.rounds, newOp, newNoop)
		if err != nil {
			return err
		}
		res, out.Noop, out.RatioToNoop, out.RoundRatios = p.A, &p.B, p.MedianRatio(), p.Ratios
	} else {
		var err error
		if res, err = loadgen.Run(ctx, cfg, newOp); err != nil {
			return err
		}
	}
	out.Result = res
	out.Calls = map[string]uint64{}
	for _, c := range calls {
		for k, n := range c {
			out.Calls[k] += n
		}
	}
	if f.compareNoop && !paired {
		cfg.Interval, cfg.OnInterval = 0, nil
		noop, err := loadgen.Run(ctx, cfg, newNoop)
		if err != nil {
			return err
		}
		out.Noop = &noop
		if noop.Rate() > 0 {
			out.RatioToNoop = res.Rate() / noop.Rate()
		}
	}
	out.Memory = memoryGrowth(out.Intervals, f.metrics)
	if a.jsonOutput() {
		if err := a.printJSON(out); err != nil {
			return err
		}
	} else {
		a.printBench(out, ops)
	}
	return benchVerdict(out, f.maxGrowth)
}

// benchVerdict fails a run in which calls failed or memory grew too much.
func benchVerdict(out benchJSON, maxGrowth float64) error {
	var problems []string
	for _, st := range []*loadgen.Stats{&out.Result, out.Noop} {
		if st != nil && st.Failed > 0 {
			problems = append(problems, fmt.Sprintf("%d of %d calls failed (%s)", st.Failed, st.Failed+st.Ops, errorsText(st.Errors)))
		}
	}
	if maxGrowth > 0 {
		for _, m := range out.Memory {
			if m.GrowthPc > maxGrowth {
				problems = append(problems, fmt.Sprintf("resident memory of %s grew %.1f %% (limit %.1f %%)", m.Metrics, m.GrowthPc, maxGrowth))
			}
		}
	}
	if len(problems) > 0 {
		return &exitError{exitFailure, fmt.Errorf("bench: %s", strings.Join(problems, "; "))}
	}
	return nil
}

func describeOps(ops []weightedOp, f *benchFlags) string {
	parts := make([]string, len(ops))
	for i, op := range ops {
		p := op.Name
		if len(ops) > 1 {
			p += ":" + strconv.Itoa(op.Weight)
		}
		if op.Key != "" {
			p += " (" + op.Key + ")"
		}
		parts[i] = p
	}
	return strings.Join(parts, ", ") + " of " + sizeText(int(f.size))
}

func describeLoad(f *benchFlags) string {
	d := fmt.Sprintf("%d workers on %d connection", f.workers, f.conns)
	if f.conns > 1 {
		d += "s"
	}
	switch {
	case f.count > 0 && f.duration > 0:
		d += fmt.Sprintf(", %d calls or %s", f.count, f.duration)
	case f.count > 0:
		d += fmt.Sprintf(", %d calls", f.count)
	default:
		d += ", " + f.duration.String()
	}
	if f.warmup > 0 {
		d += " after a " + f.warmup.String() + " warm-up"
	}
	return d
}

// startBench is the gRPC side of a bench run: it gives each op its key
// (keyFor), connects to --addr with --connections connections and makes
// the payload; closeRun closes the connections.
func (a *app) startBench(cmd *cobra.Command, f *benchFlags, ops []weightedOp) (b *benchRun, closeRun func(), err error) {
	for i := range ops {
		ops[i].Key = f.keyFor(ops[i].Name)
	}
	s, err := a.connect(cmd)
	if err != nil {
		return nil, nil, err
	}
	conns, closeConns, err := benchConns(s, f.conns)
	if err != nil {
		s.close()
		return nil, nil, err
	}
	b = &benchRun{f: f, s: s, conns: conns, payload: bytes.Repeat([]byte{0x5a}, int(f.size))}
	return b, func() { closeConns(); s.close() }, nil
}

// benchConns is s's connection and n-1 more to its address (--conns);
// closeConns closes the ones it dialled, s closes its own.
func benchConns(s *session, n int) (conns []*grpc.ClientConn, closeConns func(), err error) {
	conns = []*grpc.ClientConn{s.conn}
	closeConns = func() {
		for _, c := range conns[1:] {
			_ = c.Close()
		}
	}
	for range n - 1 {
		c, err := dialBroker(s.addr, s.id, s.serverName, s.watch)
		if err != nil {
			closeConns()
			return nil, nil, usageErrorf("--addr %q: %v", s.addr, err)
		}
		conns = append(conns, c)
	}
	return conns, closeConns, nil
}

// benchRun holds what the workers share.
type benchRun struct {
	f       *benchFlags
	s       *session
	conns   []*grpc.ClientConn
	payload []byte
}

// newWorker makes worker w's Op over gRPC, on one of the connections.
func (b *benchRun) newWorker(ctx context.Context, w int, ops []weightedOp, calls map[string]uint64) (loadgen.Op, error) {
	conn := b.conns[w%len(b.conns)]
	kb := kbv1.NewKeyBrokerClient(conn)
	return b.weighted(w, ops, calls, func(op weightedOp) (loadgen.Op, error) { return b.call(ctx, conn, kb, op) })
}

// weighted is worker w's Op over the calls newCall makes of ops (gRPC's
// or the AWS KMS API's): they follow the weights of ops, in a fixed order
// that each worker starts at a different place of; each is counted in
// calls and bounded by --timeout.
func (b *benchRun) weighted(w int, ops []weightedOp, calls map[string]uint64, newCall func(weightedOp) (loadgen.Op, error)) (loadgen.Op, error) {
	var schedule []loadgen.Op
	var names []string
	for _, op := range ops {
		call, err := newCall(op)
		if err != nil {
			return nil, err
		}
		for range op.Weight {
			schedule = append(schedule, call)
			names = append(names, op.Name)
		}
	}
	i := w
	timeout := b.s.timeout
	return func(ctx context.Context) error {
		n := i % len(schedule)
		i++
		calls[names[n]]++
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return schedule[n](ctx)
	}, nil
}

// errWrongResult marks a call that succeeded with the wrong answer.
func errWrongResult(op, what string) error {
	return status.Errorf(codes.DataLoss, "%s returned %s", op, what)
}

// call makes one operation's call, preparing what it needs (ciphertexts to
// decrypt) first; a failure to prepare ends the run before it starts.
func (b *benchRun) call(ctx context.Context, conn *grpc.ClientConn, kb kbv1.KeyBrokerClient, op weightedOp) (loadgen.Op, error) {
	key, ectx, pt := op.Key, b.f.encCtx.m, b.payload
	prepare := func(what string, err error) error {
		return b.s.fail(ctx, "bench: preparing "+op.Name+": "+what, err)
	}
	switch op.Name {
	case "encrypt":
		req := &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx}
		return func(ctx context.Context) error { _, err := kb.Encrypt(ctx, req); return err }, nil
	case "decrypt":
		enc, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx})
		if err != nil {
			return nil, prepare("encrypt", err)
		}
		req := &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: ectx}
		return func(ctx context.Context) error {
			resp, err := kb.Decrypt(ctx, req)
			if err == nil && !bytes.Equal(resp.GetPlaintext(), pt) {
				return errWrongResult("Decrypt", "a different plaintext")
			}
			return err
		}, nil
	case "datakey":
		req := &kbv1.GenerateDataKeyRequest{KeyId: key, EncryptionContext: ectx}
		return func(ctx context.Context) error {
			resp, err := kb.GenerateDataKey(ctx, req)
			if err == nil && len(resp.GetPlaintext()) != 32 {
				return errWrongResult("GenerateDataKey", fmt.Sprintf("a %d-byte data key", len(resp.GetPlaintext())))
			}
			return err
		}, nil
	case "sign":
		req := &kbv1.SignRequest{KeyId: key, Input: &kbv1.SignRequest_Message{Message: pt}}
		return func(ctx context.Context) error { _, err := kb.Sign(ctx, req); return err }, nil
	case "mac":
		req := &kbv1.GenerateMacRequest{KeyId: key, Message: pt}
		return func(ctx context.Context) error { _, err := kb.GenerateMac(ctx, req); return err }, nil
	case "lookup":
		req := &kbv1.LookupKeyRequest{KeyId: key, Operation: kbv1.Operation_OPERATION_ENCRYPT}
		return func(ctx context.Context) error {
			resp, err := kb.LookupKey(ctx, req)
			if err == nil && len(resp.GetNodes()) == 0 {
				return errWrongResult("LookupKey", "no nodes")
			}
			return err
		}, nil
	case "batch-encrypt":
		req := &kbv1.BatchEncryptRequest{}
		for range b.f.batch {
			req.Items = append(req.Items, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx})
		}
		return func(ctx context.Context) error {
			resp, err := kb.BatchEncrypt(ctx, req)
			if err != nil {
				return err
			}
			for _, r := range resp.GetResults() {
				if e := r.GetError(); e != nil {
					return status.Error(codes.Code(e.GetCode()), e.GetMessage())
				}
			}
			return nil
		}, nil
	case "batch-decrypt":
		req := &kbv1.BatchDecryptRequest{}
		for range b.f.batch {
			enc, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx})
			if err != nil {
				return nil, prepare("encrypt", err)
			}
			req.Items = append(req.Items, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: ectx})
		}
		return func(ctx context.Context) error {
			resp, err := kb.BatchDecrypt(ctx, req)
			if err != nil {
				return err
			}
			for _, r := range resp.GetResults() {
				if e := r.GetError(); e != nil {
					return status.Error(codes.Code(e.GetCode()), e.GetMessage())
				}
				if !bytes.Equal(r.GetResponse().GetPlaintext(), pt) {
					return errWrongResult("BatchDecrypt", "a different plaintext")
				}
			}
			return nil
		}, nil
	case "noop":
		h := healthpb.NewHealthClient(conn)
		req := &healthpb.HealthCheckRequest{}
		return func(ctx context.Context) error { _, err := h.Check(ctx, req); return err }, nil
	}
	return nil, fmt.Errorf("bench: no operation %q", op.Name)
}

// Text output.

func latencyText(l loadgen.Latency) string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s",
		durText(l.P50), durText(l.P90), durText(l.P99), durText(l.P999), durText(l.Max))
}

// durText rounds a latency to three significant figures.
func durText(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.3gs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.3gms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.3gµs", float64(d)/float64(time.Microsecond))
}

func errorsText(errs map[string]uint64) string {
	if len(errs) == 0 {
		return "none"
	}
	var parts []string
	for _, c := range slices.Sorted(maps.Keys(errs)) {
		parts = append(parts, fmt.Sprintf("%s %d", c, errs[c]))
	}
	return strings.Join(parts, ", ")
}

func (a *app) printInterval(iv benchIntervalJSON, at time.Duration) {
	line := fmt.Sprintf("  %7s  %9.0f ops/s  %s  errors: %s", at.Round(time.Second), iv.Rate(), latencyText(iv.Latency), errorsText(iv.Errors))
	for _, r := range iv.Readings {
		if r.err != nil {
			line += "  memory: " + r.err.Error()
			continue
		}
		line += fmt.Sprintf("  rss %.1f MiB, %.0f goroutines", r.rss/(1<<20), r.goroutines)
	}
	fmt.Fprintln(a.env.stdout, line)
}

func (a *app) printBench(out benchJSON, ops []weightedOp) {
	tw := tabwriter.NewWriter(a.env.stdout, 0, 0, 2, ' ', 0)
	row := func(name string, st loadgen.Stats) {
		fmt.Fprintf(tw, "%s\t%.0f ops/s\t%d calls in %.2fs\t%s\terrors: %s\n", name, st.Rate(), st.Ops+st.Failed,
			st.Elapsed.Seconds(), latencyText(st.Latency), errorsText(st.Errors))
	}
	name := ops[0].Name
	if len(ops) > 1 {
		name = "mix"
	}
	row(name, out.Result)
	if out.Noop != nil {
		row("no-op", *out.Noop)
	}
	_ = tw.Flush()
	if len(ops) > 1 {
		var parts []string
		for _, op := range ops {
			parts = append(parts, fmt.Sprintf("%s %d", op.Name, out.Calls[op.Name]))
		}
		fmt.Fprintf(a.env.stdout, "calls: %s\n", strings.Join(parts, ", "))
	}
	if out.Batch > 0 {
		fmt.Fprintf(a.env.stdout, "batches of %d items\n", out.Batch)
	}
	if out.Noop != nil {
		how := ""
		if n := len(out.RoundRatios); n > 0 {
			pcs := make([]string, n)
			for i, r := range out.RoundRatios {
				pcs[i] = fmt.Sprintf("%.0f", 100*r)
			}
			how = fmt.Sprintf(", median of %d alternating rounds (%s %%)", n, strings.Join(pcs, ", "))
		}
		fmt.Fprintf(a.env.stdout, "%s ÷ no-op: %.1f %% of the no-op ceiling (grpc.health.v1.Health/Check on the same node and TLS%s)\n", name, 100*out.RatioToNoop, how)
	}
	for _, m := range out.Memory {
		fmt.Fprintf(a.env.stdout, "memory %s: resident %.1f MiB after the first period, %.1f MiB at the end (%+.1f %%), peak %.1f MiB\n",
			m.Metrics, m.First/(1<<20), m.Last/(1<<20), m.GrowthPc, m.Peak/(1<<20))
	}
}

// Memory readings.

// reading is what one /metrics fetch said of its process.
type reading struct {
	url                        string
	rss, goroutines, heapInuse float64
	cpu                        float64 // process_cpu_seconds_total
	err                        error
}

type metricsReader struct{ client *http.Client }

func (m *metricsReader) read(ctx context.Context, url string) reading {
	r := reading{url: url}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		r.err = err
		return r
	}
	resp, err := m.client.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		r.err = fmt.Errorf("GET %s: %s", url, resp.Status)
		return r
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		r.err = fmt.Errorf("GET %s: %w", url, err)
		return r
	}
	rss, ok := mf["process_resident_memory_bytes"]
	if !ok || len(rss.GetMetric()) == 0 {
		r.err = fmt.Errorf("GET %s: no process_resident_memory_bytes", url)
		return r
	}
	r.rss = rss.GetMetric()[0].GetGauge().GetValue()
	if g, ok := mf["go_goroutines"]; ok && len(g.GetMetric()) > 0 {
		r.goroutines = g.GetMetric()[0].GetGauge().GetValue()
	}
	if h, ok := mf["go_memstats_heap_inuse_bytes"]; ok && len(h.GetMetric()) > 0 {
		r.heapInuse = h.GetMetric()[0].GetGauge().GetValue()
	}
	if c, ok := mf["process_cpu_seconds_total"]; ok && len(c.GetMetric()) > 0 {
		r.cpu = c.GetMetric()[0].GetCounter().GetValue()
	}
	return r
}

// memoryGrowth sums up each process's readings: the first period's, the
// last's and the peak.
func memoryGrowth(intervals []benchIntervalJSON, urls []string) []memoryJSON {
	var out []memoryJSON
	for i, url := range urls {
		var m memoryJSON
		m.Metrics = url
		n := 0
		for _, iv := range intervals {
			if i >= len(iv.Readings) || iv.Readings[i].err != nil {
				continue
			}
			v := iv.Readings[i].rss
			if n == 0 {
				m.First = v
			}
			m.Last, m.Peak = v, max(m.Peak, v)
			n++
		}
		if n == 0 {
			continue
		}
		if m.First > 0 {
			m.GrowthPc = 100 * (m.Last - m.First) / m.First
		}
		out = append(out, m)
	}
	return out
}

// sizeValue is a byte count flag: 1024, 64B, 1KiB, 4MiB (k and m are KiB and
// MiB too).
type sizeValue int

func (v *sizeValue) Type() string   { return "size" }
func (v *sizeValue) String() string { return sizeText(int(*v)) }

func (v *sizeValue) Set(s string) error {
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '-' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	mult, ok := map[string]int{"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "mb": 1 << 20}[unit]
	if !ok {
		return fmt.Errorf("%q: the unit must be B, KiB or MiB", s)
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 || n > 64<<20/mult {
		return fmt.Errorf("%q is not a size from 0 to 64 MiB", s)
	}
	*v = sizeValue(n * mult)
	return nil
}
