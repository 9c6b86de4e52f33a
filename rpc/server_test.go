package rpc_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
)

func TestMethodName(t *testing.T) {
	for _, tc := range []struct{ full, want string }{
		{"/keybroker.v1.KeyBroker/Encrypt", "Encrypt"},
		{"/keybroker.v1.KeyAdmin/CreateKey", "CreateKey"},
		{"Encrypt", "Encrypt"},
		{"/Encrypt", "Encrypt"},
		{"/a/b/c", "c"},
		{"/keybroker.v1.KeyBroker/", ""},
		{"", ""},
	} {
		if got := callinfo.MethodName(tc.full); got != tc.want {
			t.Errorf("MethodName(%q) = %q, want %q", tc.full, got, tc.want)
		}
	}
}

// --- test doubles -----------------------------------------------------

// fakeNode is a Node whose registry is a map. Only Get and Served are
// implemented; the embedded nil Node makes any other call panic, so a test
// notices if the code under test performs an operation.
type fakeNode struct {
	pipeline.Performer
	keys map[string]*managed.Key
}

func (f fakeNode) Get(_ context.Context, id string) (*managed.Key, error) {
	if k, ok := f.keys[id]; ok {
		return k, nil
	}
	return nil, managed.Errorf(managed.ErrNotFound, "key %q", id)
}

func (fakeNode) Served(*managed.Key, policy.Action) string { return "softkms" }

type staticPolicies struct{ s *policy.Set }

func (p staticPolicies) Current() *policy.Set { return p.s }

// transportStream stands in for the gRPC transport so that grpc.SetHeader
// works without a network; it records the header a call sets.
type transportStream struct {
	method string
	header metadata.MD
}

func (s *transportStream) Method() string { return s.method }
func (s *transportStream) SetHeader(md metadata.MD) error {
	s.header = metadata.Join(s.header, md)
	return nil
}
func (s *transportStream) SendHeader(md metadata.MD) error { return s.SetHeader(md) }
func (s *transportStream) SetTrailer(metadata.MD) error    { return nil }

const serverPolicies = `
@id("app-payments")
permit (principal == Client::"app", action == Action::"Encrypt", resource)
when { resource.hasTag("team") && resource.getTag("team") == "payments" };

@id("ops-everything")
permit (principal == Client::"ops", action == Action::"Encrypt", resource);

@id("app-random")
permit (principal == Client::"app", action == Action::"GenerateRandom", resource);
`

type testServer struct {
	s         *rpc.Server
	auditPath string
	log       *audit.Log
	pols      pipeline.Policies
}

func newTestServer(t *testing.T, classify func(error) (*status.Status, bool)) *testServer {
	t.Helper()
	return newTestServerOn(t, serverPolicies, fakeNode{keys: map[string]*managed.Key{
		"payments": testKey("payments", managed.AES256GCM, managed.ModeDerive, map[string]string{"team": "payments"}, ""),
		"secret":   testKey("secret", managed.AES256GCM, managed.ModeDerive, map[string]string{"team": "security"}, ""),
	}}, classify)
}

// newTestServerOn serves node under the Cedar policies given, auditing to
// a fresh log.
func newTestServerOn(t *testing.T, policies string, node pipeline.Performer, classify func(error) (*status.Status, bool)) *testServer {
	t.Helper()
	set, err := policy.Parse(map[string][]byte{"server.cedar": []byte(policies)})
	if err != nil {
		t.Fatalf("policy.Parse = %v", err)
	}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	log, err := audit.Open(path, 0)
	if err != nil {
		t.Fatalf("audit.Open = %v", err)
	}
	t.Cleanup(func() { _ = log.Close() })
	pols := staticPolicies{set}
	s, err := rpc.New(rpc.Config{Performer: node, Policy: pols, Audit: log, NodeID: "central-1", TrustDomain: td, Classify: classify})
	if err != nil {
		t.Fatalf("rpc.New = %v", err)
	}
	return &testServer{s: s, auditPath: path, log: log, pols: pols}
}

