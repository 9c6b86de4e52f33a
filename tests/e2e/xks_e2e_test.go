package e2e

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/tests/framework"
)

// TestXKSProcess: a central process configured with xks serves the XKS
// proxy API over HTTPS with its own certificate; requests signed by
// aws-sdk-go-v2's SigV4 signer (service kms-xks-proxy) with an access key
// made by the CLI get the key's metadata, encrypt and decrypt, and a deep
// health check answers ACTIVE; a path outside the prefix is
// InvalidUriPathException.
func TestXKSProcess(t *testing.T) {
	f := framework.StartAWSFront(t)
	post := framework.XKSPoster(t, f.HTTP, f.XKSURL, f.Key)
	md := map[string]any{"kmsRequestId": "e2e-1", "kmsOperation": "Encrypt", "awsPrincipalArn": "arn:aws:iam::111122223333:root",
		"kmsKeyArn": "arn:aws:kms:eu-west-1:111122223333:key/x"}
	if code, m := post("/kms/xks/v1/keys/demo/metadata", map[string]any{"requestMetadata": md}); code != 200 || m["keySpec"] != "AES_256" || m["keyStatus"] != "ENABLED" {
		t.Fatalf("metadata = %d %v", code, m)
	}
	xksRoundTrip(t, post, md, "demo", "over https")
	xksHealthy(t, post, "e2e-h")
	outside := framework.XKSPoster(t, f.HTTP, strings.TrimSuffix(f.XKSURL, "/kb/xks"), f.Key)
	if code, m := outside("/kms/xks/v1/keys/demo/metadata", map[string]any{"requestMetadata": md}); code != 404 || m["errorName"] != "InvalidUriPathException" {
		t.Errorf("outside the prefix = %d %v, want 404 InvalidUriPathException", code, m)
	}
}

// xksRoundTrip encrypts plaintext under key through post (an XKS proxy's,
// framework.XKSPoster) with md as the request metadata, then decrypts the
// answer, and fails t unless both answer 200 and plaintext comes back.
func xksRoundTrip(t *testing.T, post func(string, any) (int, map[string]any), md map[string]any, key, plaintext string) {
	t.Helper()
	code, enc := post("/kms/xks/v1/keys/"+key+"/encrypt", map[string]any{"requestMetadata": md, "plaintext": []byte(plaintext),
		"encryptionAlgorithm": "AES_GCM", "additionalAuthenticatedData": []byte("aad")})
	if code != 200 {
		t.Fatalf("encrypt = %d %v", code, enc)
	}
	code, dec := post("/kms/xks/v1/keys/"+key+"/decrypt", map[string]any{"requestMetadata": md, "encryptionAlgorithm": "AES_GCM",
		"ciphertext": enc["ciphertext"], "initializationVector": enc["initializationVector"], "authenticationTag": enc["authenticationTag"],
		"ciphertextMetadata": enc["ciphertextMetadata"], "additionalAuthenticatedData": []byte("aad")})
	if code != 200 || dec["plaintext"] != base64.StdEncoding.EncodeToString([]byte(plaintext)) {
		t.Fatalf("decrypt = %d %v, want %q back", code, dec, plaintext)
	}
}

// xksHealthy fails t unless the XKS proxy's deep health check, asked
// through post with request id, answers 200 and one ACTIVE fleet member.
func xksHealthy(t *testing.T, post func(string, any) (int, map[string]any), id string) {
	t.Helper()
	code, h := post("/kms/xks/v1/health", map[string]any{"requestMetadata": map[string]any{"kmsRequestId": id, "kmsOperation": "KmsHealthCheck"}})
	fleet, _ := h["ekmFleetDetails"].([]any)
	if code != 200 || len(fleet) != 1 || fleet[0].(map[string]any)["healthStatus"] != "ACTIVE" {
		t.Errorf("health = %d %v", code, h)
	}
}
