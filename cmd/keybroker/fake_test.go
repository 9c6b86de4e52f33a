package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

// fakeBroker is an in-memory KeyBroker and KeyAdmin for the CLI's tests. It
// records every request, and its crypto is just real enough to catch a CLI
// that sends the wrong thing: a ciphertext is a header naming the key and a
// hash of the encryption context, then the plaintext in the clear; Decrypt
// refuses a mismatched context or key; signatures and MACs are HMACs that
// Verify and VerifyMac really check.
type fakeBroker struct {
	kbv1.UnimplementedKeyBrokerServer
	kbv1.UnimplementedKeyAdminServer

	mu    sync.Mutex
	calls []call
	keys  map[string]*kbv1.KeyMetadata
	fail  error // when set, every call returns it
	block bool  // when set, every call waits for its deadline
}

// call is one recorded request.
type call struct {
	method string // full gRPC method, /keybroker.v1.KeyBroker/Encrypt
	req    proto.Message
	caller string // SPIFFE id from the client certificate
}

// fakeVersion is the key version the fake answers with: not 0 or 1, so a
// CLI that prints a constant is caught.
const fakeVersion = 3

func newFakeBroker() *fakeBroker {
	return &fakeBroker{keys: map[string]*kbv1.KeyMetadata{"payments": testKey("payments")}}
}

func testKey(id string) *kbv1.KeyMetadata {
	created := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	return &kbv1.KeyMetadata{
		KeyId:                id,
		Type:                 kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode:                 kbv1.KeyMode_KEY_MODE_DERIVE,
		State:                kbv1.KeyState_KEY_STATE_ENABLED,
		PrimaryVersion:       fakeVersion,
		MinDecryptionVersion: 1,
		Versions: []*kbv1.KeyVersion{
			{Version: 1, CreatedAt: created}, {Version: 2, CreatedAt: created}, {Version: 3, CreatedAt: created},
		},
		Labels:    map[string]string{"team": "pay"},
		RootKey:   "softkms:root-1",
		CreatedAt: created,
		UpdatedAt: created,
		Revision:  17,
	}
}

// record notes req and says how the call must fail, if at all.
func (f *fakeBroker) record(ctx context.Context, req proto.Message) error {
	method, _ := grpc.Method(ctx)
	id, _ := identity.FromContext(ctx)
	f.mu.Lock()
	f.calls = append(f.calls, call{method: method, req: proto.Clone(req), caller: id.String()})
	fail, block := f.fail, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return status.FromContextError(ctx.Err()).Err()
	}
	return fail
}

func (f *fakeBroker) recorded() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeBroker) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *fakeBroker) setBlock() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.block = true
}

func (f *fakeBroker) addKey(k *kbv1.KeyMetadata) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[k.KeyId] = k
}

