package server

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"math/big"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/forwardproof"
	"github.com/keybroker/keybroker/sealed"
)

// testClock is the clock forward proofs are checked against.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// signer is a principal's certificate chain and key, able to sign forward
// proofs as the SDK does.
type signer struct {
	id    identity.Identity
	chain [][]byte
	key   crypto.Signer
}

func (e *testEnv) signer(t *testing.T, ca *identity.CA, kind identity.Kind, name string) signer {
	t.Helper()
	id := identity.Identity{TrustDomain: ca.TrustDomain, Kind: kind, Name: name}
	files, err := ca.IssueFiles(id, nil, time.Hour, e.dir, "signer-"+ca.TrustDomain+"-"+string(kind)+"-"+name, e.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	return signer{id: id, chain: pair.Certificate, key: pair.PrivateKey.(crypto.Signer)}
}

// forward is a ForwardRequest for method and req made by s to audience at
// time at.
func (s signer) forward(t *testing.T, method string, req proto.Message, audience string, at time.Time) *kbv1.ForwardRequest {
	t.Helper()
	raw, err := forwardproof.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := forwardproof.Sign(s.key, forwardproof.Claims{Method: method, Request: raw, Audience: audience, IssuedAt: at}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &kbv1.ForwardRequest{Method: method, Request: raw, Principal: s.id.String(), ClientChain: s.chain, Proof: proof}
}

// TestForwardBoundToCaller: an edge can only relay, once and unchanged,
// a call a client signed for that edge; everything else is refused,
// audited with the edge as the actor, and never performed as the principal
// the edge names.
func TestForwardBoundToCaller(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "billing-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: map[string]string{"app": "billing"}},
		{KeyId: "secret-key", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: map[string]string{"app": "payroll"}},
	} {
		if _, err := admin.CreateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	secretCT, err := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops")).Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "secret-key", Plaintext: []byte("payroll")})
	if err != nil {
		t.Fatal(err)
	}
	register := func(name string) kbv1.EdgeSyncClient {
		e.enroll(t, name, "eu", nil)
		sk, _ := sealed.GenerateKey()
		c := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, name))
		if _, err := c.Register(ctx, &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: name + ".example:7443"}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	edge := register("edge-eu-1")
	barred := register("edge-barred")
	edgeOps := register("edge-ops")
	const edgeID = "spiffe://kb.test/edge/edge-eu-1"

	billing := e.signer(t, e.ca, identity.Client, "billing")
	other := e.signer(t, e.ca, identity.Client, "other")
	ops := e.signer(t, e.ca, identity.Admin, "ops")
	foreignCA, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign := e.signer(t, foreignCA, identity.Admin, "ops")

	const encrypt = "/keybroker.v1.KeyBroker/Encrypt"
	const decrypt = "/keybroker.v1.KeyBroker/Decrypt"
	enc := &kbv1.EncryptRequest{KeyId: "billing-key", Plaintext: []byte("invoice 1")}
	steal := &kbv1.DecryptRequest{Ciphertext: secretCT.Ciphertext}
	now := e.clock.Now()

	// A genuine forward runs as the client that signed it.
	genuine := billing.forward(t, encrypt, enc, edgeID, now)
	resp, err := edge.Forward(ctx, genuine)
	if err != nil {
		t.Fatalf("a genuine forward: %v", err)
	}
	var out kbv1.EncryptResponse
	if err := proto.Unmarshal(resp.Response, &out); err != nil || out.KeyId != "billing-key" {
		t.Fatalf("forwarded Encrypt = %v, %v", &out, err)
	}

	mutate := func(r *kbv1.ForwardRequest, f func(*kbv1.ForwardRequest)) *kbv1.ForwardRequest {
		r = proto.Clone(r).(*kbv1.ForwardRequest)
		f(r)
		return r
	}
	createAsOps := &kbv1.CreateKeyRequest{KeyId: "planted", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP}
	raw, _ := proto.Marshal(steal)
	rawCreate, _ := proto.Marshal(createAsOps)
	for _, tc := range []struct {
		name   string
		edge   kbv1.EdgeSyncClient
		req    *kbv1.ForwardRequest
		reason string
	}{
		{"a forged admin principal, no proof", edge, &kbv1.ForwardRequest{Method: decrypt, Request: raw, Principal: ops.id.String()}, "bad chain"},
		{"a forged admin CreateKey, no proof", edge, &kbv1.ForwardRequest{Method: "/keybroker.v1.KeyAdmin/CreateKey", Request: rawCreate, Principal: ops.id.String()}, "bad chain"},
		{"the admin's chain but no proof", edge, &kbv1.ForwardRequest{Method: decrypt, Request: raw, Principal: ops.id.String(), ClientChain: ops.chain}, "no proof"},
		{"another client's proof under the admin's chain", edge, mutate(other.forward(t, decrypt, steal, edgeID, now), func(r *kbv1.ForwardRequest) {
			r.ClientChain, r.Principal = ops.chain, ops.id.String()
		}), "bad signature"},
		{"a proof for another edge", edge, ops.forward(t, decrypt, steal, "spiffe://kb.test/edge/edge-us-1", now), "wrong audience"},
		{"a stale proof", edge, ops.forward(t, decrypt, steal, edgeID, now.Add(-3*time.Minute)), "stale"},
		{"a proof from the future", edge, ops.forward(t, decrypt, steal, edgeID, now.Add(3*time.Minute)), "stale"},
		{"a different request body", edge, mutate(billing.forward(t, encrypt, enc, edgeID, now), func(r *kbv1.ForwardRequest) {
			r.Request, _ = proto.Marshal(&kbv1.EncryptRequest{KeyId: "secret-key", Plaintext: []byte("invoice 1")})
		}), "digest mismatch"},
		{"a different method", edge, mutate(billing.forward(t, encrypt, enc, edgeID, now), func(r *kbv1.ForwardRequest) {
			r.Method = "/keybroker.v1.KeyBroker/GenerateDataKey"
		}), "method mismatch"},
		{"a chain from a foreign CA", edge, foreign.forward(t, decrypt, steal, edgeID, now), "bad chain"},
		{"a chain of too many certificates", edge, mutate(ops.forward(t, decrypt, steal, edgeID, now), func(r *kbv1.ForwardRequest) {
			for range maxChainCerts {
				r.ClientChain = append(r.ClientChain, ops.chain[0])
			}
		}), "bad chain"},
		{"a replayed proof", edge, genuine, "replay"},
		{"Forward denied to the edge by the policy", barred, billing.forward(t, encrypt, enc, "spiffe://kb.test/edge/edge-barred", now), "policy"},
		{"an admin call through an edge the policy lets relay only client calls", edge, ops.forward(t, "/keybroker.v1.KeyAdmin/CreateKey", createAsOps, edgeID, now), "policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(auditLines(t, e.auditPath))
			_, err := tc.edge.Forward(ctx, tc.req)
			code(t, tc.name, err, codes.PermissionDenied)
			if tc.reason != "policy" && !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("refusal %q does not say %q", err, tc.reason)
			}
			lines := auditLines(t, e.auditPath)[before:]
			if len(lines) != 1 {
				t.Fatalf("the refusal left %d audit lines, want 1: %+v", len(lines), lines)
			}
			l := lines[0]
			if l.Operation != "Forward" || l.Decision != "deny" || !strings.Contains(l.Principal, "/edge/") || l.Outcome != "PermissionDenied" {
				t.Errorf("audit line %+v, want a denied Forward by the edge", l)
			}
			if tc.reason != "policy" && !strings.Contains(l.Detail, tc.reason) {
				t.Errorf("audit detail %q does not say %q", l.Detail, tc.reason)
			}
		})
	}
	// Nothing ran as the forged principals: no line names them as actor
	// of a key operation, and the planted key does not exist.
	for _, l := range auditLines(t, e.auditPath) {
		if l.Via != "" && l.Principal != billing.id.String() && l.Principal != ops.id.String() {
			t.Errorf("a forwarded call ran as %s: %+v", l.Principal, l)
		}
		if l.Via != "" && (l.Key == "secret-key" || l.Key == "planted") {
			t.Errorf("a refused forward reached the key: %+v", l)
		}
	}
	if _, err := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops")).DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "planted"}); err == nil {
		t.Error("the forged CreateKey created the key")
	}

	// An edge the policy lets relay admin calls does so, as the admin.
	md, err := edgeOps.Forward(ctx, ops.forward(t, "/keybroker.v1.KeyAdmin/CreateKey", createAsOps, "spiffe://kb.test/edge/edge-ops", now))
	if err != nil {
		t.Fatalf("an admin call through edge-ops: %v", err)
	}
	var meta kbv1.KeyMetadata
	if err := proto.Unmarshal(md.Response, &meta); err != nil || meta.KeyId != "planted" {
		t.Errorf("forwarded CreateKey = %v, %v", &meta, err)
	}
	var asOps bool
	for _, l := range auditLines(t, e.auditPath) {
		if l.Operation == "CreateKey" && l.Key == "planted" && l.Principal == ops.id.String() && l.Via == "edge-ops" {
			asOps = true
		}
	}
	if !asOps {
		t.Error("the relayed CreateKey is not audited as the admin via edge-ops")
	}

	// Client keys the proof's client may not use stay refused: the call
	// runs as billing, whom the policy refuses payroll's key.
	_, err = edge.Forward(ctx, billing.forward(t, decrypt, steal, edgeID, now))
	code(t, "billing decrypts payroll's ciphertext through an edge", err, codes.PermissionDenied)

	// A chain verified (and cached) before stops proving anything when a
	// certificate in it expires.
	if _, err := edge.Forward(ctx, billing.forward(t, encrypt, enc, edgeID, e.clock.Now())); err != nil {
		t.Fatalf("a second genuine forward: %v", err)
	}
	e.clock.Add(2 * time.Hour) // the test certificates last an hour
	_, err = edge.Forward(ctx, billing.forward(t, encrypt, enc, edgeID, e.clock.Now()))
	code(t, "a forward with an expired client certificate", err, codes.PermissionDenied)
	if err != nil && !strings.Contains(err.Error(), "bad chain") {
		t.Errorf("expired certificate refusal %q does not say bad chain", err)
	}
}

