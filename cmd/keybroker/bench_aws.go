package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/loadgen"
)

// Protocols keybroker bench speaks (--protocol).
const (
	protoGRPC    = "grpc"
	protoAWSJSON = "awsjson"
	protoXKS     = "xks"
)

// The environment variables the AWS tools read, which bench --protocol
// awsjson|xks reads too: the access key (never a flag, so that it stays
// out of shell history and ps), the region, the AWS KMS endpoint and the
// CA bundle that signs it.
const (
	envAWSAccessKeyID     = "AWS_ACCESS_KEY_ID"
	envAWSSecretAccessKey = "AWS_SECRET_ACCESS_KEY"
	envAWSRegion          = "AWS_REGION"
	envAWSEndpointKMS     = "AWS_ENDPOINT_URL_KMS"
	envAWSCABundle        = "AWS_CA_BUNDLE"
)

// --aws-client's values.
const (
	awsClientSDK    = "sdk"
	awsClientSigner = "signer"
)

// defaultXKSRate is --rate's default: AWS KMS's default request quota for
// an external key store, 1,800 requests per second.
const defaultXKSRate = 1800

// awsOps are the operations each AWS protocol drives.
var awsOps = map[string][]string{
	protoAWSJSON: {"encrypt", "decrypt", "datakey"},
	protoXKS:     {"encrypt", "decrypt"},
}

// awsTarget is what an AWS protocol's load needs: where, as whom, and
// the HTTPS client trusting the endpoint's CA.
type awsTarget struct {
	endpoint string
	region   string
	creds    aws.Credentials
	http     aws.HTTPClient
}

// awsSetup reads and checks the settings of --protocol awsjson or xks.
func (a *app) awsSetup(cmd *cobra.Command, f *benchFlags, ops []weightedOp) (*awsTarget, error) {
	for _, op := range ops {
		if !slices.Contains(awsOps[f.protocol], op.Name) {
			return nil, usageErrorf("--protocol %s: --op %s is not one of its operations (%s)", f.protocol, op.Name, strings.Join(awsOps[f.protocol], ", "))
		}
	}
	switch {
	case f.compareNoop:
		return nil, usageErrorf("--protocol %s compares with the gRPC path, not with the no-op: leave out --compare-noop", f.protocol)
	case f.awsClient != awsClientSDK && f.awsClient != awsClientSigner:
		return nil, usageErrorf("--aws-client must be %s or %s, not %q", awsClientSDK, awsClientSigner, f.awsClient)
	case f.protocol == protoXKS && len(ops) > 1:
		return nil, usageErrorf("--protocol xks drives one operation at a fixed rate: give --op encrypt or --op decrypt")
	case f.protocol == protoXKS && (f.rate <= 0 || f.rate > 100000):
		return nil, usageErrorf("--rate must be above 0 and at most 100000 requests/s, not %g", f.rate)
	case f.protocol == protoXKS && f.count > 0:
		return nil, usageErrorf("--protocol xks runs for --duration at --rate: leave out --count")
	case f.protocol == protoXKS && f.duration <= 0:
		return nil, usageErrorf("--protocol xks needs a --duration")
	case f.protocol == protoXKS && len(f.metrics) > 0:
		return nil, usageErrorf("--protocol xks reports the whole run: leave out --metrics")
	case f.interval > 0 || f.maxGrowth > 0:
		return nil, usageErrorf("--protocol %s reports the whole run: leave out --interval and --max-rss-growth", f.protocol)
	}
	t := &awsTarget{region: firstOf(f.region, a.env.getenv(envAWSRegion))}
	t.endpoint = f.endpoint
	if t.endpoint == "" && f.protocol == protoAWSJSON {
		t.endpoint = a.env.getenv(envAWSEndpointKMS)
	}
	u, err := url.Parse(t.endpoint)
	if t.endpoint == "" || err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		what := "the AWS KMS API's URL, https://host:port (env " + envAWSEndpointKMS + ")"
		if f.protocol == protoXKS {
			what = "the XKS proxy's URL with its path prefix, https://host:port/prefix"
		}
		return nil, usageErrorf("--protocol %s needs --endpoint: %s; got %q", f.protocol, what, t.endpoint)
	}
	t.endpoint = strings.TrimSuffix(t.endpoint, "/")
	if t.region == "" {
		return nil, usageErrorf("--protocol %s needs --region (or %s): requests are signed for a region", f.protocol, envAWSRegion)
	}
	t.creds = aws.Credentials{AccessKeyID: a.env.getenv(envAWSAccessKeyID), SecretAccessKey: a.env.getenv(envAWSSecretAccessKey), Source: "environment"}
	if t.creds.AccessKeyID == "" || t.creds.SecretAccessKey == "" {
		return nil, usageErrorf("--protocol %s signs with the access key in %s and %s (keybroker access-key create --env prints them)", f.protocol, envAWSAccessKeyID, envAWSSecretAccessKey)
	}
	if err := f.check(ops); err != nil {
		return nil, err
	}
	caFile := firstOf(a.setting(cmd, "ca", envCA), a.env.getenv(envAWSCABundle))
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, usageErrorf("--ca: %v", err)
		}
		tlsCfg.RootCAs = x509.NewCertPool()
		if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, usageErrorf("--ca %s holds no PEM certificate", clipPath(caFile))
		}
	}
	// The AWS SDK's own HTTP client, as an SDK program with AWS_CA_BUNDLE
	// has it: it offers HTTP/2 (ForceAttemptHTTP2), which the node's
	// listeners speak; --http1 keeps to HTTP/1.1, as the AWS CLI and most
	// other SDKs do, one connection per call in flight.
	t.http = awshttp.NewBuildableClient().WithDialerOptions(func(d *net.Dialer) {
		d.Timeout = a.connectTimeout
	}).WithTransportOptions(func(tr *http.Transport) {
		tr.TLSClientConfig = tlsCfg
		tr.TLSHandshakeTimeout = a.connectTimeout
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = f.workers, f.workers
		if f.http1 {
			tr.ForceAttemptHTTP2 = false
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
	})
	return t, nil
}

