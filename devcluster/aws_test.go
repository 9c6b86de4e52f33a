package devcluster_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
)

// TestDevAWSAtEdges: with AWS on, a dev cluster's edges serve the AWS KMS
// API; the unmodified SDK, with a key scoped to edge-us, encrypts and
// decrypts there with a key placed everywhere; at edge-eu that access key
// is unknown (edge-eu relays it, and the central tier accepts it only
// through edge-us), and an access key scoped to no edge opens the blob
// there (relayed).
func TestDevAWSAtEdges(t *testing.T) {
	c, err := devcluster.Start(t.Context(), devcluster.Options{Dir: t.TempDir(), AWS: &devcluster.AWSOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Shutdown(ctx)
	})
	ctx := t.Context()
	tlsCfg, err := c.ClientTLS(identity.Admin, "dev")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(c.Central.Addr(), grpc.WithTransportCredentials(grpccreds.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	admin := kbv1.NewKeyAdminClient(cc)
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "aws-demo", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"app": "demo"}, Placement: "true"}); err != nil {
		t.Fatal(err)
	}
	key, err := admin.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: "client/demo", Edges: []string{"edge-us"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	plain, err := admin.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: "client/demo"})
	if err != nil {
		t.Fatal(err)
	}
	as := func(addr string, k *kbv1.AccessKey) *kms.Client {
		return kms.New(kms.Options{Region: devcluster.DefaultAWSRegion, BaseEndpoint: aws.String("https://" + addr), RetryMaxAttempts: 1,
			HTTPClient:  &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
			Credentials: credentials.NewStaticCredentialsProvider(k.GetAccessKeyId(), k.GetSecretAccessKey(), "")})
	}
	at := func(addr string) *kms.Client { return as(addr, key) }
	var us, eu string
	for i, e := range c.EdgeSpecs() {
		switch e.Name {
		case "edge-us":
			us = c.Edges[i].AWSAddr()
		case "edge-eu":
			eu = c.Edges[i].AWSAddr()
		}
	}
	if us == "" || eu == "" || c.Central.AWSAddr() == "" {
		t.Fatalf("AWS addresses: edge-us %q, edge-eu %q, central %q", us, eu, c.Central.AWSAddr())
	}
	enc, err := at(us).Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/aws-demo"), Plaintext: []byte("dev")})
	if err != nil {
		t.Fatalf("Encrypt at edge-us: %v", err)
	}
	if dec, err := at(us).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || string(dec.Plaintext) != "dev" {
		t.Fatalf("Decrypt at edge-us = %v, %v", dec, err)
	}
	if _, err := at(eu).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err == nil || !strings.Contains(err.Error(), "UnrecognizedClientException") {
		t.Errorf("the edge-us key at edge-eu: %v, want UnrecognizedClientException", err)
	}
	if dec, err := as(eu, plain).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || string(dec.Plaintext) != "dev" {
		t.Errorf("Decrypt at edge-eu with a key scoped to no edge (relayed) = %v, %v", dec, err)
	}
}
