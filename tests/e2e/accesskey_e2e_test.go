package e2e

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"

	"github.com/keybroker/keybroker/accesskey"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestAccessKeyCLI: an operator makes an access key with the CLI against
// a real central process (its secret printed once, as env lines), lists
// it without the secret, and revokes it; a client cannot make one.
func TestAccessKeyCLI(t *testing.T) {
	c := framework.NewProcessesOn(t, framework.SoftkmsRoots, framework.BasicRoots, "")
	addr := c.Central.Addr
	out, stderr, code := c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "create", "--principal", "client/app", "--env")
	if code != 0 {
		t.Fatalf("access-key create: exit %d: %s", code, stderr)
	}
	var id, secret string
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "AWS_ACCESS_KEY_ID="); ok {
			id = v
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "AWS_SECRET_ACCESS_KEY="); ok {
			secret = v
		}
	}
	if !accesskey.ValidID(id) || len(secret) != accesskey.SecretSize {
		t.Fatalf("access-key create --env printed %q", out)
	}
	out, stderr, code = c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "list", "--output", "json")
	if code != 0 || strings.Contains(out, secret) {
		t.Fatalf("access-key list: exit %d, %s; the secret is listed: %v", code, stderr, strings.Contains(out, secret))
	}
	var listed struct {
		ID        string `json:"access_key_id"`
		Principal string `json:"principal"`
		State     string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil || listed.ID != id || listed.State != "active" ||
		listed.Principal != "spiffe://"+framework.TrustDomain+"/client/app" {
		t.Fatalf("access-key list = %q (%v)", out, err)
	}
	if _, _, code := c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "revoke", id); code != 0 {
		t.Fatalf("access-key revoke: exit %d", code)
	}
	out, _, _ = c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "list", "--output", "json")
	if !strings.Contains(out, `"state":"revoked"`) {
		t.Errorf("after revoke, list = %s", out)
	}
	if _, stderr, code := c.CLIOut(t, addr, identity.Client, "app", "access-key", "create", "--principal", "admin/ops"); code == 0 || !strings.Contains(strings.ToLower(stderr), "denied") {
		t.Errorf("a client making an access key for admin/ops: exit %d, %s", code, stderr)
	}
}

// TestAWSKMSAPIProcess: a central process configured with aws_kms serves
// the AWS KMS API over HTTPS with its own certificate; the AWS SDK's KMS
// client, trusting the cluster's CA and signing with an access key made by
// the CLI, encrypts and decrypts; a revoked key is refused at once.
func TestAWSKMSAPIProcess(t *testing.T) {
	f := framework.StartAWSFront(t)
	ctx := t.Context()
	client := framework.KMSClient(f.KMSURL, f.Key, f.HTTP)
	enc, err := client.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/demo"), Plaintext: []byte("over https"),
		EncryptionContext: map[string]string{"purpose": "test"}})
	if err != nil {
		t.Fatalf("Encrypt through the AWS API of a central process: %v", err)
	}
	dec, err := client.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob, EncryptionContext: map[string]string{"purpose": "test"}})
	if err != nil || string(dec.Plaintext) != "over https" || aws.ToString(dec.KeyId) != "arn:aws:kms:eu-west-1:111122223333:key/demo" {
		t.Fatalf("Decrypt = %v, %v", dec, err)
	}
	if n := f.MetricAt(t, f.Central.OpsAddr, "keybroker_front_requests_total", `code="200",front="aws_kms"`); n < 2 {
		t.Errorf("keybroker_front_requests_total{front=\"aws_kms\",code=\"200\"} = %v after two calls", n)
	}
	if _, _, code := f.CLIOut(t, f.Central.Addr, identity.Admin, "ops", "access-key", "revoke", f.Key.ID); code != 0 {
		t.Fatal("access-key revoke failed")
	}
	var apiErr smithy.APIError
	if _, err := client.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("demo")}); !errors.As(err, &apiErr) || apiErr.ErrorCode() != "UnrecognizedClientException" {
		t.Errorf("a revoked key at the central that revoked it: %v, want UnrecognizedClientException", err)
	}
}