// clipPath keeps a path short in a message.
func clipPath(p string) string {
	if len(p) > 200 {
		return p[:200] + "…"
	}
	return p
}

// awsCodes maps AWS KMS's exception names to the gRPC codes loadgen
// counts failures under.
var awsCodes = map[string]codes.Code{
	"ThrottlingException":         codes.ResourceExhausted,
	"AccessDeniedException":       codes.PermissionDenied,
	"UnrecognizedClientException": codes.Unauthenticated,
	"InvalidSignatureException":   codes.Unauthenticated,
	"NotFoundException":           codes.NotFound,
	"DisabledException":           codes.FailedPrecondition,
	"KMSInvalidStateException":    codes.FailedPrecondition,
	"ValidationException":         codes.InvalidArgument,
	"InvalidCiphertextException":  codes.InvalidArgument,
	"KMSInternalException":        codes.Internal,
}

// awsStatus is an AWS exception as a gRPC status naming it.
func awsStatus(name, message string) error {
	code, ok := awsCodes[name]
	if !ok {
		code = codes.Unknown
	}
	return status.Error(code, name+": "+message)
}

// awsCallError turns an AWS API error into a gRPC status, so that
// loadgen counts it under a code and the report names AWS's exception.
func awsCallError(err error) error {
	if err == nil {
		return nil
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return awsStatus(apiErr.ErrorCode(), apiErr.ErrorMessage())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

// kmsClient is the AWS SDK's own KMS client pointed at t, with retries
// off so that every failure counts.
func (t *awsTarget) kmsClient() *kms.Client {
	return kms.New(kms.Options{
		Region:       t.region,
		BaseEndpoint: aws.String(t.endpoint),
		Credentials:  credentials.StaticCredentialsProvider{Value: t.creds},
		HTTPClient:   t.http,
		Retryer:      aws.NopRetryer{},
	})
}

// awsKMS is the part of the AWS KMS API bench calls: the AWS SDK's own
// client (--aws-client sdk), or a thin one (signer) that signs with the
// SDK's SigV4 signer and sends the JSON itself, so that a client's cost
// on a machine it shares with the node can be told from the node's.
type awsKMS interface {
	Encrypt(context.Context, *kms.EncryptInput, ...func(*kms.Options)) (*kms.EncryptOutput, error)
	Decrypt(context.Context, *kms.DecryptInput, ...func(*kms.Options)) (*kms.DecryptOutput, error)
	GenerateDataKey(context.Context, *kms.GenerateDataKeyInput, ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error)
}

var _ awsKMS = (*kms.Client)(nil)

// signerKMS is the thin client.
type signerKMS struct {
	t      *awsTarget
	signer *v4.Signer
}

// call posts one operation's request and decodes its answer into out.
func (c *signerKMS) call(ctx context.Context, op string, in, out any) error {
	code, answer, err := c.t.post(ctx, c.signer, signedPost{url: c.t.endpoint + "/", service: "kms", contentType: "application/x-amz-json-1.1",
		target: "TrentService." + op, limit: 16 << 20}, in)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(answer, &e)
		return awsStatus(e.Type, fmt.Sprintf("HTTP %d: %s", code, e.Message))
	}
	if err := decodeAnswer(answer, out); err != nil {
		return status.Errorf(codes.DataLoss, "%s: the answer is not JSON: %v", op, err)
	}
	return nil
}

// signedPost is where and how awsTarget.post sends a request.
type signedPost struct {
	url, service string // the SigV4 service: kms or kms-xks-proxy
	contentType  string
	target       string // X-Amz-Target, when not empty
	limit        int64  // of the answer read
}

// post sends in as JSON to p.url, signed with signer as the AWS SDK signs
// (SigV4, the payload's hash, t's credentials and region), and answers
// the HTTP status and at most p.limit bytes of the body. Only a failure to
// send or read is an error: the caller reads its API's error answers.
func (t *awsTarget) post(ctx context.Context, signer *v4.Signer, p signedPost, in any) (int, []byte, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return 0, nil, status.Error(codes.Internal, err.Error())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(data))
	if err != nil {
		return 0, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	req.Header.Set("Content-Type", p.contentType)
	if p.target != "" {
		req.Header.Set("X-Amz-Target", p.target)
	}
	sum := sha256.Sum256(data)
	if err := signer.SignHTTP(ctx, t.creds, req, hex.EncodeToString(sum[:]), p.service, t.region, time.Now()); err != nil {
		return 0, nil, status.Error(codes.Internal, err.Error())
	}
	resp, err := t.http.Do(req)
	if err != nil {
		return 0, nil, awsCallError(err)
	}
	defer resp.Body.Close()
	var answer []byte
	if n := resp.ContentLength; n >= 0 && n <= p.limit {
		answer = make([]byte, n) // read in one piece, not grown from 512 bytes
		_, err = io.ReadFull(resp.Body, answer)
	} else {
		answer, err = io.ReadAll(io.LimitReader(resp.Body, p.limit))
	}
	if err != nil {
		return 0, nil, status.Error(codes.Unavailable, err.Error())
	}
	return resp.StatusCode, answer, nil
}

// kmsRequest is the body of the calls bench makes, with AWS's field
// names; members not set are left out, as the SDK leaves them out.
type kmsRequest struct {
	KeyID             string            `json:"KeyId,omitempty"`
	Plaintext         []byte            `json:"Plaintext,omitempty"`
	CiphertextBlob    []byte            `json:"CiphertextBlob,omitempty"`
	EncryptionContext map[string]string `json:"EncryptionContext,omitempty"`
	KeySpec           string            `json:"KeySpec,omitempty"`
}

// The answers decode into the SDK's own output types: their field names
// are AWS's, and []byte decodes from base64 as the API sends it.

func (c *signerKMS) Encrypt(ctx context.Context, in *kms.EncryptInput, _ ...func(*kms.Options)) (*kms.EncryptOutput, error) {
	out := &kms.EncryptOutput{}
	req := kmsRequest{KeyID: aws.ToString(in.KeyId), Plaintext: in.Plaintext, EncryptionContext: in.EncryptionContext}
	return out, c.call(ctx, "Encrypt", req, out)
}

func (c *signerKMS) Decrypt(ctx context.Context, in *kms.DecryptInput, _ ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	out := &kms.DecryptOutput{}
	req := kmsRequest{KeyID: aws.ToString(in.KeyId), CiphertextBlob: in.CiphertextBlob, EncryptionContext: in.EncryptionContext}
	return out, c.call(ctx, "Decrypt", req, out)
}

func (c *signerKMS) GenerateDataKey(ctx context.Context, in *kms.GenerateDataKeyInput, _ ...func(*kms.Options)) (*kms.GenerateDataKeyOutput, error) {
	out := &kms.GenerateDataKeyOutput{}
	req := kmsRequest{KeyID: aws.ToString(in.KeyId), EncryptionContext: in.EncryptionContext, KeySpec: string(in.KeySpec)}
	return out, c.call(ctx, "GenerateDataKey", req, out)
}

// awsCall makes one operation's call through the AWS KMS API, as the
// gRPC path's call does (decrypts compared with what was encrypted).
func (b *benchRun) awsCall(ctx context.Context, client awsKMS, op weightedOp) (loadgen.Op, error) {
	key, ectx, pt := op.Key, b.f.encCtx.m, b.payload
	switch op.Name {
	case "encrypt":
		in := &kms.EncryptInput{KeyId: aws.String(key), Plaintext: pt, EncryptionContext: ectx}
		return func(ctx context.Context) error { _, err := client.Encrypt(ctx, in); return awsCallError(err) }, nil
	case "decrypt":
		enc, err := client.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(key), Plaintext: pt, EncryptionContext: ectx})
		if err != nil {
			return nil, fmt.Errorf("bench: preparing decrypt: Encrypt through the AWS KMS API: %w", awsCallError(err))
		}
		in := &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ectx}
		return func(ctx context.Context) error {
			out, err := client.Decrypt(ctx, in)
			if err == nil && !bytes.Equal(out.Plaintext, pt) {
				return errWrongResult("Decrypt", "a different plaintext")
			}
			return awsCallError(err)
		}, nil
	case "datakey":
		in := &kms.GenerateDataKeyInput{KeyId: aws.String(key), KeySpec: "AES_256", EncryptionContext: ectx}
		return func(ctx context.Context) error {
			out, err := client.GenerateDataKey(ctx, in)
			if err == nil && len(out.Plaintext) != 32 {
				return errWrongResult("GenerateDataKey", fmt.Sprintf("a %d-byte data key", len(out.Plaintext)))
			}
			return awsCallError(err)
		}, nil
	}
	return nil, fmt.Errorf("bench: no AWS KMS operation %q", op.Name)
}

