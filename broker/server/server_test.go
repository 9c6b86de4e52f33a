package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

const testPolicy = `
@id("admins")
permit (principal is Admin, action, resource) unless { principal == Admin::"team-a" };

@id("team-a")
permit (principal == Admin::"team-a", action, resource is Key)
when { resource.hasTag("team") && resource.getTag("team") == "a" };

@id("reader")
permit (principal == Client::"reader", action in [Action::"Encrypt", Action::"Decrypt"], resource is Key);

@id("mover")
permit (principal == Client::"mover", action == Action::"ReEncrypt", resource is Key)
when { resource.hasTag("app") && resource.getTag("app") == "billing" };

@id("billing-app")
permit (principal is Client, action, resource is Key)
when { principal == Client::"billing" && resource.hasTag("app") && resource.getTag("app") == "billing" };

@id("random")
permit (principal is Client, action == Action::"GenerateRandom", resource);

@id("no-deletion-by-ops-bot")
forbid (principal == Admin::"bot", action == Action::"ScheduleKeyDeletion", resource);

@id("edges-forward")
permit (principal is Edge, action == Action::"Forward", resource)
when { !context.admin } unless { principal == Edge::"edge-barred" };

@id("edge-relays-admin")
permit (principal == Edge::"edge-ops", action == Action::"Forward", resource)
when { context.admin };
`

type testEnv struct {
	addr      string
	ca        *identity.CA
	dir       string
	caFile    string
	auditPath string
	audit     *audit.Log
	clock     *testClock
	svc       *broker.Service
	roots     *broker.Roots
	soft      *softkms.Backend
	softURI   string // the softkms backend's connection attributes
	srv       *Server
}

// start starts a central node; opts adjust its Config.
func start(t *testing.T, opts ...func(*Config)) *testEnv {
	t.Helper()
	return startWith(t, testPolicy, opts...)
}

// startWith starts a central server under the given Cedar policy; opts
// adjust its Config.
func startWith(t *testing.T, policyText string, opts ...func(*Config)) *testEnv {
	t.Helper()
	dir := t.TempDir()
	ctx := t.Context()
	kek := filepath.Join(dir, "kek")
	os.WriteFile(kek, bytes.Repeat([]byte("k"), 32), 0o600)
	ks := filepath.Join(dir, "softkms.json")
	sb, err := softkms.New(ctx, softkms.Config{Path: ks, KEKFile: kek})
	if err != nil {
		t.Fatal(err)
	}
	sb.CreateKey(ctx, "prf", backends.HMAC256)
	sb.CreateKey(ctx, "aes", backends.AES256)
	sb.CreateKey(ctx, "hsm-aes", backends.AES256)
	sb.CreateKey(ctx, "mac", backends.HMAC256)
	sb.CreateKey(ctx, "billing-prf", backends.HMAC256)
	roots, err := broker.NewRoots(map[string]backends.Backend{"soft": sb}, map[string]string{"soft": "softkms:path=" + ks + ";kek-source=" + kek})
	if err != nil {
		t.Fatal(err)
	}
	if err := roots.Declare([]broker.RootKey{{URI: "softkms:prf", Role: managed.RoleDerive}, {URI: "softkms:aes", Role: managed.RoleWrap},
		{URI: "softkms:hsm-aes", Role: managed.RoleBackend}, {URI: "softkms:mac", Role: managed.RoleBackend},
		{URI: "softkms:billing-prf", Role: managed.RoleDerive}}); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "registry.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(broker.ServiceConfig{Registry: broker.NewRegistry(st, nil), Roots: roots,
		Materials: broker.NewMaterials(roots, 100, time.Hour, nil), DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf", managed.ModeWrap: "softkms:aes"}})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "policy.cedar"), []byte(policyText), 0o600)
	pe, err := policy.NewEngine(filepath.Join(dir, "policy.cedar"))
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(dir, "audit.jsonl")
	al, err := audit.Open(auditPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := identity.NewCA("kb.test", time.Hour)
	caFile := filepath.Join(dir, "ca.crt")
	ca.WriteCA(caFile, filepath.Join(dir, "ca.key"))
	files, _ := ca.IssueFiles(identity.Identity{TrustDomain: "kb.test", Kind: identity.Central, Name: "central-1"}, []string{"127.0.0.1"}, time.Hour, dir, "central", caFile)
	tlsCfg, err := files.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	clock := &testClock{now: time.Now()}
	cfg := Config{Service: svc, Policy: pe, Audit: al, NodeID: "central-1", TrustDomain: "kb.test", Address: "127.0.0.1:0",
		ClientCAs: tlsCfg.ClientCAs, Now: clock.Now}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.UnaryInterceptor(srv.UnaryInterceptor()), grpc.StreamInterceptor(srv.StreamInterceptor()), grpc.MaxRecvMsgSize(5<<20))
	srv.Register(g)
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	go g.Serve(lis)
	t.Cleanup(func() { g.Stop(); al.Close(); st.Close(); roots.Close() })
	return &testEnv{addr: lis.Addr().String(), ca: ca, dir: dir, caFile: caFile, auditPath: auditPath, audit: al, clock: clock,
		svc: svc, roots: roots, soft: sb, softURI: "path=" + ks + ";kek-source=" + kek, srv: srv}
}

