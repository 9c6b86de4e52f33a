package awsesdk

import (
	"bytes"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	mpl "github.com/aws/aws-cryptographic-material-providers-library/releases/go/mpl/awscryptographymaterialproviderssmithygenerated"
	mpltypes "github.com/aws/aws-cryptographic-material-providers-library/releases/go/mpl/awscryptographymaterialproviderssmithygeneratedtypes"
	esdk "github.com/aws/aws-encryption-sdk/releases/go/encryption-sdk/awscryptographyencryptionsdksmithygenerated"
	esdktypes "github.com/aws/aws-encryption-sdk/releases/go/encryption-sdk/awscryptographyencryptionsdksmithygeneratedtypes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestKMSKeyring: the AWS Encryption SDK's AWS KMS keyring, given an AWS
// SDK KMS client whose BaseEndpoint is a keybroker node's AWS KMS API —
// a central process's (an admin's access key) and an edge process's (a
// client's key scoped to that edge, the key placed there) — encrypts a
// message of several frames under a keybroker key's ARN and decrypts it;
// the SDK checks that every KeyId keybroker answers is that ARN.
// GenerateDataKey and Decrypt are audited under the access key's principal
// at the node that served them. The message does not decrypt with another
// encryption context, nor with a keyring for another keybroker key (the
// SDK finds no data key for it).
func TestKMSKeyring(t *testing.T) {
	f := framework.StartAWSFront(t)
	ctx := t.Context()
	if _, err := f.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "other", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"owner": framework.TrustDomain}, Placement: "true"}); err != nil {
		t.Fatal(err)
	}
	edgeURL, edgeKey := f.AddAWSEdge(t, "edge-us", "us")
	for _, at := range []struct {
		node, url, principal string
		key                  framework.AccessKey
	}{
		{framework.CentralNode, f.KMSURL, f.Admin.ID, f.Key},
		{"edge-us", edgeURL, "spiffe://" + framework.TrustDomain + "/client/app", edgeKey},
	} {
		t.Run(at.node, func(t *testing.T) {
			keyringRoundTrip(t, f, at.node, at.url, at.principal, at.key)
		})
	}
}

// keyringRoundTrip is TestKMSKeyring at one node.
func keyringRoundTrip(t *testing.T, f *framework.AWSFront, node, url, principal string, key framework.AccessKey) {
	ctx := t.Context()
	client := kms.New(kms.Options{Region: framework.AWSRegion, BaseEndpoint: aws.String(url),
		Credentials: credentials.NewStaticCredentialsProvider(key.ID, key.Secret, ""), HTTPClient: f.HTTP})
	matProv, err := mpl.NewClient(mpltypes.MaterialProvidersConfig{})
	if err != nil {
		t.Fatal(err)
	}
	keyringFor := func(id string) mpltypes.IKeyring {
		t.Helper()
		k, err := matProv.CreateAwsKmsKeyring(ctx, mpltypes.CreateAwsKmsKeyringInput{KmsClient: client, KmsKeyId: framework.KeyARN(id)})
		if err != nil {
			t.Fatalf("CreateAwsKmsKeyring(%s): %v", framework.KeyARN(id), err)
		}
		return k
	}
	keyring := keyringFor(framework.DemoKeyID)
	sdk, err := esdk.NewClient(esdktypes.AwsEncryptionSdkConfig{})
	if err != nil {
		t.Fatal(err)
	}

	pt := bytes.Repeat([]byte("through the AWS Encryption SDK "), 100)
	ec := map[string]string{"purpose": "esdk", "tenant": "a"}
	frame := int64(1024)
	enc, err := sdk.Encrypt(ctx, esdktypes.EncryptInput{Plaintext: pt, EncryptionContext: ec, Keyring: keyring, FrameLength: &frame})
	if err != nil {
		t.Fatalf("Encrypt through keybroker: %v", err)
	}
	if bytes.Contains(enc.Ciphertext, pt[:64]) {
		t.Fatal("the message holds the plaintext")
	}
	dec, err := sdk.Decrypt(ctx, esdktypes.DecryptInput{Ciphertext: enc.Ciphertext, EncryptionContext: ec, Keyring: keyring})
	if err != nil {
		t.Fatalf("Decrypt through keybroker: %v", err)
	}
	if !bytes.Equal(dec.Plaintext, pt) || dec.EncryptionContext["tenant"] != "a" {
		t.Errorf("Decrypt = %q under %v, want %q under %v", dec.Plaintext, dec.EncryptionContext, pt, ec)
	}
	ops := map[audit.Operation]int{}
	for _, r := range f.Audit(t, node, func(r audit.Record) bool {
		return r.Key == framework.DemoKeyID && r.Principal == principal && r.Outcome == "ok"
	}) {
		ops[r.Operation]++
	}
	if ops["GenerateDataKey"] != 1 || ops["Decrypt"] != 1 {
		t.Errorf("audited calls on %s by %s at %s: %v; want one GenerateDataKey and one Decrypt", framework.DemoKeyID, principal, node, ops)
	}

	if _, err := sdk.Decrypt(ctx, esdktypes.DecryptInput{Ciphertext: enc.Ciphertext, EncryptionContext: map[string]string{"purpose": "esdk", "tenant": "b"}, Keyring: keyring}); err == nil {
		t.Error("the message decrypted with tenant=b, encrypted with tenant=a")
	}
	if _, err := sdk.Decrypt(ctx, esdktypes.DecryptInput{Ciphertext: enc.Ciphertext, Keyring: keyringFor("other")}); err == nil {
		t.Error("the message decrypted with a keyring for another key")
	} else {
		t.Logf("with a keyring for another key: %v", err)
	}
}