func contextHash(ec map[string]string) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(ec)) {
		fmt.Fprintf(h, "%d:%s%d:%s", len(k), k, len(ec[k]), ec[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// fakeSeal is the fake's ciphertext of pt under key with context ec.
func fakeSeal(key string, ec map[string]string, pt []byte) []byte {
	return append([]byte("fake|"+key+"|"+contextHash(ec)+"|"), pt...)
}

func fakeOpen(ct []byte, ec map[string]string, wantKey string) (key string, pt []byte, err error) {
	parts := bytes.SplitN(ct, []byte("|"), 4)
	if len(parts) != 4 || string(parts[0]) != "fake" {
		return "", nil, status.Error(codes.InvalidArgument, "not a keybroker ciphertext")
	}
	if string(parts[2]) != contextHash(ec) {
		return "", nil, status.Error(codes.InvalidArgument, "encryption context does not match")
	}
	if wantKey != "" && string(parts[1]) != wantKey {
		return "", nil, status.Error(codes.InvalidArgument, "ciphertext is not under key "+wantKey)
	}
	return string(parts[1]), parts[3], nil
}

func fakeTag(purpose, key string, data []byte) []byte {
	k := sha256.Sum256([]byte(purpose + ":" + key))
	m := hmac.New(sha256.New, k[:])
	m.Write(data)
	return m.Sum(nil)
}

// fakeSignature signs the SHA-256 digest of a message.
func fakeSignature(key string, digest []byte) []byte { return fakeTag("sign", key, digest) }

func fakeMAC(key string, msg []byte) []byte { return fakeTag("mac", key, msg) }

func (f *fakeBroker) Encrypt(ctx context.Context, r *kbv1.EncryptRequest) (*kbv1.EncryptResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.EncryptResponse{Ciphertext: fakeSeal(r.KeyId, r.EncryptionContext, r.Plaintext), KeyId: r.KeyId, KeyVersion: fakeVersion}, nil
}

func (f *fakeBroker) Decrypt(ctx context.Context, r *kbv1.DecryptRequest) (*kbv1.DecryptResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	key, pt, err := fakeOpen(r.Ciphertext, r.EncryptionContext, r.KeyId)
	if err != nil {
		return nil, err
	}
	return &kbv1.DecryptResponse{Plaintext: pt, KeyId: key, KeyVersion: fakeVersion}, nil
}

func (f *fakeBroker) ReEncrypt(ctx context.Context, r *kbv1.ReEncryptRequest) (*kbv1.ReEncryptResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	src, pt, err := fakeOpen(r.Ciphertext, r.SourceEncryptionContext, "")
	if err != nil {
		return nil, err
	}
	dst := cmpOr(r.DestinationKeyId, src)
	return &kbv1.ReEncryptResponse{
		Ciphertext:  fakeSeal(dst, r.DestinationEncryptionContext, pt),
		SourceKeyId: src, SourceKeyVersion: fakeVersion,
		KeyId: dst, KeyVersion: fakeVersion,
	}, nil
}

// authenticate gives the fake's handlers the caller's identity from its
// certificate, or refuses the call Unauthenticated, as a node would (package
// rpc, which also audits refusals).
func authenticate(trustDomain string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, err := identity.FromPeer(ctx, trustDomain)
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		return h(identity.NewContext(ctx, id), req)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// fakeDataKey is the data key the fake always generates.
var fakeDataKey = bytes.Repeat([]byte{0x42}, 32)

func (f *fakeBroker) GenerateDataKey(ctx context.Context, r *kbv1.GenerateDataKeyRequest) (*kbv1.GenerateDataKeyResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.GenerateDataKeyResponse{
		Plaintext:        fakeDataKey,
		EncryptedDataKey: fakeSeal(r.KeyId, r.EncryptionContext, fakeDataKey),
		KeyId:            r.KeyId, KeyVersion: fakeVersion,
	}, nil
}

func (f *fakeBroker) GenerateDataKeyWithoutPlaintext(ctx context.Context, r *kbv1.GenerateDataKeyRequest) (*kbv1.GenerateDataKeyResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.GenerateDataKeyResponse{
		EncryptedDataKey: fakeSeal(r.KeyId, r.EncryptionContext, fakeDataKey),
		KeyId:            r.KeyId, KeyVersion: fakeVersion,
	}, nil
}

func signedDigest(message, digest []byte, isDigest bool) []byte {
	if isDigest {
		return digest
	}
	d := sha256.Sum256(message)
	return d[:]
}

func (f *fakeBroker) Sign(ctx context.Context, r *kbv1.SignRequest) (*kbv1.SignResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	_, isDigest := r.Input.(*kbv1.SignRequest_Digest)
	d := signedDigest(r.GetMessage(), r.GetDigest(), isDigest)
	return &kbv1.SignResponse{Signature: fakeSignature(r.KeyId, d), KeyId: r.KeyId, KeyVersion: fakeVersion}, nil
}

func (f *fakeBroker) Verify(ctx context.Context, r *kbv1.VerifyRequest) (*kbv1.VerifyResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	_, isDigest := r.Input.(*kbv1.VerifyRequest_Digest)
	d := signedDigest(r.GetMessage(), r.GetDigest(), isDigest)
	return &kbv1.VerifyResponse{
		Valid:      hmac.Equal(r.Signature, fakeSignature(r.KeyId, d)),
		KeyVersion: cmpOrVersion(r.KeyVersion),
	}, nil
}

func cmpOrVersion(v uint32) uint32 {
	if v != 0 {
		return v
	}
	return fakeVersion
}

func (f *fakeBroker) GenerateMac(ctx context.Context, r *kbv1.GenerateMacRequest) (*kbv1.GenerateMacResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.GenerateMacResponse{Mac: fakeMAC(r.KeyId, r.Message), KeyId: r.KeyId, KeyVersion: fakeVersion}, nil
}

func (f *fakeBroker) VerifyMac(ctx context.Context, r *kbv1.VerifyMacRequest) (*kbv1.VerifyMacResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.VerifyMacResponse{Valid: hmac.Equal(r.Mac, fakeMAC(r.KeyId, r.Message)), KeyVersion: cmpOrVersion(r.KeyVersion)}, nil
}

// fakeRandom is what the fake's GenerateRandom returns: every byte value,
// NUL and newline included, so output must be handled as binary.
func fakeRandom(n uint32) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func (f *fakeBroker) GenerateRandom(ctx context.Context, r *kbv1.GenerateRandomRequest) (*kbv1.GenerateRandomResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.GenerateRandomResponse{Random: fakeRandom(r.Length)}, nil
}

func (f *fakeBroker) key(id string) (*kbv1.KeyMetadata, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.keys[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "key %q not found", id)
	}
	return proto.CloneOf(k), nil
}

func (f *fakeBroker) DescribeKey(ctx context.Context, r *kbv1.DescribeKeyRequest) (*kbv1.DescribeKeyResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	k, err := f.key(r.KeyId)
	if err != nil {
		return nil, err
	}
	return &kbv1.DescribeKeyResponse{Key: k}, nil
}

func (f *fakeBroker) ListKeys(ctx context.Context, r *kbv1.ListKeysRequest) (*kbv1.ListKeysResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var match []*kbv1.KeyMetadata
	for _, id := range slices.Sorted(maps.Keys(f.keys)) {
		k := f.keys[id]
		if mapHas(k.Labels, r.LabelSelector) {
			match = append(match, k)
		}
	}
	start := 0
	if r.PageToken != "" {
		n, err := strconv.Atoi(r.PageToken)
		if err != nil || n < 0 || n > len(match) {
			return nil, status.Error(codes.InvalidArgument, "bad page token")
		}
		start = n
	}
	size := int(r.PageSize)
	if size == 0 {
		size = 100
	}
	end := min(start+size, len(match))
	resp := &kbv1.ListKeysResponse{Keys: match[start:end]}
	if end < len(match) {
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

func mapHas(m, want map[string]string) bool {
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (f *fakeBroker) CreateKey(ctx context.Context, r *kbv1.CreateKeyRequest) (*kbv1.KeyMetadata, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	k := testKey(r.KeyId)
	k.Type, k.Mode, k.Derived, k.RootKey = r.Type, r.Mode, r.Derived, r.RootKey
	k.Labels, k.RotationPeriod, k.Description = r.Labels, r.RotationPeriod, r.Description
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.keys[r.KeyId]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "key %q exists", r.KeyId)
	}
	f.keys[r.KeyId] = k
	return k, nil
}

// change applies edit to a copy of key id and returns it (the fake does not
// store the change: each test starts from the seeded keys).
func (f *fakeBroker) change(ctx context.Context, r proto.Message, id string, edit func(*kbv1.KeyMetadata)) (*kbv1.KeyMetadata, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	k, err := f.key(id)
	if err != nil {
		return nil, err
	}
	edit(k)
	k.Revision++
	return k, nil
}

func (f *fakeBroker) RotateKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return f.change(ctx, r, r.KeyId, func(k *kbv1.KeyMetadata) {
		k.PrimaryVersion++
		k.Versions = append(k.Versions, &kbv1.KeyVersion{Version: k.PrimaryVersion})
	})
}

func (f *fakeBroker) UpdateKey(ctx context.Context, r *kbv1.UpdateKeyRequest) (*kbv1.KeyMetadata, error) {
	return f.change(ctx, r, r.KeyId, func(k *kbv1.KeyMetadata) {
		if r.Description != nil {
			k.Description = *r.Description
		}
		if r.ReplaceLabels {
			k.Labels = nil
		}
		for l, v := range r.Labels {
			if k.Labels == nil {
				k.Labels = map[string]string{}
			}
			k.Labels[l] = v
		}
		if r.RotationPeriod != nil {
			k.RotationPeriod = r.RotationPeriod
		}
		if r.MinDecryptionVersion != nil {
			k.MinDecryptionVersion = *r.MinDecryptionVersion
		}
	})
}

func (f *fakeBroker) DisableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return f.change(ctx, r, r.KeyId, func(k *kbv1.KeyMetadata) { k.State = kbv1.KeyState_KEY_STATE_DISABLED })
}

func (f *fakeBroker) EnableKey(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return f.change(ctx, r, r.KeyId, func(k *kbv1.KeyMetadata) { k.State = kbv1.KeyState_KEY_STATE_ENABLED })
}

func (f *fakeBroker) ScheduleKeyDeletion(ctx context.Context, r *kbv1.ScheduleKeyDeletionRequest) (*kbv1.KeyMetadata, error) {
	return f.change(ctx, r, r.KeyId, func(k *kbv1.KeyMetadata) {
		k.State = kbv1.KeyState_KEY_STATE_PENDING_DELETION
		k.DeletionTime = timestamppb.New(k.UpdatedAt.AsTime().Add(30 * 24 * time.Hour))
	})
}

func (f *fakeBroker) CancelKeyDeletion(ctx context.Context, r *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return f.change(ctx, r, r.KeyId, func(k *kbv1.KeyMetadata) { k.State = kbv1.KeyState_KEY_STATE_DISABLED })
}

const testTrustDomain = "test.keybroker"

// testBroker is a fakeBroker served over real mutual TLS on loopback, with
// the identity interceptor a real node uses.
type testBroker struct {
	fake *fakeBroker
	addr string
	tls  identity.TLSFiles // the client's (alice's) files
	dir  string
}

type brokerConfig struct {
	hosts       []string // server certificate SANs; default 127.0.0.1, localhost
	trustDomain string   // the interceptor's; default the CA's
}

func startBroker(t *testing.T, cfg brokerConfig) *testBroker {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.NewCA(testTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	hosts := cfg.hosts
	if hosts == nil {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	srvFiles, err := ca.IssueFiles(identity.Identity{TrustDomain: testTrustDomain, Kind: identity.Central, Name: "central-1"},
		hosts, time.Hour, dir, "central-1", caFile)
	if err != nil {
		t.Fatal(err)
	}
	cliFiles, err := ca.IssueFiles(identity.Identity{TrustDomain: testTrustDomain, Kind: identity.Client, Name: "alice"},
		nil, time.Hour, dir, "alice", caFile)
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig, err := srvFiles.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		grpc.UnaryInterceptor(authenticate(cmpOr(cfg.trustDomain, testTrustDomain))),
		grpc.MaxRecvMsgSize(maxRecvMessage),
	)
	fake := newFakeBroker()
	kbv1.RegisterKeyBrokerServer(srv, fake)
	kbv1.RegisterKeyAdminServer(srv, fake)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return &testBroker{fake: fake, addr: lis.Addr().String(), tls: cliFiles, dir: dir}
}

// env is the environment that points the CLI at b.
func (b *testBroker) env() map[string]string {
	return map[string]string{envAddr: b.addr, envCA: b.tls.CA, envCert: b.tls.Cert, envKey: b.tls.Key}
}

func (f *fakeBroker) EnrollNode(ctx context.Context, r *kbv1.EnrollNodeRequest) (*kbv1.Node, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.Node{NodeId: r.GetNodeId(), Kind: "edge", Region: r.GetRegion(), Labels: r.GetLabels(), Enrolled: true}, nil
}

func (f *fakeBroker) UpdateNode(ctx context.Context, r *kbv1.UpdateNodeRequest) (*kbv1.Node, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.Node{NodeId: r.GetNodeId(), Kind: "edge", Region: r.GetRegion(), Labels: r.GetLabels(), Enrolled: true}, nil
}

func (f *fakeBroker) RemoveNode(ctx context.Context, r *kbv1.RemoveNodeRequest) (*kbv1.RemoveNodeResponse, error) {
	if err := f.record(ctx, r); err != nil {
		return nil, err
	}
	return &kbv1.RemoveNodeResponse{Revision: 9}, nil
}
