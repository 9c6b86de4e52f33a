package rpc_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/byid"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
	"github.com/keybroker/keybroker/secret"
)

// fzTD is the fuzz server's trust domain.
const fzTD = "kb.test"

// fzKeys is the registry of the fuzz node: every type, mode and state an
// operation can meet, with material that is a function of key id and
// version so that the corpus's ciphertexts and signatures stay valid.
type fzKeys struct {
	m      map[string]*managed.Key
	sorted []*managed.Key
}

func fzMaterial(id string, v uint32) *secret.Bytes {
	sum := sha256.Sum256(managed.VersionInput("fuzz-material", id, v))
	return secret.Copy(sum[:])
}

func newFzKeys(tb testing.TB) *fzKeys {
	tb.Helper()
	now := time.Unix(1_700_000_000, 0).UTC()
	ks := &fzKeys{m: map[string]*managed.Key{}}
	for _, k := range []*managed.Key{
		{ID: "payments", Type: managed.AES256GCM, Mode: managed.ModeDerive, Primary: 2, MinDecryptionVersion: 1, Labels: map[string]string{"team": "payments"}},
		{ID: "tenants", Type: managed.AES256GCM, Mode: managed.ModeWrap, Derived: true, Primary: 1},
		{ID: "hsm", Type: managed.AES256GCM, Mode: managed.ModeBackend, Primary: 1},
		{ID: "off", Type: managed.AES256GCM, Mode: managed.ModeDerive, State: managed.StateDisabled, Primary: 1},
		{ID: "secret", Type: managed.AES256GCM, Mode: managed.ModeDerive, Primary: 1, Labels: map[string]string{"team": "secret"}},
		{ID: "tags", Type: managed.HMACSHA256, Mode: managed.ModeDerive, Primary: 1},
		{ID: "signer", Type: managed.ECDSAP256, Mode: managed.ModeWrap, Primary: 1},
		{ID: "ed", Type: managed.Ed25519, Mode: managed.ModeDerive, Primary: 1},
	} {
		if k.State == "" {
			k.State = managed.StateEnabled
		}
		for v := uint32(1); v <= k.Primary; v++ {
			ver := managed.Version{Version: v, Created: now, RootKey: "softkms:root"}
			if k.Type.Asymmetric() {
				sk, err := managed.SigningKey(k.Type, fzMaterial(k.ID, v))
				if err != nil {
					tb.Fatal(err)
				}
				if ver.PublicKey, err = x509.MarshalPKIXPublicKey(sk.Public()); err != nil {
					tb.Fatal(err)
				}
			}
			k.Versions = append(k.Versions, ver)
		}
		if err := k.Validate(); err != nil {
			tb.Fatal(err)
		}
		ks.m[k.ID] = k
		ks.sorted = append(ks.sorted, k)
	}
	slices.SortFunc(ks.sorted, func(a, b *managed.Key) int { return strings.Compare(a.ID, b.ID) })
	return ks
}

func (ks *fzKeys) Get(_ context.Context, id string) (*managed.Key, error) {
	if k, ok := ks.m[id]; ok {
		return k, nil
	}
	return nil, managed.Errorf(managed.ErrNotFound, "key %q does not exist", id)
}

func (ks *fzKeys) Material(_ context.Context, k *managed.Key, v uint32) (*secret.Bytes, error) {
	return fzMaterial(k.ID, v), nil
}

// fzNode is a node like the edge's: managed.Ops over a key registry, with
// no backend, so that backend-mode keys are refused as at an edge that
// cannot forward.
type fzNode struct {
	*managed.Ops
	keys *fzKeys
}

func (n fzNode) Get(ctx context.Context, id string) (*managed.Key, error) { return n.keys.Get(ctx, id) }

func (n fzNode) GenerateRandom(_ context.Context, size int) ([]byte, error) {
	if size < 1 || size > 1024 {
		return nil, managed.Errorf(managed.ErrInvalidArgument, "length %d out of 1..1024", size)
	}
	return make([]byte, size), nil
}

func (n fzNode) ListKeys(_ context.Context, selector map[string]string, pageSize int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error) {
	return managed.Page(n.keys.sorted, selector, pageSize, token, visible)
}

func (n fzNode) LookupKey(context.Context, *managed.Key, policy.Action, map[string]string) ([]placement.Candidate, error) {
	return []placement.Candidate{{Node: placement.Node{ID: "fuzz-1", Address: "127.0.0.1:1"}}}, nil
}