func (e *testEnv) conn(t *testing.T, kind identity.Kind, name string) *grpc.ClientConn {
	t.Helper()
	return e.connTD(t, "kb.test", kind, name)
}

func (e *testEnv) connTD(t *testing.T, td string, kind identity.Kind, name string) *grpc.ClientConn {
	t.Helper()
	files, err := e.ca.IssueFiles(identity.Identity{TrustDomain: td, Kind: kind, Name: name}, nil, time.Hour, e.dir, td+"-"+string(kind)+"-"+name, e.caFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := files.ClientConfig("")
	c, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func code(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Errorf("%s: code %s (%v), want %s", what, got, err, want)
	}
}

func auditLines(t *testing.T, path string) []audit.Record {
	t.Helper()
	data, _ := os.ReadFile(path)
	var out []audit.Record
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r audit.Record
		if err := json.Unmarshal(l, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func TestPolicyMatrixAndAudit(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	bot := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "bot"))
	billing := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "billing"))
	other := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "other"))

	for _, id := range []string{"payments", "hr"} {
		app := map[string]string{"payments": "billing", "hr": "hr"}[id]
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
			Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"app": app}}); err != nil {
			t.Fatalf("CreateKey(%s): %v", id, err)
		}
	}
	ectx := map[string]string{"order": "1"}
	md := metadata.Pairs("x-request-id", "req-test-1")
	var hdr metadata.MD
	// The plaintext must be something no hex hash or request id in an
	// audit line can contain by chance, or the leak check below misfires.
	enc, err := billing.Encrypt(metadata.NewOutgoingContext(ctx, md), &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte(secretCard), EncryptionContext: ectx}, grpc.Header(&hdr))
	if err != nil {
		t.Fatalf("allowed Encrypt: %v", err)
	}
	if got := hdr.Get("x-client-request-id"); len(got) != 1 || got[0] != "req-test-1" {
		t.Errorf("x-client-request-id echoed = %v", got)
	}
	dec, err := billing.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: ectx})
	if err != nil || string(dec.Plaintext) != secretCard {
		t.Fatalf("allowed Decrypt = %v, %v", dec, err)
	}
	_, err = other.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: ectx})
	code(t, "other client decrypts", err, codes.PermissionDenied)
	_, err = billing.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hr", Plaintext: []byte("x")})
	code(t, "billing on the hr key", err, codes.PermissionDenied)
	// Existence is not leaked: an unknown key is denied, not not-found, to a
	// client whose policy needs labels.
	_, err = billing.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "no-such-key", Plaintext: []byte("x")})
	code(t, "unknown key for a label-scoped client", err, codes.PermissionDenied)
	_, err = kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops")).Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "no-such-key", Plaintext: []byte("x")})
	code(t, "unknown key for an admin", err, codes.NotFound)
	// A client may not administer; a forbid beats the admin permit.
	_, err = kbv1.NewKeyAdminClient(e.conn(t, identity.Client, "billing")).RotateKey(ctx, &kbv1.KeyRequest{KeyId: "payments"})
	code(t, "client rotates", err, codes.PermissionDenied)
	_, err = bot.ScheduleKeyDeletion(ctx, &kbv1.ScheduleKeyDeletionRequest{KeyId: "payments"})
	code(t, "forbidden admin deletes", err, codes.PermissionDenied)

	// A certificate from another CA never gets a call through.
	otherCA, _ := identity.NewCA("kb.test", time.Hour)
	of, _ := otherCA.IssueFiles(identity.Identity{TrustDomain: "kb.test", Kind: identity.Admin, Name: "ops"}, nil, time.Hour, t.TempDir(), "x", e.caFile)
	cfg, _ := of.ClientConfig("")
	fc, _ := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	defer fc.Close()
	_, err = kbv1.NewKeyBrokerClient(fc).Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("x")})
	code(t, "foreign CA", err, codes.Unavailable)

	recs := auditLines(t, e.auditPath)
	find := func(op, principal, outcome string) *audit.Record {
		for i := range recs {
			r := &recs[i]
			if string(r.Operation) == op && strings.HasSuffix(r.Principal, principal) && r.Outcome == outcome {
				return r
			}
		}
		return nil
	}
	if r := find("Encrypt", "/client/billing", "ok"); r == nil || r.ClientRequestID != "req-test-1" || r.RequestID == "req-test-1" || hdr.Get("x-request-id")[0] != r.RequestID || r.Decision != "allow" ||
		r.PolicyID != "billing-app" || r.Key != "payments" || r.Version != 1 || r.Node != "central-1" || r.Backend != "soft" {
		t.Errorf("audit line of the allowed Encrypt = %+v", r)
	}
	if r := find("Decrypt", "/client/other", "PermissionDenied"); r == nil || r.Decision != "deny" || r.PolicyID != "default-deny" {
		t.Errorf("audit line of the denied Decrypt = %+v", r)
	}
	if r := find("ScheduleKeyDeletion", "/admin/bot", "PermissionDenied"); r == nil || r.PolicyID != "no-deletion-by-ops-bot" {
		t.Errorf("audit line of the forbidden deletion = %+v", r)
	}
	for _, r := range recs {
		if strings.Contains(string(mustJSON(r)), secretCard) {
			t.Errorf("audit line contains plaintext: %+v", r)
		}
	}
}

