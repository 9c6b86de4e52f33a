package framework

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

// CentralNode names the central node in every Cluster, whatever its node
// id.
const CentralNode = "central"

// A Principal is who a client, a connection or a CLI run acts as: a kind
// and a name in the cluster's trust domain.
type Principal struct {
	Kind identity.Kind
	Name string
}

// The principals scenarios act as. Policy gives App the keys labelled
// owner=<trust domain> and Admin everything.
var (
	App   = Principal{identity.Client, "app"}
	Admin = Principal{identity.Admin, "ops"}
)

// Edge describes one edge of a cluster Run starts.
type Edge struct {
	// Name is the edge's node id, Region its enrolled region.
	Name, Region string
	// Prefetch receives material with Watch rather than on first use.
	Prefetch bool
}

// Options configure the clusters Run starts. Both ways get the same
// nodes, the same policy (Policy) and roots of trust of the same kind.
type Options struct {
	// Edges default to edge-eu (eu) and edge-us (us), both prefetching.
	// An empty non-nil slice starts the central node alone.
	Edges []Edge
	// SoftHSM puts the central node's root keys on a SoftHSM2 token made
	// for the test instead of a softkms keystore. Without SoftHSM2 the
	// test skips, unless KEYBROKER_REQUIRE_SOFTHSM=1. SoftHSM2 clusters
	// set SOFTHSM2_CONF, so such a test cannot be parallel.
	SoftHSM bool
}

func (o Options) edges() []Edge {
	if o.Edges == nil {
		return []Edge{{Name: "edge-eu", Region: "eu", Prefetch: true}, {Name: "edge-us", Region: "us", Prefetch: true}}
	}
	return o.Edges
}

// Cluster is what a scenario sees of a running keybroker cluster: a
// central node and its edges, whichever way they run. Nodes are named by
// CentralNode or an edge's name. Every method fails the test rather than
// return an error.
type Cluster interface {
	// Kind is "in-process" or "processes".
	Kind() string
	// TrustDomain is the trust domain of every certificate the cluster
	// issues; Policy's owner label must name it.
	TrustDomain() string
	// EdgeNames are the edges' names, in the order they were given.
	EdgeNames() []string
	// Addr is a node's gRPC address (host:port).
	Addr(node string) string
	// OpsAddr is a node's operations address (host:port): /healthz,
	// /readyz and /metrics over HTTPS.
	OpsAddr(node string) string

	// Client is an SDK client, closed when the test ends.
	Client(t *testing.T, opts ClientOptions) *client.Client
	// AdminClient is an SDK client as Admin at the central node, closed
	// when the test ends; its Admin method gives the KeyAdmin API.
	AdminClient(t *testing.T) *client.Client
	// Conn is a raw gRPC connection to a node as a principal, closed when
	// the test ends: for what the SDK hides (request ids, error codes, the
	// wire messages themselves).
	Conn(t *testing.T, node string, as Principal) *Conn
	// TLSFiles issues a certificate for a principal and writes it, with
	// its key, beside the cluster's CA file, for tools that take files.
	TLSFiles(t *testing.T, as Principal) identity.TLSFiles
	// CLI runs the built keybroker binary as a principal against a node.
	CLI(t *testing.T, as Principal, node string, stdin []byte, args ...string) Result

	// Audit is the records of a node's audit log that match, as written so
	// far: a call's record is written before it is answered.
	Audit(t *testing.T, node string, match func(audit.Record) bool) []audit.Record
	// SetPolicy replaces the Cedar policy and returns once the central
	// node enforces it. The test fails if the policy is refused.
	SetPolicy(t *testing.T, cedar string)
	// WaitSynced waits until every edge follows the central node and has
	// applied every key change committed so far.
	WaitSynced(t *testing.T)
	// Metric sums the samples of a Prometheus metric on a node's
	// /metrics whose labels contain match ("" for all).
	Metric(t *testing.T, node, name, match string) float64
	// BackendRoot is the URI of a root key that backend-mode keys of the
	// type can be created on (CreateKeyRequest.RootKey), or "" when the
	// cluster's root of trust has none.
	BackendRoot(typ kbv1.KeyType) string
}

// ClientOptions say who an SDK client acts as and where it connects.
type ClientOptions struct {
	// As defaults to App; its kind must be identity.Client or
	// identity.Admin.
	As Principal
	// Node pins the client to one node (client.Config.Direct). Empty: the
	// client starts at the first edge (the central node when there are
	// none) and routes by LookupKey from there.
	Node string
	// Region is the client's region label (client.Config.Region).
	Region string
}

func (o ClientOptions) principal() Principal {
	if o.As == (Principal{}) {
		return App
	}
	return o.As
}

// Controller is a Cluster whose nodes the test can stop, kill and start
// again, each from its configuration and its state on disk: the process
// implementation's, for the fault tests. Network faults go through a
// Proxy an EdgeNode dials central through (EdgeNode.Via).
type Controller interface {
	Cluster
	// Stop sends a node SIGTERM and waits for its clean exit.
	Stop(t *testing.T, node string)
	// Kill sends a node SIGKILL and waits until it is gone.
	Kill(t *testing.T, node string)
	// Restart starts a stopped or killed node again and waits until it is
	// ready; its address may change unless it is the central node.
	Restart(t *testing.T, node string)
}

// Run runs scenario twice, as the subtests "in-process" (a keybrokertest
// cluster inside the test binary) and "processes" (real keybroker
// processes built by Main, over mutual TLS, with their state on disk),
// each on a fresh cluster that opts describe and that is stopped when the
// subtest ends. A scenario written against Cluster is thereby checked
// against both the library the SDK's users test with and the binaries
// they deploy.
func Run(t *testing.T, opts Options, scenario func(t *testing.T, c Cluster)) {
	t.Helper()
	t.Run("in-process", func(t *testing.T) { scenario(t, StartInProcess(t, opts)) })
	t.Run("processes", func(t *testing.T) { scenario(t, StartProcesses(t, opts)) })
}

// readAudit returns the records of the audit log at path that match.
// Only whole lines count: a line being written has no newline yet.
func readAudit(t *testing.T, path string, match func(audit.Record) bool) []audit.Record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	var out []audit.Record
	for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r audit.Record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("%s line %d: %v: %q", path, i+1, err, line)
		}
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// scrapeMetric sums the samples of a Prometheus metric on the /metrics of
// the operations endpoint at opsAddr whose labels contain match, as the
// holder of tlsCfg.
func scrapeMetric(t *testing.T, tlsCfg *tls.Config, opsAddr, name, match string) float64 {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: tlsCfg}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+opsAddr+"/metrics", nil)
	resp, err := (&http.Client{Transport: tr, Timeout: time.Minute}).Do(req)
	must(t, "GET /metrics", err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, "reading /metrics", err)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET https://%s/metrics: %s: %s", opsAddr, resp.Status, body)
	}
	sum := 0.0
	for line := range strings.SplitSeq(string(body), "\n") {
		metric, value, ok := strings.Cut(line, " ")
		base, labels, _ := strings.Cut(metric, "{")
		if !ok || base != name || !strings.Contains(labels, match) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		must(t, "metric value", err)
		sum += v
	}
	return sum
}