func (n fzNode) Served(*managed.Key, policy.Action) string { return "fuzz" }

// fzPolicies let the client "app" do everything to every key but those of
// team "secret".
const fzPolicies = `
@id("app-everything")
permit (principal == Client::"app", action, resource);

@id("no-secrets")
forbid (principal, action, resource is Key)
when { resource.hasTag("team") && resource.getTag("team") == "secret" };
`

type fzPolicySource struct{ s *policy.Set }

func (p fzPolicySource) Current() *policy.Set { return p.s }

// fzServer is an rpc.Server over fzNode whose audit log is started afresh
// now and then, so that a long fuzzing run does not fill the disk.
type fzServer struct {
	dir    string
	node   fzNode
	policy fzPolicySource
	peer   *peer.Peer
	calls  int
	log    *audit.Log
	s      *rpc.Server
}

func newFzServer(f *testing.F) *fzServer {
	f.Helper()
	keys := newFzKeys(f)
	ops, err := managed.New(managed.Config{Material: keys})
	if err != nil {
		f.Fatal(err)
	}
	set, err := policy.Parse(map[string][]byte{"fuzz.cedar": []byte(fzPolicies)})
	if err != nil {
		f.Fatal(err)
	}
	fs := &fzServer{dir: f.TempDir(), node: fzNode{Ops: ops, keys: keys}, policy: fzPolicySource{set}, peer: fzPeer(f)}
	fs.restart(f)
	f.Cleanup(func() { _ = fs.log.Close() })
	return fs
}

func (fs *fzServer) restart(tb testing.TB) {
	tb.Helper()
	path := filepath.Join(fs.dir, "audit.jsonl")
	if fs.log != nil {
		if err := fs.log.Close(); err != nil {
			tb.Fatal(err)
		}
		_ = os.Remove(path)
		_ = os.Remove(path + ".head")
	}
	var err error
	if fs.log, err = audit.Open(path, time.Hour); err != nil {
		tb.Fatal(err)
	}
	fs.s, err = rpc.New(rpc.Config{Performer: fs.node, Policy: fs.policy, Audit: fs.log, NodeID: "fuzz-1", TrustDomain: fzTD})
	if err != nil {
		tb.Fatal(err)
	}
}

// fzPeer is the TLS peer of the client "app", its certificate verified
// against the trust domain's CA, as the interceptor sees a real caller.
func fzPeer(tb testing.TB) *peer.Peer {
	tb.Helper()
	ca, err := identity.NewCA(fzTD, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	certPEM, _, err := ca.Issue(identity.Identity{TrustDomain: fzTD, Kind: identity.Client, Name: "app"}, nil, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	chains, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		tb.Fatal(err)
	}
	return &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: chains}}}
}

// call runs one KeyBroker method as gRPC would: the request decoded from
// its wire form, then the server's interceptor and the method's handler.
// decoded is false when the bytes are not a request of that method (gRPC
// would refuse them before any handler ran).
func (fs *fzServer) call(t *testing.T, method string, req []byte, requestID string) (resp any, decoded bool, err error) {
	if fs.calls++; fs.calls%20_000 == 0 {
		fs.restart(t)
	}
	ctx := t.Context()
	i := slices.IndexFunc(kbv1.KeyBroker_ServiceDesc.Methods, func(m grpc.MethodDesc) bool { return m.MethodName == method })
	if i < 0 {
		return nil, false, nil
	}
	ctx = peer.NewContext(ctx, fs.peer)
	if requestID != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("x-request-id", requestID))
	}
	var decErr error
	dec := func(m any) error {
		decErr = proto.Unmarshal(req, m.(proto.Message))
		return decErr
	}
	resp, err = kbv1.KeyBroker_ServiceDesc.Methods[i].Handler(fs.s.KeyBroker(), ctx, dec, fs.s.UnaryInterceptor())
	if decErr != nil {
		return nil, false, nil
	}
	return resp, true, err
}

// fzBadInput are the codes a request may earn from a healthy node.
var fzBadInput = []codes.Code{codes.OK, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.PermissionDenied}

func checkCode(t *testing.T, what string, err error) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: error %v (%T) is not a gRPC status", what, err, err)
	}
	if !slices.Contains(fzBadInput, st.Code()) {
		t.Fatalf("%s: %s %q; a request may earn only %v", what, st.Code(), st.Message(), fzBadInput)
	}
}