// records reads the audit log as written so far (each Append is one
// write, so the file holds every appended line).
func (ts *testServer) records(t *testing.T) []audit.Record {
	t.Helper()
	f, err := os.Open(ts.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// recordOpts ignore what the audit writer fills in.
var recordOpts = cmpopts.IgnoreFields(audit.Record{}, "Time", "Seq", "Prev", "Hash")

// peerFor is the gRPC peer of a TLS connection whose client presented a
// certificate for id, issued by a CA of the id's trust domain and verified
// against it.
func peerFor(t *testing.T, id identity.Identity) *peer.Peer {
	t.Helper()
	ca, err := identity.NewCA(id.TrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Issue(id, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	chains, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	return &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: chains}}}
}

var freshRequestID = regexp.MustCompile(`^[0-9a-f]{24}$`)

const encryptMethod = "/keybroker.v1.KeyBroker/Encrypt"

// --- New ----------------------------------------------------------------

func TestNewRequiresConfig(t *testing.T) {
	ts := newTestServer(t, nil)
	full := rpc.Config{Performer: fakeNode{}, Policy: ts.pols, Audit: ts.log, NodeID: "n", TrustDomain: td}
	for _, tc := range []struct {
		name   string
		mutate func(*rpc.Config)
	}{
		{"no performer", func(c *rpc.Config) { c.Performer = nil }},
		{"no policy", func(c *rpc.Config) { c.Policy = nil }},
		{"no audit", func(c *rpc.Config) { c.Audit = nil }},
		{"no node id", func(c *rpc.Config) { c.NodeID = "" }},
		{"no trust domain", func(c *rpc.Config) { c.TrustDomain = "" }},
	} {
		c := full
		tc.mutate(&c)
		if s, err := rpc.New(c); err == nil {
			t.Errorf("New(%s) = %v, nil; want an error", tc.name, s)
		}
	}
	if s, err := rpc.New(full); err != nil || s == nil {
		t.Fatalf("New(full config) = %v, %v", s, err)
	}
}

// --- request ids -------------------------------------------------------

func TestRequestIDUnset(t *testing.T) {
	ctx := t.Context()
	if got := callinfo.RequestID(ctx); got != "" {
		t.Errorf("RequestID(no call) = %q, want empty", got)
	}
	if got := callinfo.OutgoingRequestID(ctx); got != ctx {
		t.Error("OutgoingRequestID(no call) returned a new context, want ctx itself")
	}
	if md, ok := metadata.FromOutgoingContext(callinfo.OutgoingRequestID(ctx)); ok && len(md.Get("x-request-id")) > 0 {
		t.Errorf("OutgoingRequestID(no call) set x-request-id %v", md.Get("x-request-id"))
	}
}

// authenticated runs the unary interceptor for a caller with a valid
// certificate and returns the context the handler saw.
func authenticated(t *testing.T, ts *testServer, md metadata.MD) (context.Context, *transportStream) {
	t.Helper()
	return authenticatedAs(t, ts, identity.Client, md)
}

// authenticatedAs is authenticated for a caller of kind kind named app.
func authenticatedAs(t *testing.T, ts *testServer, kind identity.Kind, md metadata.MD) (context.Context, *transportStream) {
	t.Helper()
	stream := &transportStream{method: encryptMethod}
	ctx := grpc.NewContextWithServerTransportStream(t.Context(), stream)
	ctx = peer.NewContext(ctx, peerFor(t, identity.Identity{TrustDomain: td, Kind: kind, Name: "app"}))
	if md != nil {
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	var seen context.Context
	_, err := ts.s.UnaryInterceptor()(ctx, "req", &grpc.UnaryServerInfo{FullMethod: encryptMethod}, func(ctx context.Context, req any) (any, error) {
		seen = ctx
		return "resp", nil
	})
	if err != nil {
		t.Fatalf("UnaryInterceptor = %v, want nil", err)
	}
	if seen == nil {
		t.Fatal("the handler was not called")
	}
	return seen, stream
}

// TestRequestIDFromCaller: a node (edge, central) names the request it
// acts for; a client's or admin's x-request-id is only its own
// correlation id, never the audit's request id, so a caller cannot make
// its calls read as part of another's request.
func TestRequestIDFromCaller(t *testing.T) {
	long := strings.Repeat("a", 64)
	for _, tc := range []struct {
		name string
		md   metadata.MD
		want string // the id taken from the caller; "" for none
	}{
		{"none", nil, ""},
		{"well formed", metadata.Pairs("x-request-id", "req-42.A_b"), "req-42.A_b"},
		{"64 characters", metadata.Pairs("x-request-id", long), long},
		{"65 characters", metadata.Pairs("x-request-id", long+"a"), ""},
		{"empty", metadata.Pairs("x-request-id", ""), ""},
		{"space", metadata.Pairs("x-request-id", "req 42"), ""},
		{"newline", metadata.Pairs("x-request-id", "req\n42"), ""},
		{"slash", metadata.Pairs("x-request-id", "req/42"), ""},
		{"two values", metadata.Pairs("x-request-id", "req-1", "x-request-id", "req-2"), ""},
		{"other metadata only", metadata.Pairs("x-trace", "abc"), ""},
	} {
		for _, kind := range []identity.Kind{identity.Client, identity.Admin, identity.Edge, identity.Central} {
			t.Run(tc.name+"/"+string(kind), func(t *testing.T) {
				trusted := kind == identity.Edge || kind == identity.Central
				ts := newTestServer(t, nil)
				ctx, stream := authenticatedAs(t, ts, kind, tc.md)
				rid, crid := callinfo.RequestID(ctx), callinfo.ClientRequestID(ctx)
				switch {
				case trusted && tc.want != "" && rid != tc.want:
					t.Errorf("RequestID = %q, want the node's %q", rid, tc.want)
				case (!trusted || tc.want == "") && !freshRequestID.MatchString(rid):
					t.Errorf("RequestID = %q, want a fresh 24-hex-digit id", rid)
				}
				wantCrid := tc.want
				if trusted {
					wantCrid = ""
				}
				if crid != wantCrid {
					t.Errorf("ClientRequestID = %q, want %q", crid, wantCrid)
				}
				if got := stream.header.Get("x-request-id"); !cmp.Equal(got, []string{rid}) {
					t.Errorf("response header x-request-id = %q, want [%q]", got, rid)
				}
				if got := stream.header.Get("x-client-request-id"); (crid == "" && len(got) != 0) || (crid != "" && !cmp.Equal(got, []string{crid})) {
					t.Errorf("response header x-client-request-id = %q, want the caller's %q", got, crid)
				}
				out, _ := metadata.FromOutgoingContext(callinfo.OutgoingRequestID(ctx))
				if got := out.Get("x-request-id"); !cmp.Equal(got, []string{rid}) {
					t.Errorf("OutgoingRequestID: x-request-id = %q, want [%q]", got, rid)
				}
				if id, ok := identity.FromContext(ctx); !ok || id.String() != "spiffe://"+td+"/"+string(kind)+"/app" {
					t.Errorf("identity.FromContext = %v, %v; want spiffe://%s/%s/app", id, ok, td, kind)
				}
				if recs := ts.records(t); len(recs) != 0 {
					t.Errorf("an authenticated call was audited by the interceptor: %+v", recs)
				}
			})
		}
	}
}

// TestClientRequestIDCarried: an edge passes its caller's id on, and the
// central tier, trusting the edge, keeps both.
func TestClientRequestIDCarried(t *testing.T) {
	ts := newTestServer(t, nil)
	at, _ := authenticated(t, ts, metadata.Pairs("x-request-id", "mine"))
	out, _ := metadata.FromOutgoingContext(callinfo.OutgoingRequestID(at))
	ctx, _ := authenticatedAs(t, ts, identity.Edge, metadata.MD(out))
	if got, want := callinfo.RequestID(ctx), callinfo.RequestID(at); got != want {
		t.Errorf("RequestID at the next node = %q, want the edge's %q", got, want)
	}
	if got := callinfo.ClientRequestID(ctx); got != "mine" {
		t.Errorf("ClientRequestID at the next node = %q, want mine", got)
	}
	ctx, c, err := ts.s.Begin(ctx, policy.Encrypt, "payments")
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.s.End(ctx, c, nil); err != nil {
		t.Fatal(err)
	}
	if recs := ts.records(t); len(recs) != 1 || recs[0].RequestID != callinfo.RequestID(at) || recs[0].ClientRequestID != "mine" {
		t.Errorf("audit = %+v, want request id %q, client request id mine", recs, callinfo.RequestID(at))
	}
}

func TestFreshRequestIDsDiffer(t *testing.T) {
	ts := newTestServer(t, nil)
	seen := map[string]bool{}
	for range 20 {
		ctx, _ := authenticated(t, ts, nil)
		rid := callinfo.RequestID(ctx)
		if seen[rid] {
			t.Fatalf("request id %q issued twice", rid)
		}
		seen[rid] = true
	}
}

func TestOutgoingRequestIDKeepsMetadata(t *testing.T) {
	ts := newTestServer(t, nil)
	ctx, _ := authenticated(t, ts, metadata.Pairs("x-request-id", "req-7"))
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "keep-me")
	md, _ := metadata.FromOutgoingContext(callinfo.OutgoingRequestID(ctx))
	if got := md.Get("authorization"); !cmp.Equal(got, []string{"keep-me"}) {
		t.Errorf("outgoing authorization = %q, want [keep-me]", got)
	}
	if got := md.Get("x-request-id"); !cmp.Equal(got, []string{callinfo.RequestID(ctx)}) {
		t.Errorf("outgoing x-request-id = %q, want [%s]", got, callinfo.RequestID(ctx))
	}
	if got := md.Get("x-client-request-id"); !cmp.Equal(got, []string{"req-7"}) {
		t.Errorf("outgoing x-client-request-id = %q, want [req-7]", got)
	}
	// The incoming request id is not forwarded by itself: only
	// OutgoingRequestID puts it on outgoing metadata.
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get("x-request-id")) != 0 {
		t.Errorf("x-request-id on outgoing metadata before OutgoingRequestID: %v", md.Get("x-request-id"))
	}
}