// newAWSWorker is newWorker through the AWS KMS API.
func (b *benchRun) newAWSWorker(ctx context.Context, client awsKMS, w int, ops []weightedOp, calls map[string]uint64) (loadgen.Op, error) {
	return b.weighted(w, ops, calls, func(op weightedOp) (loadgen.Op, error) { return b.awsCall(ctx, client, op) })
}

// awsJSONResult is --protocol awsjson's --output json: the AWS path's
// figures (result) beside the gRPC path's in the same run.
type awsJSONResult struct {
	Protocol    string            `json:"protocol"`
	Client      string            `json:"aws_client"`
	HTTP1       bool              `json:"http1,omitempty"`
	Endpoint    string            `json:"endpoint"`
	GRPCTarget  string            `json:"grpc_target"`
	Ops         []weightedOp      `json:"ops"`
	Size        int               `json:"size_bytes"`
	Workers     int               `json:"workers"`
	Warmup      float64           `json:"warmup_s"`
	Result      loadgen.Stats     `json:"result"`
	Calls       map[string]uint64 `json:"calls_by_op"`
	GRPC        loadgen.Stats     `json:"grpc"`
	Ratio       float64           `json:"ratio_to_grpc"`
	RoundRatios []float64         `json:"round_ratios,omitempty"`
	CPU         *awsCPU           `json:"cpu_us_per_call,omitempty"`
}