// TestReplayCacheExpires: a nonce is remembered while its proof is fresh
// and forgotten after, so the cache stays bounded.
func TestReplayCacheExpires(t *testing.T) {
	r := newReplayCache(maxNonces)
	r.prune = 2
	now := time.Unix(1000, 0)
	n1, n2, n3 := [16]byte{1}, [16]byte{2}, [16]byte{3}
	if err := r.add(n1, now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := r.add(n1, now.Add(time.Minute), now); err == nil {
		t.Error("a nonce was accepted twice")
	}
	if err := r.add(n2, now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	later := now.Add(5 * time.Minute)
	if err := r.add(n3, later.Add(time.Minute), later); err != nil {
		t.Fatal(err)
	}
	if len(r.m) != 1 {
		t.Errorf("after expiry the cache holds %d nonces, want 1", len(r.m))
	}
}

// TestReplayCacheRecovers: a cache filled to its cap with live nonces
// refuses new ones with errReplayFull (answered retryably), and accepts
// them again once those nonces go stale — it never stops sweeping.
func TestReplayCacheRecovers(t *testing.T) {
	const max = 4096 // more than twice the smallest sweep threshold, as 1<<20 is
	r := newReplayCache(max)
	clock := &testClock{now: time.Unix(1000, 0)}
	window := 2 * time.Minute
	var n uint64
	nonce := func() [16]byte {
		n++
		var b [16]byte
		binary.BigEndian.PutUint64(b[:], n)
		return b
	}
	for i := range max {
		if err := r.add(nonce(), clock.Now().Add(window), clock.Now()); err != nil {
			t.Fatalf("add %d of %d live nonces: %v", i+1, max, err)
		}
		if i%512 == 0 {
			clock.Add(time.Millisecond)
		}
	}
	if err := r.add(nonce(), clock.Now().Add(window), clock.Now()); !errors.Is(err, errReplayFull) {
		t.Fatalf("add to a full cache = %v, want errReplayFull", err)
	}
	clock.Add(window + 2*time.Second)
	for i := range 3 * max {
		if err := r.add(nonce(), clock.Now().Add(window), clock.Now()); err != nil {
			t.Fatalf("add %d after the window passed: %v (cache holds %d)", i+1, err, len(r.m))
		}
		if i%max == max-1 {
			clock.Add(window + 2*time.Second)
		}
	}
	if len(r.m) > max {
		t.Errorf("the cache holds %d nonces, more than its cap %d", len(r.m), max)
	}
}

// TestForwardReplayCacheFull: a forward refused only because the replay
// cache is full is answered Unavailable, which the client retries, and
// still audited as a denied Forward; once the cache has room the same
// proof is accepted.
func TestForwardReplayCacheFull(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	edge := e.registerEdge(t, "edge-eu-1")
	billing := e.signer(t, e.ca, identity.Client, "billing")
	e.srv.proofs.seen = newReplayCache(1)
	if err := e.srv.proofs.seen.add([16]byte{0xff}, e.clock.Now().Add(time.Minute), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	req := billing.forward(t, "/keybroker.v1.KeyBroker/GenerateRandom", &kbv1.GenerateRandomRequest{Length: 16}, "spiffe://kb.test/edge/edge-eu-1", e.clock.Now())
	before := len(auditLines(t, e.auditPath))
	_, err := edge.Forward(ctx, req)
	code(t, "a forward while the replay cache is full", err, codes.Unavailable)
	lines := auditLines(t, e.auditPath)[before:]
	if len(lines) != 1 || lines[0].Decision != "deny" || lines[0].Operation != "Forward" {
		t.Errorf("audit lines %+v, want one denied Forward", lines)
	}
	e.clock.Add(time.Minute + 2*time.Second)
	if _, err := edge.Forward(ctx, req); err != nil {
		t.Errorf("the same proof once the cache has room: %v", err)
	}
}

// len is how many nonces r holds.
func (r *replayCache) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// registerEdge enrolls and registers edge name (region eu) and returns its
// EdgeSync client.
func (e *testEnv) registerEdge(t *testing.T, name string) kbv1.EdgeSyncClient {
	t.Helper()
	e.enroll(t, name, "eu", nil)
	sk, _ := sealed.GenerateKey()
	c := kbv1.NewEdgeSyncClient(e.conn(t, identity.Edge, name))
	if _, err := c.Register(t.Context(), &kbv1.RegisterEdgeRequest{SealingPublicKey: sk.PublicKey(), Address: name + ".example:7443"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestForwardDecidedOnEveryKey: an edge's right to forward a call that
// names several keys (a batch, ReEncrypt to another key) is decided on
// each of them, so a policy that forbids forwarding on one key holds for
// every call naming it.
func TestForwardDecidedOnEveryKey(t *testing.T) {
	e := startWith(t, testPolicy+`
@id("no-forwarding-p")
forbid (principal is Edge, action == Action::"Forward", resource == Key::"p-key");
`)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	cts := map[string][]byte{}
	for _, id := range []string{"p-key", "q-key"} {
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: map[string]string{"app": "billing"}}); err != nil {
			t.Fatal(err)
		}
		out, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: []byte("data")})
		if err != nil {
			t.Fatal(err)
		}
		cts[id] = out.Ciphertext
	}
	edge := e.registerEdge(t, "edge-eu-1")
	billing := e.signer(t, e.ca, identity.Client, "billing")
	const edgeID = "spiffe://kb.test/edge/edge-eu-1"
	batch := func(ids ...string) *kbv1.BatchDecryptRequest {
		r := &kbv1.BatchDecryptRequest{}
		for _, id := range ids {
			r.Items = append(r.Items, &kbv1.DecryptRequest{Ciphertext: cts[id]})
		}
		return r
	}
	for _, tc := range []struct {
		name   string
		method string
		req    proto.Message
		want   codes.Code
	}{
		{"BatchDecrypt [P, Q]", "/keybroker.v1.KeyBroker/BatchDecrypt", batch("p-key", "q-key"), codes.PermissionDenied},
		{"BatchDecrypt [Q, P]", "/keybroker.v1.KeyBroker/BatchDecrypt", batch("q-key", "p-key"), codes.PermissionDenied},
		{"ReEncrypt P to Q", "/keybroker.v1.KeyBroker/ReEncrypt", &kbv1.ReEncryptRequest{Ciphertext: cts["p-key"], DestinationKeyId: "q-key"}, codes.PermissionDenied},
		{"ReEncrypt Q to P", "/keybroker.v1.KeyBroker/ReEncrypt", &kbv1.ReEncryptRequest{Ciphertext: cts["q-key"], DestinationKeyId: "p-key"}, codes.PermissionDenied},
		{"BatchDecrypt [Q]", "/keybroker.v1.KeyBroker/BatchDecrypt", batch("q-key", "q-key"), codes.OK},
		{"GenerateRandom (the service)", "/keybroker.v1.KeyBroker/GenerateRandom", &kbv1.GenerateRandomRequest{Length: 16}, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, spentBefore := len(auditLines(t, e.auditPath)), e.srv.proofs.seen.len()
			_, err := edge.Forward(ctx, billing.forward(t, tc.method, tc.req, edgeID, e.clock.Now()))
			code(t, tc.name, err, tc.want)
			if tc.want == codes.OK {
				return
			}
			if spent := e.srv.proofs.seen.len(); spent != spentBefore {
				t.Errorf("a forward the policy refused spent its nonce: the replay cache went from %d to %d", spentBefore, spent)
			}
			lines := auditLines(t, e.auditPath)[before:]
			if len(lines) != 1 || lines[0].Operation != "Forward" || lines[0].Decision != "deny" || lines[0].Key != "p-key" {
				t.Errorf("audit lines %+v, want one Forward denied on p-key", lines)
			}
		})
	}
}

// TestForwardAuditBounded: what an edge sends that central does not
// know — an unknown method, the principal it names — does not reach the
// audit log or the error verbatim, so an edge cannot bloat either.
func TestForwardAuditBounded(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	edge := e.registerEdge(t, "edge-eu-1")
	billing := e.signer(t, e.ca, identity.Client, "billing")
	huge := strings.Repeat("x", 1<<20)
	raw, _ := proto.Marshal(&kbv1.GenerateRandomRequest{Length: 16})
	proofFor := billing.forward(t, "/keybroker.v1.KeyBroker/GenerateRandom", &kbv1.GenerateRandomRequest{Length: 16}, "spiffe://kb.test/edge/edge-eu-1", e.clock.Now())
	for _, tc := range []struct {
		name string
		req  *kbv1.ForwardRequest
		want codes.Code
	}{
		{"a 1 MiB method", &kbv1.ForwardRequest{Method: "/keybroker.v1.KeyBroker/" + huge, Request: raw}, codes.Unimplemented},
		{"a 1 MiB principal, no proof", &kbv1.ForwardRequest{Method: "/keybroker.v1.KeyBroker/GenerateRandom", Request: raw, Principal: huge}, codes.PermissionDenied},
		{"a client chain whose certificate names 1 MiB", &kbv1.ForwardRequest{Method: proofFor.Method, Request: proofFor.Request,
			ClientChain: [][]byte{hugeCert(t, huge)}, Proof: proofFor.Proof}, codes.PermissionDenied},
		{"a 1 MiB principal on a wrong proof", &kbv1.ForwardRequest{Method: proofFor.Method, Request: []byte("other"), Principal: huge,
			ClientChain: proofFor.ClientChain, Proof: proofFor.Proof}, codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := os.ReadFile(e.auditPath)
			_, err := edge.Forward(ctx, tc.req)
			code(t, tc.name, err, tc.want)
			if n := len(status.Convert(err).Message()); n > 4<<10 {
				t.Errorf("the refusal's message is %d bytes, want < 4 KiB", n)
			}
			after, _ := os.ReadFile(e.auditPath)
			line := after[len(before):]
			if len(line) == 0 || len(line) > 4<<10 {
				t.Errorf("the refusal's audit line is %d bytes, want 1 to 4 KiB", len(line))
			}
		})
	}
}