// --- authentication ----------------------------------------------------

func TestUnaryInterceptorRefuses(t *testing.T) {
	other := identity.Identity{TrustDomain: "other.test", Kind: identity.Client, Name: "app"}
	for _, tc := range []struct {
		name   string
		peer   *peer.Peer // nil: no peer in the context
		rid    string     // the caller's x-request-id; "" for none
		detail string
	}{
		{"no peer", nil, "req-1", "no TLS peer"},
		{"no peer, no request id", nil, "", "no TLS peer"},
		{"peer without auth info", &peer.Peer{}, "req-2", "no TLS peer"},
		{"TLS without a verified client certificate", &peer.Peer{AuthInfo: credentials.TLSInfo{}}, "req-3", "no verified client certificate"},
		{"another trust domain", peerFor(t, other), "req-4", `trust domain "other.test" is not "` + td + `"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, nil)
			stream := &transportStream{method: encryptMethod}
			ctx := grpc.NewContextWithServerTransportStream(t.Context(), stream)
			if tc.peer != nil {
				ctx = peer.NewContext(ctx, tc.peer)
			}
			if tc.rid != "" {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("x-request-id", tc.rid))
			}
			called := false
			resp, err := ts.s.UnaryInterceptor()(ctx, "req", &grpc.UnaryServerInfo{FullMethod: encryptMethod}, func(context.Context, any) (any, error) {
				called = true
				return "resp", nil
			})
			if called {
				t.Error("the handler ran for an unauthenticated call")
			}
			if status.Code(err) != codes.Unauthenticated || resp != nil {
				t.Errorf("UnaryInterceptor = %v, %v; want nil, Unauthenticated", resp, err)
			}
			if !strings.Contains(status.Convert(err).Message(), tc.detail) {
				t.Errorf("error %q does not say %q", status.Convert(err).Message(), tc.detail)
			}
			recs := ts.records(t)
			if len(recs) != 1 {
				t.Fatalf("audit holds %d records, want 1: %+v", len(recs), recs)
			}
			rid := recs[0].RequestID
			if !freshRequestID.MatchString(rid) {
				t.Errorf("audit request id = %q, want a fresh one", rid)
			}
			if got := stream.header.Get("x-request-id"); !cmp.Equal(got, []string{rid}) {
				t.Errorf("response header x-request-id = %q, want the audited [%q]", got, rid)
			}
			want := audit.Record{RequestID: rid, ClientRequestID: tc.rid, Node: "central-1", Operation: "Encrypt", Decision: "deny",
				Outcome: "Unauthenticated", Detail: recs[0].Detail}
			if diff := cmp.Diff(want, recs[0], recordOpts); diff != "" {
				t.Errorf("audit record mismatch (-want +got):\n%s", diff)
			}
			if !strings.Contains(recs[0].Detail, tc.detail) {
				t.Errorf("audit detail %q does not say %q", recs[0].Detail, tc.detail)
			}
		})
	}
}

// TestUnaryInterceptorAuditDown: a refusal that cannot be audited is still
// a refusal.
func TestUnaryInterceptorAuditDown(t *testing.T) {
	ts := newTestServer(t, nil)
	if err := ts.log.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := ts.s.UnaryInterceptor()(t.Context(), "req", &grpc.UnaryServerInfo{FullMethod: encryptMethod}, func(context.Context, any) (any, error) {
		t.Error("the handler ran for an unauthenticated call")
		return nil, nil
	})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("UnaryInterceptor with the audit log closed = %v, want Unauthenticated", err)
	}
}

type serverStream struct {
	grpc.ServerStream // nil: only Context is used
	ctx               context.Context
}

func (s serverStream) Context() context.Context { return s.ctx }

func TestStreamInterceptor(t *testing.T) {
	const method = "/keybroker.v1.EdgeSync/Watch"
	edgeID := identity.Identity{TrustDomain: td, Kind: identity.Edge, Name: "edge-eu-1"}

	t.Run("authenticated", func(t *testing.T) {
		ts := newTestServer(t, nil)
		ctx := metadata.NewIncomingContext(peer.NewContext(t.Context(), peerFor(t, edgeID)), metadata.Pairs("x-request-id", "watch-1"))
		var seen context.Context
		err := ts.s.StreamInterceptor()(nil, serverStream{ctx: ctx}, &grpc.StreamServerInfo{FullMethod: method}, func(_ any, ss grpc.ServerStream) error {
			seen = ss.Context()
			return nil
		})
		if err != nil {
			t.Fatalf("StreamInterceptor = %v", err)
		}
		if seen == nil {
			t.Fatal("the handler was not called")
		}
		if id, ok := identity.FromContext(seen); !ok || id != edgeID {
			t.Errorf("the stream's identity = %v, %v; want %v", id, ok, edgeID)
		}
		if got := callinfo.RequestID(seen); got != "watch-1" {
			t.Errorf("the stream's request id = %q, want watch-1", got)
		}
	})

	t.Run("refused", func(t *testing.T) {
		ts := newTestServer(t, nil)
		err := ts.s.StreamInterceptor()(nil, serverStream{ctx: t.Context()}, &grpc.StreamServerInfo{FullMethod: method}, func(any, grpc.ServerStream) error {
			t.Error("the handler ran for an unauthenticated stream")
			return nil
		})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("StreamInterceptor = %v, want Unauthenticated", err)
		}
		recs := ts.records(t)
		if len(recs) != 1 || recs[0].Operation != "Watch" || recs[0].Decision != "deny" || recs[0].Outcome != "Unauthenticated" {
			t.Errorf("audit = %+v, want one Watch deny Unauthenticated record", recs)
		}
	})
}

// --- calls: authorization and audit ------------------------------------

// callerContext is the context a handler sees for a call by client name
// with request id rid: authenticated by the interceptor of a throwaway
// server of the trust domain, so the test's own audit log holds only what
// the test does.
func callerContext(t *testing.T, name, rid string) context.Context {
	t.Helper()
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("x-request-id", rid))
	ctx = peer.NewContext(ctx, peerFor(t, identity.Identity{TrustDomain: td, Kind: identity.Client, Name: name}))
	var out context.Context
	_, err := newTestServer(t, nil).s.UnaryInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: encryptMethod}, func(ctx context.Context, _ any) (any, error) {
		out = ctx
		return nil, nil
	})
	if err != nil {
		t.Fatalf("authenticating %s: %v", name, err)
	}
	return out
}

func TestBeginWithoutIdentity(t *testing.T) {
	ts := newTestServer(t, nil)
	_, c, err := ts.s.Begin(t.Context(), policy.Encrypt, "payments")
	if status.Code(err) != codes.Unauthenticated || c != nil {
		t.Errorf("Begin(no identity) = %v, %v; want nil, Unauthenticated", c, err)
	}
}

func TestCallAuthorizeKey(t *testing.T) {
	for i, tc := range []struct {
		name, caller, key string
		wantCode          codes.Code
		wantRec           audit.Record
	}{
		{"allowed", "app", "payments", codes.OK,
			audit.Record{Decision: "allow", PolicyID: "app-payments", Backend: "softkms", Outcome: "ok"}},
		{"denied by default", "app", "secret", codes.PermissionDenied,
			audit.Record{Decision: "deny", PolicyID: "default-deny", Backend: "softkms", Outcome: "PermissionDenied"}},
		{"unknown key, denied like an existing one", "app", "ghost", codes.PermissionDenied,
			audit.Record{Decision: "deny", PolicyID: "default-deny", Outcome: "PermissionDenied"}},
		{"unknown key, allowed: not found", "ops", "ghost", codes.NotFound,
			audit.Record{Decision: "allow", PolicyID: "ops-everything", Outcome: "NotFound"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, nil)
			rid := fmt.Sprintf("rid-%d", i)
			ctx := callerContext(t, tc.caller, rid)
			ctx, c, err := ts.s.Begin(ctx, policy.Encrypt, tc.key)
			if err != nil {
				t.Fatalf("Begin = %v", err)
			}
			k, err := c.AuthorizeKey(ctx, policy.Encrypt)
			if ts.s.Status(err).Code() != tc.wantCode {
				t.Errorf("AuthorizeKey = %v, want code %v", err, tc.wantCode)
			}
			if (k != nil) != (tc.wantCode == codes.OK) || (k != nil && k.ID != tc.key) {
				t.Errorf("AuthorizeKey returned key %v, want %q only when allowed", k, tc.key)
			}
			endErr := ts.s.End(ctx, c, err)
			if status.Code(endErr) != tc.wantCode {
				t.Errorf("End = %v, want code %v", endErr, tc.wantCode)
			}
			recs := ts.records(t)
			if len(recs) != 1 {
				t.Fatalf("audit holds %d records, want 1: %+v", len(recs), recs)
			}
			want := tc.wantRec
			want.RequestID, want.ClientRequestID, want.Principal, want.Node, want.Operation, want.Key = callinfo.RequestID(ctx), rid, "spiffe://"+td+"/client/"+tc.caller, "central-1", "Encrypt", tc.key
			if endErr != nil {
				want.Detail = status.Convert(endErr).Message()
			}
			if diff := cmp.Diff(want, recs[0], recordOpts); diff != "" {
				t.Errorf("audit record mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExistenceNotLeaked: a caller the policy keeps away from a key hears
// the same whether or not it exists.
func TestExistenceNotLeaked(t *testing.T) {
	ts := newTestServer(t, nil)
	msg := func(key string) string {
		ctx, c, err := ts.s.Begin(callerContext(t, "app", "rid"), policy.Encrypt, key)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.AuthorizeKey(ctx, policy.Encrypt)
		return status.Code(ts.s.End(ctx, c, err)).String() + ": " + strings.ReplaceAll(ts.s.Status(err).Message(), key, "KEY")
	}
	if existing, missing := msg("secret"), msg("secrets"); existing != missing {
		t.Errorf("denied existing key: %q; denied missing key: %q; want the same", existing, missing)
	}
}

func TestCallAuthorizeService(t *testing.T) {
	for _, tc := range []struct {
		caller string
		want   codes.Code
	}{{"app", codes.OK}, {"ops", codes.PermissionDenied}} {
		ts := newTestServer(t, nil)
		_, c, err := ts.s.Begin(callerContext(t, tc.caller, "rid-svc"), policy.GenerateRandom, "")
		if err != nil {
			t.Fatal(err)
		}
		err = c.AuthorizeService(policy.GenerateRandom)
		if got := ts.s.Status(err).Code(); got != tc.want {
			t.Errorf("AuthorizeService(%s) = %v, want %v", tc.caller, err, tc.want)
		}
		if err != nil && !strings.Contains(ts.s.Status(err).Message(), "on this service") {
			t.Errorf("AuthorizeService(%s) message %q does not name the service", tc.caller, ts.s.Status(err).Message())
		}
	}
}

func TestCallForwarded(t *testing.T) {
	ts := newTestServer(t, nil)
	ctx := callinfo.WithForwarder(callerContext(t, "app", "rid-fwd"), "edge-eu-1")
	if got := callinfo.Forwarder(ctx); got != "edge-eu-1" {
		t.Errorf("Forwarder = %q, want edge-eu-1", got)
	}
	ctx, c, err := ts.s.Begin(ctx, policy.Encrypt, "payments")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AuthorizeKey(ctx, policy.Encrypt); err != nil {
		t.Fatalf("AuthorizeKey = %v", err)
	}
	if err := ts.s.End(ctx, c, nil); err != nil {
		t.Fatalf("End = %v", err)
	}
	recs := ts.records(t)
	if len(recs) != 1 || recs[0].Via != "edge-eu-1" || recs[0].ClientRequestID != "rid-fwd" {
		t.Errorf("audit = %+v, want one record via edge-eu-1 with client request id rid-fwd", recs)
	}
	if got := callinfo.Forwarder(t.Context()); got != "" {
		t.Errorf("Forwarder(plain context) = %q, want empty", got)
	}
}

// TestCallEndAuditDown: no unaudited operations; the caller hears
// Unavailable whatever the call did.
func TestCallEndAuditDown(t *testing.T) {
	for _, callErr := range []error{nil, managed.Errorf(managed.ErrNotFound, "gone")} {
		ts := newTestServer(t, nil)
		ctx, c, err := ts.s.Begin(callerContext(t, "app", "rid-down"), policy.Encrypt, "payments")
		if err != nil {
			t.Fatal(err)
		}
		if err := ts.log.Close(); err != nil {
			t.Fatal(err)
		}
		err = ts.s.End(ctx, c, callErr)
		if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != rpc.AuditDownMsg || !errors.Is(err, rpc.ErrAuditDown) {
			t.Errorf("End(%v) with the audit log closed = %v, want Unavailable %q that is rpc.ErrAuditDown", callErr, err, rpc.AuditDownMsg)
		}
	}
}

// TestCallEndInternal: the caller does not see an internal error's text;
// neither does the audit line.
func TestCallEndInternal(t *testing.T) {
	ts := newTestServer(t, nil)
	ctx, c, err := ts.s.Begin(callerContext(t, "app", "rid-int"), policy.Encrypt, "payments")
	if err != nil {
		t.Fatal(err)
	}
	err = ts.s.End(ctx, c, errors.New("pkcs11: CKR_DEVICE_ERROR on slot 3"))
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "CKR_") {
		t.Errorf("End(internal) = %v, want Internal without the cause", err)
	}
	recs := ts.records(t)
	if len(recs) != 1 || recs[0].Outcome != "Internal" || recs[0].Detail != "internal error" {
		t.Errorf("audit = %+v, want one Internal record with detail %q", recs, "internal error")
	}
}

// --- status mapping ------------------------------------------------------

var errHSM = errors.New("hsm: token removed")

func TestStatus(t *testing.T) {
	classify := func(err error) (*status.Status, bool) {
		if errors.Is(err, errHSM) {
			return status.New(codes.Unavailable, "root of trust unavailable"), true
		}
		return nil, false
	}
	for _, tc := range []struct {
		name     string
		err      error
		code     codes.Code
		msg      string // "" means the error's own text
		classify bool   // use the classifier
	}{
		{"nil", nil, codes.OK, "", false},
		{"status passes through", status.Error(codes.ResourceExhausted, "slow down"), codes.ResourceExhausted, "slow down", false},
		{"unknown status is classified", status.Error(codes.Unknown, "mystery"), codes.Internal, "internal error", false},
		{"canceled", fmt.Errorf("encrypt: %w", context.Canceled), codes.Canceled, "", false},
		{"deadline", fmt.Errorf("encrypt: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "", false},
		{"invalid argument", managed.Errorf(managed.ErrInvalidArgument, "bad"), codes.InvalidArgument, "bad", false},
		{"not found", managed.Errorf(managed.ErrNotFound, "gone"), codes.NotFound, "gone", false},
		{"already exists", managed.Errorf(managed.ErrAlreadyExists, "dup"), codes.AlreadyExists, "dup", false},
		{"failed precondition", managed.Errorf(managed.ErrFailedPrecondition, "disabled"), codes.FailedPrecondition, "disabled", false},
		{"conflict", managed.Errorf(managed.ErrConflict, "rev 3"), codes.Aborted, "", false},
		{"permission denied", managed.Errorf(managed.ErrPermissionDenied, "no"), codes.PermissionDenied, "no", false},
		{"unavailable", managed.Errorf(managed.ErrUnavailable, "down"), codes.Unavailable, "down", false},
		{"wrapped twice", fmt.Errorf("op: %w", managed.Errorf(managed.ErrNotFound, "gone")), codes.NotFound, "", false},
		{"unknown error", errors.New("boom"), codes.Internal, "internal error", false},
		{"unknown error, no classifier match", errors.New("boom"), codes.Internal, "internal error", true},
		{"classified", fmt.Errorf("sign: %w", errHSM), codes.Unavailable, "root of trust unavailable", true},
		{"managed errors win over the classifier", errors.Join(managed.ErrNotFound, errHSM), codes.NotFound, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c func(error) (*status.Status, bool)
			if tc.classify {
				c = classify
			}
			st := newTestServer(t, c).s.Status(tc.err)
			want := tc.msg
			if want == "" && tc.err != nil {
				want = tc.err.Error()
			}
			if st.Code() != tc.code || st.Message() != want {
				t.Errorf("Status(%v) = %v %q, want %v %q", tc.err, st.Code(), st.Message(), tc.code, want)
			}
		})
	}
}

// TestBatchStopsWhenAuditDown: a batch whose item cannot be audited stops
// there with the audit-down error (rpc.ErrAuditDown, found by type, not
// by comparing status messages), rather than answering the item's failure
// in a result and going on unaudited.
func TestBatchStopsWhenAuditDown(t *testing.T) {
	ts := newTestServer(t, nil)
	ctx := callerContext(t, "app", "rid-batch-down")
	if err := ts.log.Close(); err != nil {
		t.Fatal(err)
	}
	// Malformed ciphertexts: each item fails before the node is asked, and
	// its refusal is what cannot be audited.
	resp, err := ts.s.KeyBroker().BatchDecrypt(ctx, &kbv1.BatchDecryptRequest{Items: []*kbv1.DecryptRequest{
		{Ciphertext: []byte{1}}, {Ciphertext: []byte{2}}}})
	if !errors.Is(err, rpc.ErrAuditDown) || status.Code(err) != codes.Unavailable || resp != nil {
		t.Fatalf("BatchDecrypt with the audit log closed = %v, %v; want no results and Unavailable rpc.ErrAuditDown", resp, err)
	}
}