const secretCard = "card number 4111-xyz"

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

func TestBadInputCodes(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
	admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "m", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: kbv1.KeyMode_KEY_MODE_WRAP})
	enc, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("data"), EncryptionContext: map[string]string{"a": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(enc.Ciphertext)
	tampered[len(tampered)-3] ^= 0x10
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"truncated", func() error {
			_, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext[:30]})
			return err
		}, codes.InvalidArgument},
		{"tampered", func() error {
			_, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: tampered, EncryptionContext: map[string]string{"a": "b"}})
			return err
		}, codes.InvalidArgument},
		{"wrong context", func() error {
			_, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: map[string]string{"a": "c"}})
			return err
		}, codes.InvalidArgument},
		{"garbage", func() error { _, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: []byte("hello")}); return err }, codes.InvalidArgument},
		{"bad key id", func() error { _, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "../etc"}); return err }, codes.InvalidArgument},
		{"empty key id", func() error { _, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{}); return err }, codes.InvalidArgument},
		{"unknown key", func() error { _, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "nope"}); return err }, codes.NotFound},
		{"oversized", func() error {
			_, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: make([]byte, managed.MaxPlaintext+1)})
			return err
		}, codes.InvalidArgument},
		{"over the message limit", func() error {
			_, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: make([]byte, 6<<20)})
			return err
		}, codes.ResourceExhausted},
		{"mac with aes key", func() error {
			_, err := kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "k", Message: []byte("x")})
			return err
		}, codes.InvalidArgument},
		{"encrypt with hmac key", func() error {
			_, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "m", Plaintext: []byte("x")})
			return err
		}, codes.InvalidArgument},
		{"sign without input", func() error { _, err := kb.Sign(ctx, &kbv1.SignRequest{KeyId: "k"}); return err }, codes.InvalidArgument},
		{"random 0", func() error { _, err := kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{}); return err }, codes.InvalidArgument},
		{"lookup without op", func() error { _, err := kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "k"}); return err }, codes.InvalidArgument},
		{"create unspecified type", func() error {
			_, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "z", Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
			return err
		}, codes.InvalidArgument},
		{"create duplicate", func() error {
			_, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
			return err
		}, codes.AlreadyExists},
		{"stale revision", func() error {
			_, err := admin.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "k", ExpectedRevision: 999999})
			return err
		}, codes.Aborted},
		{"enable an enabled key", func() error { _, err := admin.EnableKey(ctx, &kbv1.KeyRequest{KeyId: "k"}); return err }, codes.FailedPrecondition},
		{"short pending window", func() error {
			_, err := admin.ScheduleKeyDeletion(ctx, &kbv1.ScheduleKeyDeletionRequest{KeyId: "k", PendingWindow: durationOf(time.Hour)})
			return err
		}, codes.InvalidArgument},
		{"empty batch", func() error { _, err := kb.BatchEncrypt(ctx, &kbv1.BatchEncryptRequest{}); return err }, codes.InvalidArgument},
	} {
		code(t, tc.name, tc.call(), tc.want)
	}
	// Disabled keys refuse with FailedPrecondition; a batch reports it per item.
	admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "k"})
	_, err = kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: map[string]string{"a": "b"}})
	code(t, "decrypt with a disabled key", err, codes.FailedPrecondition)
	admin.EnableKey(ctx, &kbv1.KeyRequest{KeyId: "k"})
	res, err := kb.BatchEncrypt(ctx, &kbv1.BatchEncryptRequest{Items: []*kbv1.EncryptRequest{
		{KeyId: "k", Plaintext: []byte("a")}, {KeyId: "nope", Plaintext: []byte("b")}, {KeyId: "m", Plaintext: []byte("c")},
	}})
	if err != nil || len(res.Results) != 3 {
		t.Fatalf("BatchEncrypt = %v, %v", res, err)
	}
	if res.Results[0].Error != nil || res.Results[0].Response == nil ||
		codes.Code(res.Results[1].GetError().GetCode()) != codes.NotFound ||
		codes.Code(res.Results[2].GetError().GetCode()) != codes.InvalidArgument {
		t.Errorf("batch results = %v", res.Results)
	}
	if _, err := audit.VerifyFile(e.auditPath); err != nil {
		t.Errorf("audit log does not verify: %v", err)
	}
}