func checkItem(t *testing.T, what string, e *kbv1.ItemError, hasResponse bool) {
	t.Helper()
	if (e == nil) != hasResponse {
		t.Fatalf("%s: a batch result must hold a response or an error, not both or neither (error %v)", what, e)
	}
	if e != nil {
		checkCode(t, what, status.Error(codes.Code(e.GetCode()), e.GetMessage()))
	}
}

type fzSeed struct {
	method string
	req    proto.Message
}

// fzSeeds are a valid request for every method, and some that are not.
func fzSeeds(tb testing.TB) []fzSeed {
	tb.Helper()
	keys := newFzKeys(tb)
	mops, err := managed.New(managed.Config{Material: keys})
	if err != nil {
		tb.Fatal(err)
	}
	ops := byid.Ops{P: fzNode{Ops: mops, keys: keys}}
	ctx := context.Background()
	ectx := map[string]string{"tenant": "42"}
	ct, _, err := ops.Encrypt(ctx, "payments", []byte("hello"), ectx)
	if err != nil {
		tb.Fatal(err)
	}
	dct, _, err := ops.Encrypt(ctx, "tenants", []byte("per tenant"), ectx)
	if err != nil {
		tb.Fatal(err)
	}
	dk, err := ops.GenerateDataKey(ctx, "tenants", ectx, true)
	if err != nil {
		tb.Fatal(err)
	}
	sig, _, err := ops.Sign(ctx, "ed", []byte("message"), false)
	if err != nil {
		tb.Fatal(err)
	}
	mac, _, err := ops.GenerateMac(ctx, "tags", []byte("message"))
	if err != nil {
		tb.Fatal(err)
	}
	digest := sha256.Sum256([]byte("message"))
	return []fzSeed{
		{"Encrypt", &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("hello"), EncryptionContext: ectx}},
		{"Encrypt", &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")}},
		{"Encrypt", &kbv1.EncryptRequest{KeyId: "secret", Plaintext: []byte("x")}},
		{"Encrypt", &kbv1.EncryptRequest{KeyId: "-bad", EncryptionContext: map[string]string{"": "x"}}},
		{"Decrypt", &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: ectx}},
		{"Decrypt", &kbv1.DecryptRequest{Ciphertext: dct, EncryptionContext: ectx, KeyId: "tenants"}},
		{"Decrypt", &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: map[string]string{"tenant": "43"}}},
		{"Decrypt", &kbv1.DecryptRequest{Ciphertext: ct[:len(ct)-1], EncryptionContext: ectx}},
		{"ReEncrypt", &kbv1.ReEncryptRequest{Ciphertext: ct, SourceEncryptionContext: ectx, DestinationKeyId: "tenants", DestinationEncryptionContext: map[string]string{"tenant": "7"}}},
		{"GenerateDataKey", &kbv1.GenerateDataKeyRequest{KeyId: "tenants", EncryptionContext: ectx}},
		{"GenerateDataKeyWithoutPlaintext", &kbv1.GenerateDataKeyRequest{KeyId: "payments"}},
		{"DecryptDataKey", &kbv1.DecryptDataKeyRequest{KeyId: "tenants", KeyVersion: dk.Key.Primary, WrappedDataKey: dk.Wrapped, EncryptionContext: ectx}},
		{"DecryptDataKey", &kbv1.DecryptDataKeyRequest{KeyId: "tenants", KeyVersion: dk.Key.Primary, WrappedDataKey: dk.Wrapped}},
		{"Sign", &kbv1.SignRequest{KeyId: "signer", Input: &kbv1.SignRequest_Digest{Digest: digest[:]}}},
		{"Sign", &kbv1.SignRequest{KeyId: "ed", Input: &kbv1.SignRequest_Message{Message: []byte("message")}}},
		{"Verify", &kbv1.VerifyRequest{KeyId: "ed", Input: &kbv1.VerifyRequest_Message{Message: []byte("message")}, Signature: sig}},
		{"Verify", &kbv1.VerifyRequest{KeyId: "signer", KeyVersion: 1, Input: &kbv1.VerifyRequest_Digest{Digest: digest[:]}, Signature: sig}},
		{"GetPublicKey", &kbv1.GetPublicKeyRequest{KeyId: "signer"}},
		{"GetPublicKey", &kbv1.GetPublicKeyRequest{KeyId: "signer", KeyVersion: 9}},
		{"GenerateMac", &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("message")}},
		{"VerifyMac", &kbv1.VerifyMacRequest{KeyId: "tags", Message: []byte("message"), Mac: mac}},
		{"GenerateRandom", &kbv1.GenerateRandomRequest{Length: 32}},
		{"GenerateRandom", &kbv1.GenerateRandomRequest{Length: 1 << 20}},
		{"DescribeKey", &kbv1.DescribeKeyRequest{KeyId: "payments"}},
		{"ListKeys", &kbv1.ListKeysRequest{LabelSelector: map[string]string{"team": "payments"}, PageSize: 1}},
		{"ListKeys", &kbv1.ListKeysRequest{PageSize: 100_000, PageToken: "payments"}},
		{"LookupKey", &kbv1.LookupKeyRequest{KeyId: "payments", Operation: kbv1.Operation_OPERATION_ENCRYPT, ClientLabels: map[string]string{"region": "eu"}}},
		{"LookupKey", &kbv1.LookupKeyRequest{KeyId: "payments", Operation: kbv1.Operation(99)}},
		{"BatchEncrypt", &kbv1.BatchEncryptRequest{Items: []*kbv1.EncryptRequest{{KeyId: "payments", Plaintext: []byte("a")}, {KeyId: "nope"}}}},
		{"BatchEncrypt", &kbv1.BatchEncryptRequest{}},
		{"BatchDecrypt", &kbv1.BatchDecryptRequest{Items: []*kbv1.DecryptRequest{{Ciphertext: ct, EncryptionContext: ectx}, {Ciphertext: []byte{1}}}}},
		{"BatchGenerateDataKey", &kbv1.BatchGenerateDataKeyRequest{Items: []*kbv1.GenerateDataKeyRequest{{KeyId: "payments"}, {KeyId: "tags"}}, WithoutPlaintext: true}},
	}
}