// awsCPU is the CPU each path's calls cost, in µs a call: the node
// processes' (process_cpu_seconds_total at --metrics, summed) and the
// bench process's own (getrusage), read just before and after each round.
// On a machine the client shares with the node, the ratio of the rates
// mixes the client's cost into the node's; NodeRatio (gRPC's node CPU per
// call ÷ the AWS path's) is the AWS path's rate as a share of gRPC's on a
// node whose CPU bounds it.
type awsCPU struct {
	NodeAWS   float64 `json:"node_awsjson,omitempty"`
	NodeGRPC  float64 `json:"node_grpc,omitempty"`
	BenchAWS  float64 `json:"bench_awsjson"`
	BenchGRPC float64 `json:"bench_grpc"`
	NodeRatio float64 `json:"node_ratio,omitempty"`
	NodeError string  `json:"node_error,omitempty"`
}

// cpuMeter adds up the CPU each load's rounds take.
type cpuMeter struct {
	ctx     context.Context
	scraper *metricsReader
	urls    []string
	node    [2]float64 // seconds
	self    [2]float64
	err     error
}

// read is the node processes' CPU seconds (summed) and the bench's own.
func (m *cpuMeter) read() (node, self float64) {
	for _, u := range m.urls {
		r := m.scraper.read(m.ctx, u)
		if r.err != nil && m.err == nil {
			m.err = r.err
		}
		node += r.cpu
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	return node, self
}

// around is loadgen.Config.AroundRound.
func (m *cpuMeter) around(l int) func() {
	n0, s0 := m.read()
	return func() {
		n1, s1 := m.read()
		m.node[l] += n1 - n0
		m.self[l] += s1 - s0
	}
}

// perCall is the CPU figures per call of a and g, the two loads' stats.
func (m *cpuMeter) perCall(a, g loadgen.Stats) *awsCPU {
	us := func(sec float64, st loadgen.Stats) float64 {
		if n := st.Ops + st.Failed; n > 0 {
			return sec * 1e6 / float64(n)
		}
		return 0
	}
	c := &awsCPU{BenchAWS: us(m.self[0], a), BenchGRPC: us(m.self[1], g)}
	switch {
	case m.err != nil:
		c.NodeError = m.err.Error()
	case len(m.urls) > 0:
		c.NodeAWS, c.NodeGRPC = us(m.node[0], a), us(m.node[1], g)
		if c.NodeAWS > 0 {
			c.NodeRatio = c.NodeGRPC / c.NodeAWS
		}
	}
	return c
}

// benchAWSJSON drives the operations through the AWS KMS API at
// --endpoint and the same operations through gRPC at --addr, alternating
// in --rounds rounds (or one after the other with --count), and reports
// both and the ratio of their rates.
func (a *app) benchAWSJSON(cmd *cobra.Command, f *benchFlags, ops []weightedOp) error {
	t, err := a.awsSetup(cmd, f, ops)
	if err != nil {
		return err
	}
	b, closeRun, err := a.startBench(cmd, f, ops)
	if err != nil {
		return err
	}
	defer closeRun()
	s, ctx := b.s, cmd.Context()
	var client awsKMS = t.kmsClient()
	if f.awsClient == awsClientSigner {
		client = &signerKMS{t: t, signer: v4.NewSigner()}
	}
	out := awsJSONResult{Protocol: protoAWSJSON, Client: f.awsClient, HTTP1: f.http1, Endpoint: t.endpoint, GRPCTarget: s.addr, Ops: ops, Size: int(f.size),
		Workers: f.workers, Warmup: f.warmup.Seconds()}
	if !a.jsonOutput() {
		fmt.Fprintf(a.env.stdout, "bench %s through the AWS KMS API at %s (%s client, %s), beside gRPC at %s: %s\n", describeOps(ops, f), t.endpoint, f.awsClient, map[bool]string{true: "HTTP/1.1", false: "HTTP/2 when offered"}[f.http1], s.addr, describeLoad(f))
	}
	calls := make([]map[string]uint64, f.workers)
	newAWS := func(w int) (loadgen.Op, error) {
		calls[w] = map[string]uint64{}
		return b.newAWSWorker(ctx, client, w, ops, calls[w])
	}
	newGRPC := func(w int) (loadgen.Op, error) {
		return b.newWorker(ctx, w, ops, map[string]uint64{})
	}
	meter := &cpuMeter{ctx: ctx, urls: f.metrics,
		scraper: &metricsReader{client: &http.Client{Transport: &http.Transport{TLSClientConfig: s.tls}, Timeout: 10 * time.Second}}}
	cfg := loadgen.Config{Workers: f.workers, Duration: f.duration, Count: f.count, Warmup: f.warmup, AroundRound: meter.around}
	if f.rounds > 1 && f.count == 0 {
		p, err := loadgen.RunPaired(ctx, cfg, f.rounds, newAWS, newGRPC)
		if err != nil {
			return err
		}
		out.Result, out.GRPC, out.Ratio, out.RoundRatios = p.A, p.B, p.MedianRatio(), p.Ratios
	} else {
		// One run each, its CPU counted from the end of its warm-up.
		run := func(l int, newOp func(int) (loadgen.Op, error)) (loadgen.Stats, error) {
			after, c := func() {}, cfg
			c.OnStart = func() { after = meter.around(l) }
			st, err := loadgen.Run(ctx, c, newOp)
			after()
			return st, err
		}
		if out.Result, err = run(0, newAWS); err != nil {
			return err
		}
		if out.GRPC, err = run(1, newGRPC); err != nil {
			return err
		}
		if r := out.GRPC.Rate(); r > 0 {
			out.Ratio = out.Result.Rate() / r
		}
	}
	out.CPU = meter.perCall(out.Result, out.GRPC)
	out.Calls = map[string]uint64{}
	for _, c := range calls {
		for k, n := range c {
			out.Calls[k] += n
		}
	}
	if a.jsonOutput() {
		if err := a.printJSON(out); err != nil {
			return err
		}
	} else {
		name := ops[0].Name
		if len(ops) > 1 {
			name = "mix"
		}
		tw := tabwriter.NewWriter(a.env.stdout, 0, 0, 2, ' ', 0)
		for _, r := range []struct {
			name string
			st   loadgen.Stats
		}{{name + " awsjson", out.Result}, {name + " grpc", out.GRPC}} {
			fmt.Fprintf(tw, "%s\t%.0f ops/s\t%d calls in %.2fs\t%s\terrors: %s\n", r.name, r.st.Rate(), r.st.Ops+r.st.Failed,
				r.st.Elapsed.Seconds(), latencyText(r.st.Latency), errorsText(r.st.Errors))
		}
		_ = tw.Flush()
		how := "one run each"
		if n := len(out.RoundRatios); n > 0 {
			pcs := make([]string, n)
			for i, r := range out.RoundRatios {
				pcs[i] = fmt.Sprintf("%.0f", 100*r)
			}
			how = fmt.Sprintf("median of %d alternating rounds (%s %%)", n, strings.Join(pcs, ", "))
		}
		fmt.Fprintf(a.env.stdout, "awsjson ÷ grpc: %.1f %% of the gRPC path's ops/s (%s)\n", 100*out.Ratio, how)
		a.printAWSCPU(out.CPU)
	}
	return benchVerdict(benchJSON{Result: out.Result, Noop: &out.GRPC}, 0)
}

// printAWSCPU prints the CPU per call of both paths.
func (a *app) printAWSCPU(c *awsCPU) {
	w := a.env.stdout
	if c.NodeError != "" {
		fmt.Fprintf(w, "node CPU not read: %s\n", c.NodeError)
	}
	if c.NodeAWS == 0 {
		fmt.Fprintf(w, "CPU per call of this bench process: awsjson %.0f µs, grpc %.0f µs (--metrics adds the node's)\n", c.BenchAWS, c.BenchGRPC)
		return
	}
	fmt.Fprintf(w, "CPU per call: awsjson node %.0f µs + bench %.0f µs, grpc node %.0f µs + bench %.0f µs\n", c.NodeAWS, c.BenchAWS, c.NodeGRPC, c.BenchGRPC)
	fmt.Fprintf(w, "node CPU per call, grpc ÷ awsjson: %.1f %% (the AWS path's rate as a share of gRPC's where the node's CPU bounds it)\n", 100*c.NodeRatio)
}

// xksResult is --protocol xks's --output json.
type xksResult struct {
	Protocol string        `json:"protocol"`
	Endpoint string        `json:"endpoint"`
	Op       string        `json:"op"`
	Key      string        `json:"key"`
	Size     int           `json:"size_bytes"`
	Rate     float64       `json:"offered_per_s"`
	Workers  int           `json:"workers"`
	Warmup   float64       `json:"warmup_s"`
	Result   loadgen.Stats `json:"result"`
	// Late counts the requests that started more than lateAfter after
	// their time: every worker was busy, or the generator itself was held
	// up (a loaded machine) — the rate was not held for them.
	Late uint64 `json:"late"`
}

// lateAfter is how far behind its time a request may start before it
// counts as late.
const lateAfter = 10 * time.Millisecond

// xksBody is an XKS request body; the fields not used are left out.
type xksBody struct {
	RequestMetadata struct {
		AWSPrincipalARN string `json:"awsPrincipalArn"`
		KMSOperation    string `json:"kmsOperation"`
		KMSRequestID    string `json:"kmsRequestId"`
		KMSKeyARN       string `json:"kmsKeyArn"`
	} `json:"requestMetadata"`
	Plaintext           []byte `json:"plaintext,omitempty"`
	Ciphertext          []byte `json:"ciphertext,omitempty"`
	EncryptionAlgorithm string `json:"encryptionAlgorithm"`
	AAD                 []byte `json:"additionalAuthenticatedData,omitempty"`
	IV                  []byte `json:"initializationVector,omitempty"`
	Tag                 []byte `json:"authenticationTag,omitempty"`
	Metadata            []byte `json:"ciphertextMetadata,omitempty"`
}

// xksCaller signs and sends XKS requests for one key.
type xksCaller struct {
	t      *awsTarget
	key    string
	signer *v4.Signer
	seq    atomic.Uint64
}

// post sends body to the key's operation and decodes the answer into out.
func (x *xksCaller) post(ctx context.Context, op string, body *xksBody, out any) error {
	body.RequestMetadata.KMSOperation = map[string]string{"encrypt": "Encrypt", "decrypt": "Decrypt"}[op]
	body.RequestMetadata.KMSRequestID = "keybroker-bench-" + strconv.FormatUint(x.seq.Add(1), 10)
	httpCode, answer, err := x.t.post(ctx, x.signer, signedPost{url: x.t.endpoint + "/kms/xks/v1/keys/" + url.PathEscape(x.key) + "/" + op,
		service: "kms-xks-proxy", contentType: "application/json", limit: 1 << 20}, body)
	if err != nil {
		return err
	}
	if httpCode != http.StatusOK {
		var e struct {
			Name    string `json:"errorName"`
			Message string `json:"errorMessage"`
		}
		_ = json.Unmarshal(answer, &e)
		code := map[int]codes.Code{400: codes.InvalidArgument, 401: codes.Unauthenticated, 403: codes.PermissionDenied,
			404: codes.NotFound, 429: codes.ResourceExhausted, 501: codes.Unimplemented, 503: codes.Unavailable, 500: codes.Internal}[httpCode]
		if code == codes.OK {
			code = codes.Unknown
		}
		return status.Errorf(code, "XKS %s: HTTP %d %s: %s", op, httpCode, e.Name, e.Message)
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return status.Errorf(codes.DataLoss, "XKS %s: the answer is not JSON: %v", op, err)
	}
	return nil
}

// xksAnswer is the part of an encrypt or decrypt answer bench reads.
type xksAnswer struct {
	Ciphertext []byte `json:"ciphertext"`
	IV         []byte `json:"initializationVector"`
	Tag        []byte `json:"authenticationTag"`
	Metadata   []byte `json:"ciphertextMetadata"`
	Plaintext  []byte `json:"plaintext"`
}

// xksOp makes the XKS call: encrypt of the payload, or decrypt of a
// ciphertext made at the start, compared with the payload.
func (x *xksCaller) xksOp(ctx context.Context, op string, pt, aad []byte) (loadgen.Op, error) {
	base := xksBody{EncryptionAlgorithm: "AES_GCM", AAD: aad}
	base.RequestMetadata.AWSPrincipalARN = "arn:aws:iam::000000000000:role/keybroker-bench"
	base.RequestMetadata.KMSKeyARN = "arn:aws:kms:" + x.t.region + ":000000000000:key/keybroker-bench"
	switch op {
	case "encrypt":
		return func(ctx context.Context) error {
			body := base
			body.Plaintext = pt
			var out xksAnswer
			if err := x.post(ctx, op, &body, &out); err != nil {
				return err
			}
			if len(out.Ciphertext) != len(pt) || len(out.Tag) != 16 {
				return errWrongResult("XKS encrypt", fmt.Sprintf("a %d-byte ciphertext and a %d-byte tag", len(out.Ciphertext), len(out.Tag)))
			}
			return nil
		}, nil
	case "decrypt":
		body := base
		body.Plaintext = pt
		var enc xksAnswer
		if err := x.post(ctx, "encrypt", &body, &enc); err != nil {
			return nil, fmt.Errorf("bench: preparing decrypt: XKS encrypt: %w", err)
		}
		dec := base
		dec.Ciphertext, dec.IV, dec.Tag, dec.Metadata = enc.Ciphertext, enc.IV, enc.Tag, enc.Metadata
		return func(ctx context.Context) error {
			body := dec
			var out xksAnswer
			if err := x.post(ctx, op, &body, &out); err != nil {
				return err
			}
			if !bytes.Equal(out.Plaintext, pt) {
				return errWrongResult("XKS decrypt", "a different plaintext")
			}
			return nil
		}, nil
	}
	return nil, fmt.Errorf("bench: no XKS operation %q", op)
}

// benchXKS drives one XKS operation at a fixed rate — open loop, as AWS
// KMS calls an external key store whatever the proxy's latency — and
// reports the latency percentiles and the requests that started late.
func (a *app) benchXKS(cmd *cobra.Command, f *benchFlags, ops []weightedOp) error {
	t, err := a.awsSetup(cmd, f, ops)
	if err != nil {
		return err
	}
	op := ops[0].Name
	key := f.key
	ctx := cmd.Context()
	x := &xksCaller{t: t, key: key, signer: v4.NewSigner()}
	pt := bytes.Repeat([]byte{0x5a}, int(f.size))
	aad := []byte("keybroker bench")
	call, err := x.xksOp(ctx, op, pt, aad)
	if err != nil {
		return err
	}
	if a.timeout > 0 {
		inner := call
		call = func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, a.timeout)
			defer cancel()
			return inner(ctx)
		}
	}
	out := xksResult{Protocol: protoXKS, Endpoint: t.endpoint, Op: op, Key: key, Size: int(f.size), Rate: f.rate, Workers: f.workers, Warmup: f.warmup.Seconds()}
	if !a.jsonOutput() {
		fmt.Fprintf(a.env.stdout, "bench XKS %s (%s) of %s at %s: %.0f requests/s for %s after a %s warm-up, at most %d in flight\n",
			op, key, sizeText(int(f.size)), t.endpoint, f.rate, f.duration, f.warmup, f.workers)
	}
	if f.warmup > 0 {
		runAtRate(ctx, f.rate, f.warmup, f.workers, call)
	}
	out.Result, out.Late = runAtRate(ctx, f.rate, f.duration, f.workers, call)
	if a.jsonOutput() {
		if err := a.printJSON(out); err != nil {
			return err
		}
	} else {
		st := out.Result
		fmt.Fprintf(a.env.stdout, "xks %s  %.0f ops/s of %.0f offered  %d calls in %.2fs  p50 %s  p99 %s  p99.9 %s  max %s  errors: %s  late: %d\n",
			op, st.Rate(), f.rate, st.Ops+st.Failed, st.Elapsed.Seconds(), durText(st.Latency.P50), durText(st.Latency.P99),
			durText(st.Latency.P999), durText(st.Latency.Max), errorsText(st.Errors), out.Late)
	}
	return benchVerdict(benchJSON{Result: out.Result}, 0)
}

