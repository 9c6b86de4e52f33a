package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestAWSAtAnEdge: a real central and a real edge, both serving aws_kms
// and xks. Through the edge, the unmodified AWS SDK with an access key
// scoped to it encrypts and decrypts with a key placed there — served by
// the edge, the central tier audits no such call — and with a key not
// placed there (relayed to the central tier as signed, audited there via
// the edge); an admin's key, scoped to no edge, is relayed too. A blob
// made at the edge opens at the central tier over gRPC and over its own
// AWS listener (with a key the central verifies), which refuses the edge's
// key. An admin key cannot be scoped to an edge. Revoking the edge's key
// reaches the edge over Watch: refused once the edge has applied it. XKS at the edge: a
// round trip and the health probe.
func TestAWSAtAnEdge(t *testing.T) {
	centralAWS, centralXKS, edgeAWS, edgeXKS := framework.FreeAddr(t), framework.FreeAddr(t), framework.FreeAddr(t), framework.FreeAddr(t)
	blocks := func(aws, xks string) string {
		return "aws_kms: {listen: \"" + aws + "\", region: eu-west-1, account: \"111122223333\"}\n" +
			"xks: {listen: \"" + xks + "\", region: eu-west-1, prefix: /kb/xks, health_key: placed}\n"
	}
	c := framework.NewProcessesOn(t, framework.SoftkmsRoots, framework.BasicRoots, blocks(centralAWS, centralXKS))
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "placed", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner, Placement: "true"},
		{KeyId: "unplaced", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner},
		{KeyId: "admins", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Placement: "true"},
	} {
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.AddEdge(t, &framework.EdgeNode{Name: "edge-us", Region: "us", Prefetch: true, Staleness: time.Hour, Extra: blocks(edgeAWS, edgeXKS)})
	c.WaitApplied(t, rev)

	accessKey := func(args ...string) framework.AccessKey {
		t.Helper()
		out, stderr, code := c.CLIOut(t, c.Central.Addr, identity.Admin, "ops", append([]string{"access-key", "create", "--output", "json"}, args...)...)
		if code != 0 {
			t.Fatalf("access-key create %q: exit %d: %s", args, code, stderr)
		}
		var k framework.AccessKey
		must(t, "decoding the access key", json.Unmarshal([]byte(out), &k))
		return k
	}
	scoped := accessKey("--principal", "client/app", "--edge", "edge-us")
	plain := accessKey("--principal", "client/app")
	admin := accessKey("--principal", "admin/ops")
	if _, stderr, code := c.CLIOut(t, c.Central.Addr, identity.Admin, "ops", "access-key", "create", "--principal", "admin/ops", "--edge", "edge-us"); code == 0 {
		t.Errorf("an edge-scoped admin key was made")
	} else if !bytes.Contains([]byte(stderr), []byte("only a client")) {
		t.Errorf("an edge-scoped admin key: %s, want the reason", stderr)
	}

	hc := c.AWSHTTPClient(t)
	kmsAt := func(addr string, k framework.AccessKey) *kms.Client {
		return framework.KMSClient("https://"+addr, k, hc, func(o *kms.Options) { o.RetryMaxAttempts = 1 })
	}
	atEdge := kmsAt(edgeAWS, scoped)
	ectx := map[string]string{"tenant": "7"}
	relayed := func(key, principal string) int {
		return len(c.AuditRecords(t, func(r audit.Record) bool {
			return r.Via == "edge-us" && r.Key == key && r.Principal == "spiffe://"+framework.TrustDomain+"/"+principal && r.Outcome == "ok"
		}))
	}

	blobs := map[string][]byte{}
	for _, key := range []string{"placed", "unplaced"} {
		enc, err := atEdge.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/" + key), Plaintext: []byte("at the edge"), EncryptionContext: ectx})
		if err != nil {
			t.Fatalf("Encrypt %s at the edge: %v", key, err)
		}
		dec, err := atEdge.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ectx})
		if err != nil || string(dec.Plaintext) != "at the edge" || aws.ToString(dec.KeyId) != "arn:aws:kms:eu-west-1:111122223333:key/"+key {
			t.Fatalf("Decrypt %s at the edge = %v, %v", key, dec, err)
		}
		blobs[key] = enc.CiphertextBlob
	}
	if n := relayed("placed", "client/app"); n != 0 {
		t.Errorf("the central tier audited %d calls on the placed key relayed by the edge; want none (served there)", n)
	}
	if n := relayed("unplaced", "client/app"); n != 2 {
		t.Errorf("the central tier audited %d relayed calls on the unplaced key; want Encrypt and Decrypt", n)
	}
	if _, err := kmsAt(edgeAWS, admin).Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("admins"), Plaintext: []byte("x")}); err != nil {
		t.Errorf("an admin's key through the edge: %v", err)
	}
	if n := relayed("admins", "admin/ops"); n != 1 {
		t.Errorf("the admin's call was audited %d times at the central tier via the edge; want once (relayed)", n)
	}

	kb := c.Dial(t, c.Central.Addr, identity.Client, "app")
	if d, err := kb.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: blobs["placed"], EncryptionContext: ectx}); err != nil || string(d.GetPlaintext()) != "at the edge" {
		t.Errorf("the edge's blob over gRPC at the central tier: %v, %v", d, err)
	}
	if d, err := kmsAt(centralAWS, plain).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: blobs["placed"], EncryptionContext: ectx}); err != nil || string(d.Plaintext) != "at the edge" {
		t.Errorf("the edge's blob through the central tier's AWS API: %v, %v", d, err)
	}
	var apiErr smithy.APIError
	if _, err := kmsAt(centralAWS, scoped).DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("placed")}); !errors.As(err, &apiErr) || apiErr.ErrorCode() != "UnrecognizedClientException" {
		t.Errorf("the edge-scoped key at the central tier's listener: %v, want UnrecognizedClientException", err)
	}

	t.Run("XKS at the edge", func(t *testing.T) {
		post := framework.XKSPoster(t, hc, "https://"+edgeXKS+"/kb/xks", scoped)
		md := map[string]any{"kmsRequestId": "edge-1", "kmsOperation": "Encrypt", "awsPrincipalArn": "arn:aws:iam::111122223333:root",
			"kmsKeyArn": "arn:aws:kms:eu-west-1:111122223333:key/x"}
		xksRoundTrip(t, post, md, "placed", "xks at the edge")
		if n := relayed("placed", "client/app"); n != 0 {
			t.Errorf("the central tier audited %d XKS calls on the placed key; want none (served at the edge)", n)
		}
		xksHealthy(t, post, "edge-h")
	})

	// Revocation reaches the edge over its Watch stream: once the edge has
	// applied a revision past the revocation (a key created after it),
	// its next request with the key is refused — within the 30 s the
	// edge would otherwise keep the signing key it has just used.
	if _, err := atEdge.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("placed")}); err != nil {
		t.Fatalf("the scoped key before its revocation: %v", err)
	}
	if _, _, code := c.CLIOut(t, c.Central.Addr, identity.Admin, "ops", "access-key", "revoke", scoped.ID); code != 0 {
		t.Fatal("access-key revoke failed")
	}
	after, err := c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "after-revocation", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner})
	must(t, "CreateKey after-revocation", err)
	c.WaitApplied(t, after.GetRevision())
	_, err = atEdge.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("placed")})
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "UnrecognizedClientException" {
		t.Fatalf("a revoked key at the edge that applied its revocation: %v, want UnrecognizedClientException", err)
	}
}