// FuzzKeyBroker sends fuzzer-built requests, in their wire form, to every
// KeyBroker method of an in-process node, through the same interceptor and
// handlers a real caller meets, over real managed keys of every type, mode
// and state. An input is a method name, the request's bytes and an
// x-request-id; bytes that are not a request of the method are skipped, as
// gRPC refuses them before any handler runs. It checks that no request panics; that every refusal is a
// gRPC status the caller can act on — InvalidArgument, NotFound,
// FailedPrecondition or PermissionDenied, never Unknown, Internal or
// Unavailable — batch items included; and that what succeeds is right:
// Encrypt's ciphertext decrypts to the plaintext under the same context,
// ReEncrypt's to the source's plaintext under the destination context, a
// generated data key decrypts and unwraps to itself, signatures and MACs
// verify, random bytes have the length asked for, batches answer every
// item.
func FuzzKeyBroker(f *testing.F) {
	for _, s := range fzSeeds(f) {
		b, err := proto.Marshal(s.req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s.method, b, "")
	}
	f.Add("Encrypt", []byte{0x0a, 0x01, '-'}, "req-1")
	f.Add("Decrypt", []byte{0x0a, 0x80}, strings.Repeat("r", 65))
	fs := newFzServer(f)
	kb := func() kbv1.KeyBrokerServer { return fs.s.KeyBroker() } // fs.s changes on restart
	f.Fuzz(func(t *testing.T, method string, req []byte, requestID string) {
		resp, decoded, err := fs.call(t, method, req, requestID)
		if !decoded {
			return
		}
		checkCode(t, method, err)
		if err != nil {
			return
		}
		// Follow-up calls go straight to the service, as the identity the
		// interceptor would have found.
		ctx := identity.NewContext(t.Context(), identity.Identity{TrustDomain: fzTD, Kind: identity.Client, Name: "app"})
		in := func(m proto.Message) proto.Message {
			if err := proto.Unmarshal(req, m); err != nil {
				t.Fatal(err)
			}
			return m
		}
		switch r := resp.(type) {
		case *kbv1.EncryptResponse:
			q := in(&kbv1.EncryptRequest{}).(*kbv1.EncryptRequest)
			dec, err := kb().Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: r.GetCiphertext(), EncryptionContext: q.GetEncryptionContext()})
			if err != nil || !bytes.Equal(dec.GetPlaintext(), q.GetPlaintext()) || dec.GetKeyId() != q.GetKeyId() || r.GetKeyId() != q.GetKeyId() {
				t.Fatalf("Encrypt's ciphertext decrypts to %q under key %q (%v); want %q under %q", dec.GetPlaintext(), dec.GetKeyId(), err, q.GetPlaintext(), q.GetKeyId())
			}
		case *kbv1.DecryptResponse:
			q := in(&kbv1.DecryptRequest{}).(*kbv1.DecryptRequest)
			if id, v, err := managed.PeekKeyID(q.GetCiphertext()); err != nil || id != r.GetKeyId() || v != r.GetKeyVersion() || (q.GetKeyId() != "" && q.GetKeyId() != id) {
				t.Fatalf("Decrypt answered for key %q version %d; the ciphertext names %q version %d (%v), the request %q", r.GetKeyId(), r.GetKeyVersion(), id, v, err, q.GetKeyId())
			}
		case *kbv1.ReEncryptResponse:
			q := in(&kbv1.ReEncryptRequest{}).(*kbv1.ReEncryptRequest)
			src, err1 := kb().Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: q.GetCiphertext(), EncryptionContext: q.GetSourceEncryptionContext()})
			dst, err2 := kb().Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: r.GetCiphertext(), EncryptionContext: q.GetDestinationEncryptionContext()})
			if err1 != nil || err2 != nil || !bytes.Equal(src.GetPlaintext(), dst.GetPlaintext()) || dst.GetKeyId() != r.GetKeyId() || src.GetKeyId() != r.GetSourceKeyId() {
				t.Fatalf("ReEncrypt's ciphertext does not hold the source's plaintext under the destination key and context: %v, %v", err1, err2)
			}
		case *kbv1.GenerateDataKeyResponse:
			q := in(&kbv1.GenerateDataKeyRequest{}).(*kbv1.GenerateDataKeyRequest)
			checkDataKey(t, ctx, kb(), method == "GenerateDataKey", q, r)
		case *kbv1.SignResponse:
			q := in(&kbv1.SignRequest{}).(*kbv1.SignRequest)
			vq := &kbv1.VerifyRequest{KeyId: q.GetKeyId(), KeyVersion: r.GetKeyVersion(), Signature: r.GetSignature(),
				Input: &kbv1.VerifyRequest_Message{Message: q.GetMessage()}}
			if q.GetDigest() != nil {
				vq.Input = &kbv1.VerifyRequest_Digest{Digest: q.GetDigest()}
			}
			v, err := kb().Verify(ctx, vq)
			if err != nil || !v.GetValid() {
				t.Fatalf("Sign's signature does not verify: %v, %v", v, err)
			}
		case *kbv1.GenerateMacResponse:
			q := in(&kbv1.GenerateMacRequest{}).(*kbv1.GenerateMacRequest)
			v, err := kb().VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: q.GetKeyId(), KeyVersion: r.GetKeyVersion(), Message: q.GetMessage(), Mac: r.GetMac()})
			if err != nil || !v.GetValid() {
				t.Fatalf("GenerateMac's tag does not verify: %v, %v", v, err)
			}
		case *kbv1.GenerateRandomResponse:
			q := in(&kbv1.GenerateRandomRequest{}).(*kbv1.GenerateRandomRequest)
			if len(r.GetRandom()) != int(q.GetLength()) {
				t.Fatalf("GenerateRandom(%d) returned %d bytes", q.GetLength(), len(r.GetRandom()))
			}
		case *kbv1.BatchEncryptResponse:
			q := in(&kbv1.BatchEncryptRequest{}).(*kbv1.BatchEncryptRequest)
			if len(r.GetResults()) != len(q.GetItems()) {
				t.Fatalf("BatchEncrypt answered %d of %d items", len(r.GetResults()), len(q.GetItems()))
			}
			for _, res := range r.GetResults() {
				checkItem(t, method, res.GetError(), res.GetResponse() != nil)
			}
		case *kbv1.BatchDecryptResponse:
			q := in(&kbv1.BatchDecryptRequest{}).(*kbv1.BatchDecryptRequest)
			if len(r.GetResults()) != len(q.GetItems()) {
				t.Fatalf("BatchDecrypt answered %d of %d items", len(r.GetResults()), len(q.GetItems()))
			}
			for _, res := range r.GetResults() {
				checkItem(t, method, res.GetError(), res.GetResponse() != nil)
			}
		case *kbv1.BatchGenerateDataKeyResponse:
			q := in(&kbv1.BatchGenerateDataKeyRequest{}).(*kbv1.BatchGenerateDataKeyRequest)
			if len(r.GetResults()) != len(q.GetItems()) {
				t.Fatalf("BatchGenerateDataKey answered %d of %d items", len(r.GetResults()), len(q.GetItems()))
			}
			for _, res := range r.GetResults() {
				checkItem(t, method, res.GetError(), res.GetResponse() != nil)
			}
		}
	})
}