// runAtRate starts call at rate per second for d, each on one of at most
// workers goroutines, and returns the figures: latency is each call's own
// (from when a worker started it), and late counts the calls that started
// more than lateAfter behind their time because every worker was busy —
// the sign that the rate was not held.
func runAtRate(ctx context.Context, rate float64, d time.Duration, workers int, call loadgen.Op) (loadgen.Stats, uint64) {
	interval := time.Duration(float64(time.Second) / rate)
	jobs := make(chan time.Time)
	var mu sync.Mutex
	hist := hdr.New(int64(time.Microsecond), int64(time.Hour), 3)
	failed := map[string]uint64{}
	var nFailed, late uint64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for due := range jobs {
				t0 := time.Now()
				err := call(ctx)
				t1 := time.Now()
				mu.Lock()
				if t0.Sub(due) > lateAfter {
					late++
				}
				if err != nil {
					failed[status.Code(err).String()]++
					nFailed++
				} else {
					_ = hist.RecordValue(min(max(int64(t1.Sub(t0)), int64(time.Microsecond)), int64(time.Hour)))
				}
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	end := start.Add(d)
	timer := time.NewTimer(0)
	<-timer.C
send:
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if !due.Before(end) {
			break
		}
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break send
			}
		}
		select {
		case jobs <- due:
		case <-ctx.Done():
			break send
		}
	}
	close(jobs)
	wg.Wait()
	st := loadgen.Stats{Start: start, Elapsed: time.Since(start), Ops: uint64(hist.TotalCount()), Failed: nFailed}
	if len(failed) > 0 {
		st.Errors = failed
	}
	if st.Ops > 0 {
		at := func(q float64) time.Duration { return time.Duration(hist.ValueAtPercentile(q)) }
		st.Latency = loadgen.Latency{P50: at(50), P90: at(90), P99: at(99), P999: at(99.9), Max: time.Duration(hist.Max()), Mean: time.Duration(hist.Mean())}
	}
	return st, late
}
