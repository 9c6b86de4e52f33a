package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/sealed"
)

// TestEdgeScopedAccessKeys: a client's key scoped to edge-us is refused by
// the central tier's own AWS listener as an unknown key (an edge that holds
// its signing keys cannot use them there); edge-us alone is given its
// signing key, sealed to it, for a day within the clock skew; another
// edge, a key not scoped to edge-us, a revoked key and a day to come are
// refused, and the refusals audited. An admin's key cannot be scoped.
func TestEdgeScopedAccessKeys(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops, scoped, plain := edgeKeys(t, e)
	if got := scoped.GetEdges(); len(got) != 1 || got[0] != "edge-us" {
		t.Errorf("CreateAccessKey's edges = %q, want [edge-us]", got)
	}
	if _, err := ops.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: "admin/ops", Edges: []string{"edge-us"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("an edge-scoped admin key: %v, want InvalidArgument", err)
	}

	url := serveAWS(t, e)
	_, err := kmsClient(url, scoped).Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("demo"), Plaintext: []byte("x")})
	if !isAWSError(err, "UnrecognizedClientException") {
		t.Errorf("the edge-scoped key at the central tier's listener: %v, want UnrecognizedClientException", err)
	}
	if _, err := kmsClient(url, plain).Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("demo"), Plaintext: []byte("x")}); err != nil {
		t.Errorf("the unscoped key at the central tier's listener: %v", err)
	}

	e.enroll(t, "edge-us", "us", nil)
	e.enroll(t, "edge-eu", "eu", nil)
	us, _, err := e.register(t, "edge-us", "")
	if err != nil {
		t.Fatal(err)
	}
	eu, _, err := e.register(t, "edge-eu", "")
	if err != nil {
		t.Fatal(err)
	}
	today := time.Now().UTC().Format("20060102")
	ask := func(te *testEdge, id, date string) (*kbv1.EdgeSigningKeyResponse, error) {
		return te.sync.SigningKey(ctx, &kbv1.EdgeSigningKeyRequest{AccessKeyId: id, Date: date, Region: "eu-west-1", Service: "kms"})
	}
	got, err := ask(us, scoped.GetAccessKeyId(), today)
	if err != nil {
		t.Fatal(err)
	}
	scope := sealed.SigningScope{AccessKeyID: scoped.GetAccessKeyId(), Date: today, Region: "eu-west-1", Service: "kms"}
	key, err := sealed.OpenSigningKey(us.sk, got.GetSealedSigningKey(), "edge-us", scope)
	if err != nil {
		t.Fatal(err)
	}
	if want := sigv4.DeriveSigningKey([]byte(scoped.GetSecretAccessKey()), today, "eu-west-1", "kms"); !bytes.Equal(key.Reveal(), want) {
		t.Error("the sealed signing key is not the access key's signing key for the scope")
	}
	if got.GetPrincipal() != "spiffe://kb.test/client/billing" {
		t.Errorf("principal = %q", got.GetPrincipal())
	}
	if bytes.Contains(got.GetSealedSigningKey(), []byte(scoped.GetSecretAccessKey())) {
		t.Error("the answer carries the secret")
	}
	if _, err := sealed.OpenSigningKey(eu.sk, got.GetSealedSigningKey(), "edge-eu", scope); !errors.Is(err, sealed.ErrOpen) {
		t.Errorf("another edge opened the sealed signing key: %v", err)
	}
	for _, tc := range []struct {
		name string
		te   *testEdge
		id   string
		date string
		want codes.Code
	}{
		{"another edge", eu, scoped.GetAccessKeyId(), today, codes.PermissionDenied},
		{"a key scoped to no edge", us, plain.GetAccessKeyId(), today, codes.PermissionDenied},
		{"an unknown key", us, "KBAKAAAAAAAAAAAAAAAA", today, codes.NotFound},
		{"three days on", us, scoped.GetAccessKeyId(), time.Now().UTC().Add(72 * time.Hour).Format("20060102"), codes.InvalidArgument},
		{"not a date", us, scoped.GetAccessKeyId(), "2026-12-07", codes.InvalidArgument},
	} {
		if _, err := ask(tc.te, tc.id, tc.date); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := us.sync.SigningKey(ctx, &kbv1.EdgeSigningKeyRequest{AccessKeyId: scoped.GetAccessKeyId(), Date: today, Region: "eu-west-1", Service: "s3"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("another service: %v, want InvalidArgument", err)
	}
	client := kbv1.NewEdgeSyncClient(e.conn(t, identity.Client, "billing"))
	if _, err := client.SigningKey(ctx, &kbv1.EdgeSigningKeyRequest{AccessKeyId: scoped.GetAccessKeyId(), Date: today, Region: "eu-west-1", Service: "kms"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a client asking: %v, want PermissionDenied", err)
	}
	if _, err := ops.RevokeAccessKey(ctx, &kbv1.AccessKeyRequest{AccessKeyId: scoped.GetAccessKeyId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := ask(us, scoped.GetAccessKeyId(), today); status.Code(err) != codes.NotFound {
		t.Errorf("a revoked key: %v, want NotFound", err)
	}
	e.audit.Sync()
	var denied, allowed int
	for _, l := range auditLines(t, e.auditPath) {
		if l.Operation != "EdgeSigningKey" {
			continue
		}
		switch {
		case l.Decision == "allow" && l.Principal == "spiffe://kb.test/edge/edge-us":
			allowed++
		case l.Decision == "deny" && l.PolicyID == "access-key-scope":
			denied++
		}
	}
	if allowed != 1 || denied != 2 {
		t.Errorf("audit: %d EdgeSigningKey allowed, %d denied for scope; want 1 and 2", allowed, denied)
	}
}

// TestForwardAWS: an edge relays a signed AWS request to the central tier,
// which verifies it as its own listener would but accepts a key scoped to
// that edge; the signature runs once (a replay is refused), an altered
// request fails its signature without spending it, a key scoped to another
// edge is unknown there, and a request signed with a key scoped to no edge
// is relayed by any edge the policy lets relay (Forward, default deny; an
// admin's request only by an edge allowed admin relays), a refusal being
// audited and leaving the signature unspent.
func TestForwardAWS(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops, scoped, plain := edgeKeys(t, e)
	front := newAWSFront(t, e).(*awsjson.Server)
	creds := awsjson.NewCached(e.svc, 100)
	defer creds.Close()
	us := e.registerEdge(t, "edge-us")
	eu := e.registerEdge(t, "edge-eu")
	if _, err := us.ForwardAWS(ctx, &kbv1.ForwardAWSRequest{Front: "aws_kms", Method: "POST", Uri: "/"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a relay before the front-ends are set: %v, want FailedPrecondition", err)
	}
	e.srv.SetAWSFronts(AWSFronts{Fronts: map[string]AWSFront{"aws_kms": front}, Via: creds.Via})

	body := []byte(`{"KeyId":"alias/demo","Plaintext":"aGVsbG8="}`)
	signed := relayOf(awsRequest(t, "POST", "TrentService.Encrypt", awsjson.ContentType, body, scoped.GetAccessKeyId(), scoped.GetSecretAccessKey()), body)
	altered := relayOf(awsRequest(t, "POST", "TrentService.Encrypt", awsjson.ContentType, body, scoped.GetAccessKeyId(), scoped.GetSecretAccessKey()), body)
	altered.Body = []byte(`{"KeyId":"alias/demo","Plaintext":"Zm9yZ2Vk"}`)
	if typ := relayType(t, eu, signed); typ != "UnrecognizedClientException" {
		t.Errorf("edge-eu relaying a key scoped to edge-us: %s, want UnrecognizedClientException", typ)
	}
	if typ := relayType(t, us, altered); typ != "InvalidSignatureException" {
		t.Errorf("an altered body: %s, want InvalidSignatureException", typ)
	}
	out, err := us.ForwardAWS(ctx, signed)
	if err != nil || out.GetStatus() != http.StatusOK {
		t.Fatalf("relaying a signed Encrypt: %v, %v", out, err)
	}
	var enc struct {
		CiphertextBlob []byte
		KeyId          string
	}
	if err := json.Unmarshal(out.GetBody(), &enc); err != nil || enc.KeyId != "arn:aws:kms:eu-west-1:111122223333:key/demo" {
		t.Fatalf("the relayed answer: %s, %v", out.GetBody(), err)
	}
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "billing"))
	if d, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.CiphertextBlob}); err != nil || string(d.GetPlaintext()) != "hello" {
		t.Errorf("the relayed blob over gRPC: %v, %v", d, err)
	}
	if typ := relayType(t, us, signed); typ != "InvalidSignatureException" {
		t.Errorf("a replayed relay: %s, want InvalidSignatureException", typ)
	}
	// The edge's right to relay is the policy's: edge-barred may not
	// relay, and a refusal does not spend the signature; admins' requests
	// only edge-ops may relay.
	barred := e.registerEdge(t, "edge-barred")
	plainReq := relayOf(awsRequest(t, "POST", "TrentService.Encrypt", awsjson.ContentType, body, plain.GetAccessKeyId(), plain.GetSecretAccessKey()), body)
	if typ := relayType(t, barred, plainReq); typ != "AccessDeniedException" {
		t.Errorf("a relay by an edge the policy bars: %s, want AccessDeniedException", typ)
	}
	if out, err := eu.ForwardAWS(ctx, plainReq); err != nil || out.GetStatus() != http.StatusOK {
		t.Errorf("relaying a key scoped to no edge (after a refused relay of the same request): %v, %v", out, err)
	}
	adminKey := ops.accessKey("admin/ops")
	adminReq := relayOf(awsRequest(t, "POST", "TrentService.Encrypt", awsjson.ContentType, body, adminKey.GetAccessKeyId(), adminKey.GetSecretAccessKey()), body)
	if typ := relayType(t, eu, adminReq); typ != "AccessDeniedException" {
		t.Errorf("an admin's request relayed by an edge allowed client relays only: %s, want AccessDeniedException", typ)
	}
	if typ := relayType(t, e.registerEdge(t, "edge-ops"), adminReq); typ != "OK" {
		t.Errorf("an admin's request relayed by edge-ops: %s, want OK", typ)
	}
	e.audit.Sync()
	refusals := 0
	for _, l := range auditLines(t, e.auditPath) {
		if l.Operation == "ForwardAWS" && l.Decision == "deny" && (l.Principal == "spiffe://kb.test/edge/edge-barred" || l.Principal == "spiffe://kb.test/edge/edge-eu") {
			refusals++
		}
	}
	if refusals != 2 {
		t.Errorf("%d refused relays audited with the edge as the actor, want 2", refusals)
	}
	client := kbv1.NewEdgeSyncClient(e.conn(t, identity.Client, "billing"))
	if _, err := client.ForwardAWS(ctx, relayOf(awsRequest(t, "POST", "TrentService.Encrypt", awsjson.ContentType, body, plain.GetAccessKeyId(), plain.GetSecretAccessKey()), body)); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a client relaying: %v, want PermissionDenied", err)
	}
	big := relayOf(awsRequest(t, "POST", "TrentService.Encrypt", awsjson.ContentType, body, plain.GetAccessKeyId(), plain.GetSecretAccessKey()), body)
	big.Body = bytes.Repeat([]byte("a"), maxRelayedBody+1)
	if _, err := us.ForwardAWS(ctx, big); status.Code(err) != codes.InvalidArgument {
		t.Errorf("an oversized relay: %v, want InvalidArgument", err)
	}
	if _, err := us.ForwardAWS(ctx, &kbv1.ForwardAWSRequest{Front: "s3", Method: "POST", Uri: "/"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("an unknown front-end: %v, want FailedPrecondition", err)
	}
	for _, uri := range []string{"http://evil.example/", "//evil.example/x", "\x00"} {
		bad := &kbv1.ForwardAWSRequest{Front: "aws_kms", Method: "POST", Uri: uri}
		if _, err := us.ForwardAWS(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("URI %q: %v, want InvalidArgument", uri, err)
		}
	}
}

// edgeKeys makes key demo (app=billing) and two access keys of
// client/billing: scoped to edge-us, and to no edge.
func edgeKeys(t *testing.T, e *testEnv) (ops opsAdmin, scoped, plain *kbv1.AccessKey) {
	t.Helper()
	ops = asOps(t, e)
	ops.createKey("demo", kbv1.KeyType_KEY_TYPE_AES_256_GCM, map[string]string{"app": "billing"})
	return ops, ops.accessKey("client/billing", "edge-us"), ops.accessKey("client/billing")
}

// relayOf is what an edge relays of r.
func relayOf(r *http.Request, body []byte) *kbv1.ForwardAWSRequest {
	out := &kbv1.ForwardAWSRequest{Front: "aws_kms", Method: r.Method, Uri: r.URL.RequestURI(), Host: r.Host, Body: body}
	for name, values := range r.Header {
		out.Headers = append(out.Headers, &kbv1.HTTPHeader{Name: name, Values: values})
	}
	return out
}

// relayType relays r through edge and returns the AWS error type answered.
func relayType(t *testing.T, edge kbv1.EdgeSyncClient, r *kbv1.ForwardAWSRequest) string {
	t.Helper()
	out, err := edge.ForwardAWS(t.Context(), r)
	if err != nil {
		t.Fatalf("ForwardAWS: %v", err)
	}
	var e struct {
		Type string `json:"__type"`
	}
	_ = json.NewDecoder(io.NopCloser(bytes.NewReader(out.GetBody()))).Decode(&e)
	if out.GetStatus() == http.StatusOK {
		return "OK"
	}
	return e.Type
}

// isAWSError says whether err is the AWS SDK's error of type code.
func isAWSError(err error, code string) bool {
	return err != nil && strings.Contains(err.Error(), code)
}

// TestWatchReportsAccessKeyChanges: revoking an access key reaches the
// edges over Watch as the key's id — what the edge forgets its signing
// keys by — and nothing of the record; a stream that resumes from before
// the revocation hears it too. An edge hears only of keys scoped to it:
// the revocation of a key scoped to no edge, made first, never reaches it
// (the first change it hears is the scoped key's).
func TestWatchReportsAccessKeyChanges(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops, scoped, plain := edgeKeys(t, e)
	e.enroll(t, "edge-us", "us", nil)
	us, _, err := e.register(t, "edge-us", "")
	if err != nil {
		t.Fatal(err)
	}
	before := e.svc.Registry().Store().Revision()
	stream, err := us.sync.Watch(ctx, &kbv1.WatchRequest{FromRevision: before})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []*kbv1.AccessKey{plain, scoped} {
		if _, err := ops.RevokeAccessKey(ctx, &kbv1.AccessKeyRequest{AccessKeyId: k.GetAccessKeyId()}); err != nil {
			t.Fatal(err)
		}
	}
	heard := func(stream kbv1.EdgeSync_WatchClient) {
		t.Helper()
		for {
			ev, err := stream.Recv()
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			if ev.GetSnapshot() != nil {
				t.Fatal("a snapshot, want a replay")
			}
			if id := ev.GetAccessKeyChanged(); id != "" {
				if id != scoped.GetAccessKeyId() {
					t.Fatalf("access key changed: %q, want %q", id, scoped.GetAccessKeyId())
				}
				if ev.GetRevision() <= before {
					t.Fatalf("the change at revision %d, before the revocation", ev.GetRevision())
				}
				return
			}
		}
	}
	heard(stream)
	again, err := us.sync.Watch(ctx, &kbv1.WatchRequest{FromRevision: before})
	if err != nil {
		t.Fatal(err)
	}
	heard(again)
}