// hugeCert is a self-signed client certificate whose subject is cn.
func hugeCert(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, Issuer: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestProofChainCacheFollowsRootsAndRevocation: a chain verified and
// cached is not trusted past a change of the CA bundle that no longer
// vouches for it, nor past its revocation.
func TestProofChainCacheFollowsRootsAndRevocation(t *testing.T) {
	ca, _ := identity.NewCA("kb.test", time.Hour)
	other, _ := identity.NewCA("kb.test", time.Hour)
	id := identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "billing"}
	certPEM, keyPEM, err := ca.Issue(id, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	s := signer{id: id, chain: pair.Certificate, key: pair.PrivateKey.(crypto.Signer)}
	pool := func(c *identity.CA) *x509.CertPool { p := x509.NewCertPool(); p.AddCert(c.Cert); return p }
	var mu sync.Mutex
	roots, revoked := pool(ca), false
	v := &proofVerifier{td: "kb.test", window: time.Minute, now: time.Now, seen: newReplayCache(16),
		roots: func() *x509.CertPool { mu.Lock(); defer mu.Unlock(); return roots },
		revoked: func(chain []*x509.Certificate) (string, bool) {
			mu.Lock()
			defer mu.Unlock()
			if revoked && chain[0].Equal(pair.Leaf) {
				return "on the deny list", true
			}
			return "", false
		}}
	edge := identity.Identity{TrustDomain: "kb.test", Kind: identity.Edge, Name: "e1"}
	call := func() error {
		_, err := v.verify(edge, s.forward(t, "/keybroker.v1.KeyBroker/Encrypt", &kbv1.EncryptRequest{KeyId: "k"}, edge.String(), time.Now()))
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("first forward: %v", err)
	}
	mu.Lock()
	roots = pool(other)
	mu.Unlock()
	if err := call(); err == nil || !strings.Contains(err.Error(), "bad chain") {
		t.Errorf("forward after the bundle dropped its CA = %v, want a bad chain refusal (the cache must not outlive the bundle)", err)
	}
	mu.Lock()
	roots, revoked = pool(ca), true
	mu.Unlock()
	if err := call(); err == nil || !strings.Contains(err.Error(), "revoked: on the deny list") {
		t.Errorf("forward of a revoked client = %v, want a revocation refusal", err)
	}
}