// checkDataKey checks a GenerateDataKey answer: 32 bytes that the
// encrypted form decrypts to and the wrapped form unwraps to (without
// plaintext: neither plaintext nor wrapped form).
func checkDataKey(t *testing.T, ctx context.Context, kb kbv1.KeyBrokerServer, withPlaintext bool, q *kbv1.GenerateDataKeyRequest, r *kbv1.GenerateDataKeyResponse) {
	t.Helper()
	if !withPlaintext {
		if len(r.GetPlaintext()) != 0 || len(r.GetWrappedDataKey()) != 0 {
			t.Fatal("GenerateDataKeyWithoutPlaintext returned the data key")
		}
		return
	}
	if len(r.GetPlaintext()) != 32 {
		t.Fatalf("data key is %d bytes", len(r.GetPlaintext()))
	}
	dec, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: r.GetEncryptedDataKey(), EncryptionContext: q.GetEncryptionContext()})
	if err != nil || !bytes.Equal(dec.GetPlaintext(), r.GetPlaintext()) {
		t.Fatalf("the encrypted data key does not decrypt to the data key: %v", err)
	}
	dk, err := kb.DecryptDataKey(ctx, &kbv1.DecryptDataKeyRequest{KeyId: r.GetKeyId(), KeyVersion: r.GetKeyVersion(), WrappedDataKey: r.GetWrappedDataKey(), EncryptionContext: q.GetEncryptionContext()})
	if err != nil || !bytes.Equal(dk.GetPlaintext(), r.GetPlaintext()) {
		t.Fatalf("the wrapped data key does not unwrap to the data key: %v", err)
	}
}