func TestEveryOperation(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	mk := func(id string, typ kbv1.KeyType, mode kbv1.KeyMode) {
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: typ, Mode: mode}); err != nil {
			t.Fatalf("CreateKey %s: %v", id, err)
		}
	}
	mk("aes", kbv1.KeyType_KEY_TYPE_AES_256_GCM, kbv1.KeyMode_KEY_MODE_WRAP)
	mk("aes2", kbv1.KeyType_KEY_TYPE_AES_256_GCM, kbv1.KeyMode_KEY_MODE_DERIVE)
	mk("ec", kbv1.KeyType_KEY_TYPE_ECDSA_P256, kbv1.KeyMode_KEY_MODE_DERIVE)
	mk("ed", kbv1.KeyType_KEY_TYPE_ED25519, kbv1.KeyMode_KEY_MODE_WRAP)
	mk("mac", kbv1.KeyType_KEY_TYPE_HMAC_SHA256, kbv1.KeyMode_KEY_MODE_DERIVE)

	enc, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "aes", Plaintext: []byte("p")})
	if err != nil {
		t.Fatal(err)
	}
	re, err := kb.ReEncrypt(ctx, &kbv1.ReEncryptRequest{Ciphertext: enc.Ciphertext, DestinationKeyId: "aes2", DestinationEncryptionContext: map[string]string{"x": "y"}})
	if err != nil || re.SourceKeyId != "aes" || re.KeyId != "aes2" {
		t.Fatalf("ReEncrypt = %v, %v", re, err)
	}
	if d, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: re.Ciphertext, EncryptionContext: map[string]string{"x": "y"}}); err != nil || string(d.Plaintext) != "p" {
		t.Errorf("Decrypt(ReEncrypt) = %v, %v", d, err)
	}
	dk, err := kb.GenerateDataKey(ctx, &kbv1.GenerateDataKeyRequest{KeyId: "aes"})
	if err != nil || len(dk.Plaintext) != 32 {
		t.Fatalf("GenerateDataKey = %v", err)
	}
	if d, _ := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: dk.EncryptedDataKey}); !bytes.Equal(d.GetPlaintext(), dk.Plaintext) {
		t.Error("encrypted data key does not decrypt to the data key")
	}
	back, err := kb.DecryptDataKey(ctx, &kbv1.DecryptDataKeyRequest{KeyId: "aes", KeyVersion: dk.KeyVersion, WrappedDataKey: dk.WrappedDataKey})
	if err != nil || !bytes.Equal(back.Plaintext, dk.Plaintext) {
		t.Errorf("DecryptDataKey(wrapped data key) = %v, want the generated data key", err)
	}
	if _, err := kb.DecryptDataKey(ctx, &kbv1.DecryptDataKeyRequest{KeyId: "aes", KeyVersion: dk.KeyVersion, WrappedDataKey: []byte("short")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("DecryptDataKey(short wrapped key) = %v, want InvalidArgument", err)
	}
	dk2, err := kb.GenerateDataKeyWithoutPlaintext(ctx, &kbv1.GenerateDataKeyRequest{KeyId: "aes"})
	if err != nil || len(dk2.Plaintext) != 0 || len(dk2.WrappedDataKey) != 0 || len(dk2.EncryptedDataKey) == 0 {
		t.Errorf("GenerateDataKeyWithoutPlaintext = %v, %v", dk2, err)
	}
	for _, id := range []string{"ec", "ed"} {
		sig, err := kb.Sign(ctx, &kbv1.SignRequest{KeyId: id, Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
		if err != nil {
			t.Fatalf("Sign %s: %v", id, err)
		}
		v, err := kb.Verify(ctx, &kbv1.VerifyRequest{KeyId: id, Input: &kbv1.VerifyRequest_Message{Message: []byte("m")}, Signature: sig.Signature})
		if err != nil || !v.Valid {
			t.Errorf("Verify %s = %v, %v", id, v, err)
		}
		if pk, err := kb.GetPublicKey(ctx, &kbv1.GetPublicKeyRequest{KeyId: id}); err != nil || len(pk.PublicKey) == 0 {
			t.Errorf("GetPublicKey %s = %v", id, err)
		}
	}
	mac, err := kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "mac", Message: []byte("m")})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := kb.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "mac", Message: []byte("m"), Mac: mac.Mac}); err != nil || !v.Valid {
		t.Errorf("VerifyMac = %v, %v", v, err)
	}
	if r, err := kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 16}); err != nil || len(r.Random) != 16 {
		t.Errorf("GenerateRandom = %v", err)
	}
	if d, err := kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "aes"}); err != nil || d.Key.Mode != kbv1.KeyMode_KEY_MODE_WRAP || d.Key.RootKey != "softkms:aes" {
		t.Errorf("DescribeKey = %v, %v", d, err)
	}
	l, err := kb.ListKeys(ctx, &kbv1.ListKeysRequest{PageSize: 2})
	if err != nil || len(l.Keys) != 2 || l.NextPageToken == "" {
		t.Errorf("ListKeys = %v, %v", l, err)
	}
	// A page token is a checked cursor: another selector, or an id in
	// place of the token, is refused.
	for _, r := range []*kbv1.ListKeysRequest{
		{PageSize: 2, PageToken: l.GetNextPageToken(), LabelSelector: map[string]string{"app": "x"}},
		{PageSize: 2, PageToken: "aes"},
	} {
		if _, err := kb.ListKeys(ctx, r); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ListKeys(token %q, selector %v) = %v, want InvalidArgument", r.PageToken, r.LabelSelector, err)
		}
	}
	if l, err := kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "aes", Operation: kbv1.Operation_OPERATION_ENCRYPT}); err != nil || len(l.Nodes) != 1 || l.Nodes[0].Kind != "central" {
		t.Errorf("LookupKey = %v, %v", l, err)
	}
	if n, err := admin.ListNodes(ctx, &kbv1.ListNodesRequest{}); err != nil || len(n.Nodes) != 1 {
		t.Errorf("ListNodes = %v, %v", n, err)
	}
	rot, err := admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "aes"})
	if err != nil || rot.PrimaryVersion != 2 {
		t.Fatalf("RotateKey = %v, %v", rot, err)
	}
	if d, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext}); err != nil || d.KeyVersion != 1 {
		t.Errorf("Decrypt after rotate = %v, %v", d, err)
	}
	two := uint32(2)
	if _, err := admin.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "aes", MinDecryptionVersion: &two, Labels: map[string]string{"tier": "gold"}}); err != nil {
		t.Fatal(err)
	}
	_, err = kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext})
	code(t, "decrypt below the minimum version", err, codes.FailedPrecondition)
	if m, err := admin.ScheduleKeyDeletion(ctx, &kbv1.ScheduleKeyDeletionRequest{KeyId: "ed"}); err != nil || m.State != kbv1.KeyState_KEY_STATE_PENDING_DELETION || m.DeletionTime == nil {
		t.Errorf("ScheduleKeyDeletion = %v, %v", m, err)
	}
	_, err = kb.Sign(ctx, &kbv1.SignRequest{KeyId: "ed", Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
	code(t, "sign with a pending-deletion key", err, codes.FailedPrecondition)
	if m, err := admin.CancelKeyDeletion(ctx, &kbv1.KeyRequest{KeyId: "ed"}); err != nil || m.State != kbv1.KeyState_KEY_STATE_DISABLED {
		t.Errorf("CancelKeyDeletion = %v, %v", m, err)
	}
}

func durationOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func TestAuditFailureRefusesCalls(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
		t.Fatal(err)
	}
	e.audit.Close() // the log can no longer be written
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	resp, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("x")})
	code(t, "encrypt with the audit log down", err, codes.Unavailable)
	if resp != nil {
		t.Error("a ciphertext left the server without an audit line")
	}
	res, err := kb.BatchEncrypt(ctx, &kbv1.BatchEncryptRequest{Items: []*kbv1.EncryptRequest{{KeyId: "k", Plaintext: []byte("x")}}})
	code(t, "batch with the audit log down", err, codes.Unavailable)
	if res != nil {
		t.Error("a batch answered without audit lines")
	}
}

