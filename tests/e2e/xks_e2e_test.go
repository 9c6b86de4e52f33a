package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// TestXKSProcess: a central process configured with xks serves the XKS
// proxy API over HTTPS with its own certificate; requests signed by
// aws-sdk-go-v2's SigV4 signer (service kms-xks-proxy) with an access key
// made by the CLI get the key's metadata, encrypt and decrypt, and a deep
// health check answers ACTIVE; a path outside the prefix is
// InvalidUriPathException.
func TestXKSProcess(t *testing.T) {
	_, addr, key, hc := awsFrontCentral(t, func(addr string) string {
		return "xks: {listen: \"" + addr + "\", region: eu-west-1, prefix: /kb/xks, health_key: demo}\n"
	})
	ctx := t.Context()
	post := func(path string, req any) (int, map[string]any) {
		t.Helper()
		body, _ := json.Marshal(req)
		r, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		sum := sha256.Sum256(body)
		if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: key.ID, SecretAccessKey: key.Secret}, r, hex.EncodeToString(sum[:]), "kms-xks-proxy", "eu-west-1", time.Now()); err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("%s: %d %q is not JSON", path, resp.StatusCode, data)
		}
		return resp.StatusCode, m
	}
	md := map[string]any{"kmsRequestId": "e2e-1", "kmsOperation": "Encrypt", "awsPrincipalArn": "arn:aws:iam::111122223333:root",
		"kmsKeyArn": "arn:aws:kms:eu-west-1:111122223333:key/x"}
	if code, m := post("/kb/xks/kms/xks/v1/keys/demo/metadata", map[string]any{"requestMetadata": md}); code != 200 || m["keySpec"] != "AES_256" || m["keyStatus"] != "ENABLED" {
		t.Fatalf("metadata = %d %v", code, m)
	}
	code, enc := post("/kb/xks/kms/xks/v1/keys/demo/encrypt", map[string]any{"requestMetadata": md, "plaintext": []byte("over https"),
		"encryptionAlgorithm": "AES_GCM", "additionalAuthenticatedData": []byte("aad")})
	if code != 200 {
		t.Fatalf("encrypt = %d %v", code, enc)
	}
	code, dec := post("/kb/xks/kms/xks/v1/keys/demo/decrypt", map[string]any{"requestMetadata": md, "encryptionAlgorithm": "AES_GCM",
		"ciphertext": enc["ciphertext"], "initializationVector": enc["initializationVector"], "authenticationTag": enc["authenticationTag"],
		"ciphertextMetadata": enc["ciphertextMetadata"], "additionalAuthenticatedData": []byte("aad")})
	if code != 200 || dec["plaintext"] != "b3ZlciBodHRwcw==" {
		t.Fatalf("decrypt = %d %v", code, dec)
	}
	code, h := post("/kb/xks/kms/xks/v1/health", map[string]any{"requestMetadata": map[string]any{"kmsRequestId": "e2e-h", "kmsOperation": "KmsHealthCheck"}})
	fleet, _ := h["ekmFleetDetails"].([]any)
	if code != 200 || len(fleet) != 1 || fleet[0].(map[string]any)["healthStatus"] != "ACTIVE" {
		t.Errorf("health = %d %v", code, h)
	}
	if code, m := post("/kms/xks/v1/keys/demo/metadata", map[string]any{"requestMetadata": md}); code != 404 || m["errorName"] != "InvalidUriPathException" {
		t.Errorf("outside the prefix = %d %v, want 404 InvalidUriPathException", code, m)
	}
}