// FuzzKeyFromProto decodes arbitrary bytes as an EdgeKey — what an edge
// receives over Watch and reads back from replica.db — and rebuilds the
// key from it. It checks that nothing panics; that refusals are
// InvalidArgument; and that an accepted key validates, keeps its id, and
// survives going back on the wire (KeyToProto) and being rebuilt again
// unchanged.
func FuzzKeyFromProto(f *testing.F) {
	keys := newFzKeys(f)
	for _, k := range keys.sorted {
		ek := &kbv1.EdgeKey{Metadata: wire.KeyToProto(k)}
		for _, v := range k.Versions {
			ek.Versions = append(ek.Versions, &kbv1.EdgeKeyVersion{Version: v.Version, PublicKey: v.PublicKey, SealedMaterial: []byte{1, 2, 3}})
		}
		b, err := proto.Marshal(ek)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	bad := &kbv1.EdgeKey{Metadata: &kbv1.KeyMetadata{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE,
		State: kbv1.KeyState_KEY_STATE_ENABLED, PrimaryVersion: 2, Versions: []*kbv1.KeyVersion{{Version: 1}}, Placement: "principal.nope"}}
	b, _ := proto.Marshal(bad)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ek kbv1.EdgeKey
		if err := proto.Unmarshal(raw, &ek); err != nil {
			return
		}
		k, err := wire.KeyFromProto(ek.GetMetadata(), ek.GetVersions())
		if err != nil {
			if !errors.Is(err, managed.ErrInvalidArgument) {
				t.Fatalf("KeyFromProto error %v is not InvalidArgument", err)
			}
			return
		}
		if err := k.Validate(); err != nil {
			t.Fatalf("KeyFromProto returned a key that does not validate: %v", err)
		}
		if k.ID != ek.GetMetadata().GetKeyId() {
			t.Fatalf("key id %q became %q", ek.GetMetadata().GetKeyId(), k.ID)
		}
		var versions []*kbv1.EdgeKeyVersion
		for _, v := range k.Versions {
			versions = append(versions, &kbv1.EdgeKeyVersion{Version: v.Version, PublicKey: v.PublicKey})
		}
		m := wire.KeyToProto(k)
		again, err := wire.KeyFromProto(m, versions)
		if err != nil {
			t.Fatalf("a rebuilt key does not rebuild again: %v", err)
		}
		if diff := cmp.Diff(k, again); diff != "" {
			t.Fatalf("key changed on the wire and back (-first +again):\n%s", diff)
		}
		if diff := cmp.Diff(m, wire.KeyToProto(again), protocmp.Transform()); diff != "" {
			t.Fatalf("metadata changed on the wire and back (-first +again):\n%s", diff)
		}
	})
}