// TestUpdateKeyAuthorizesNewLabels: an admin confined to team=a may not
// relabel its key into team b, nor take team b's key into team a.
func TestUpdateKeyAuthorizesNewLabels(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	teamA := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "team-a"))
	mk := func(c kbv1.KeyAdminClient, id, team string) {
		t.Helper()
		if _, err := c.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
			Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"team": team}}); err != nil {
			t.Fatalf("CreateKey(%s): %v", id, err)
		}
	}
	mk(teamA, "a-key", "a")
	mk(ops, "b-key", "b")
	if _, err := teamA.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "b-key2", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"team": "b"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("team-a creates a team-b key: %v, want PermissionDenied", err)
	}
	desc := "ours"
	for _, tc := range []struct {
		name string
		req  *kbv1.UpdateKeyRequest
		want codes.Code
	}{
		{"relabel out of team a", &kbv1.UpdateKeyRequest{KeyId: "a-key", Labels: map[string]string{"team": "b"}}, codes.PermissionDenied},
		{"replace labels, dropping team a", &kbv1.UpdateKeyRequest{KeyId: "a-key", ReplaceLabels: true, Labels: map[string]string{"app": "x"}}, codes.PermissionDenied},
		{"take team b's key", &kbv1.UpdateKeyRequest{KeyId: "b-key", Labels: map[string]string{"team": "a"}}, codes.PermissionDenied},
		{"describe own key", &kbv1.UpdateKeyRequest{KeyId: "a-key", Description: &desc, Labels: map[string]string{"tier": "gold"}}, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := teamA.UpdateKey(ctx, tc.req)
			code(t, "UpdateKey", err, tc.want)
		})
	}
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	for id, team := range map[string]string{"a-key": "a", "b-key": "b"} {
		d, err := kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id})
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Key.Labels["team"]; got != team {
			t.Errorf("%s: team = %q after the refused updates, want %q", id, got, team)
		}
	}
	var denied int
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "UpdateKey" && r.Outcome == "PermissionDenied" {
			denied++
			if r.Decision != "deny" {
				t.Errorf("refused UpdateKey audited with decision %q", r.Decision)
			}
		}
	}
	if denied != 3 {
		t.Errorf("%d refused UpdateKey audit lines, want 3", denied)
	}
}

// TestReEncryptAction: ReEncrypt needs the ReEncrypt action on the source
// and the destination key; Encrypt and Decrypt do not grant it.
func TestReEncryptAction(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	for id, app := range map[string]string{"pay": "billing", "pay2": "billing", "hr": "hr"} {
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
			Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"app": app}}); err != nil {
			t.Fatal(err)
		}
	}
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	seal := func(id string) []byte {
		r, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: []byte("p")})
		if err != nil {
			t.Fatal(err)
		}
		return r.Ciphertext
	}
	pay, hr := seal("pay"), seal("hr")
	reader := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "reader"))
	mover := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "mover"))
	for _, tc := range []struct {
		name string
		c    kbv1.KeyBrokerClient
		ct   []byte
		dst  string
		want codes.Code
	}{
		{"Encrypt and Decrypt are not ReEncrypt", reader, pay, "pay2", codes.PermissionDenied},
		{"ReEncrypt on both keys", mover, pay, "pay2", codes.OK},
		{"ReEncrypt in place", mover, pay, "", codes.OK},
		{"not on the destination", mover, pay, "hr", codes.PermissionDenied},
		{"not on the source", mover, hr, "pay", codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tc.c.ReEncrypt(ctx, &kbv1.ReEncryptRequest{Ciphertext: tc.ct, DestinationKeyId: tc.dst})
			code(t, "ReEncrypt", err, tc.want)
			if err == nil {
				if d, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: r.Ciphertext}); err != nil || string(d.Plaintext) != "p" {
					t.Errorf("Decrypt(ReEncrypt) = %v, %v", d, err)
				}
			}
		})
	}
	_, err := mover.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: pay})
	code(t, "ReEncrypt does not grant Decrypt", err, codes.PermissionDenied)
	var allowed, denied int
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "ReEncrypt" {
			if r.Decision == "allow" {
				allowed++
			} else {
				denied++
			}
		}
	}
	// Two allowed lines per successful ReEncrypt (source, destination);
	// the mover's refusal on the destination follows an allowed source.
	if allowed != 5 || denied != 3 {
		t.Errorf("ReEncrypt audit lines: %d allowed, %d denied; want 5, 3", allowed, denied)
	}
}

// TestListKeysDecisionsRemembered: ListKeys is served the registry's cached
// keys, so a principal's second listing finds every DescribeKey decision
// in the decision cache and evaluates no policy.
func TestListKeysDecisionsRemembered(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	for i := range 5 {
		if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: fmt.Sprintf("listed-%d", i), Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
			Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
			t.Fatal(err)
		}
	}
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	list := func() {
		t.Helper()
		l, err := kb.ListKeys(ctx, &kbv1.ListKeysRequest{})
		if err != nil || len(l.GetKeys()) != 5 {
			t.Fatalf("ListKeys = %d keys, %v; want 5", len(l.GetKeys()), err)
		}
	}
	list()
	before := e.srv.KeyDecisionsMade()
	list()
	if got := e.srv.KeyDecisionsMade() - before; got != 0 {
		t.Errorf("second ListKeys evaluated %d policy decisions, want 0", got)
	}
}
