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

// awsDev is a dev cluster serving the AWS KMS API, with key aws-demo
// placed everywhere and an access key for client/demo scoped to edge-us
// and one scoped to no edge, and an SDK client maker.
type awsDev struct {
	c           *devcluster.Cluster
	scoped, all *kbv1.AccessKey
	pool        *x509.CertPool
}

func (d *awsDev) client(addr string, k *kbv1.AccessKey) *kms.Client {
	return kms.New(kms.Options{Region: devcluster.DefaultAWSRegion, BaseEndpoint: aws.String("https://" + addr), RetryMaxAttempts: 1,
		HTTPClient:  &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: d.pool}, MaxIdleConnsPerHost: 64}},
		Credentials: credentials.NewStaticCredentialsProvider(k.GetAccessKeyId(), k.GetSecretAccessKey(), "")})
}

func (d *awsDev) edgeAddr(name string) string {
	for i, e := range d.c.EdgeSpecs() {
		if e.Name == name {
			return d.c.Edges[i].AWSAddr()
		}
	}
	return ""
}

func startAWSDev(tb testing.TB) *awsDev {
	tb.Helper()
	c, err := devcluster.Start(context.Background(), devcluster.Options{Dir: tb.TempDir(), AWS: &devcluster.AWSOptions{}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Shutdown(ctx)
	})
	ctx := context.Background()
	tlsCfg, err := c.ClientTLS(identity.Admin, "dev")
	if err != nil {
		tb.Fatal(err)
	}
	cc, err := grpc.NewClient(c.Central.Addr(), grpc.WithTransportCredentials(grpccreds.NewTLS(tlsCfg)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cc.Close() })
	admin := kbv1.NewKeyAdminClient(cc)
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "aws-demo", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"app": "demo"}, Placement: "true"}); err != nil {
		tb.Fatal(err)
	}
	d := &awsDev{c: c, pool: x509.NewCertPool()}
	if d.scoped, err = admin.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: "client/demo", Edges: []string{"edge-us"}}); err != nil {
		tb.Fatal(err)
	}
	if d.all, err = admin.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: "client/demo"}); err != nil {
		tb.Fatal(err)
	}
	if err := c.WaitSynced(ctx); err != nil {
		tb.Fatal(err)
	}
	caPEM, err := os.ReadFile(c.CAFile())
	if err != nil {
		tb.Fatal(err)
	}
	d.pool.AppendCertsFromPEM(caPEM)
	return d
}

// BenchmarkAWSEncrypt: AWS KMS Encrypt of 1 KiB with the unmodified SDK,
// 16 callers: at an edge that verifies the key and serves it from what it
// holds; at an edge that relays it (a key scoped to no edge); and at the
// central node's own listener.
func BenchmarkAWSEncrypt(b *testing.B) {
	d := startAWSDev(b)
	pt := make([]byte, 1024)
	for _, tc := range []struct {
		name string
		addr string
		key  *kbv1.AccessKey
	}{
		{"edge-local", d.edgeAddr("edge-us"), d.scoped},
		{"edge-relayed", d.edgeAddr("edge-us"), d.all},
		{"central", d.c.Central.AWSAddr(), d.all},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cl := d.client(tc.addr, tc.key)
			if _, err := cl.Encrypt(b.Context(), &kms.EncryptInput{KeyId: aws.String("aws-demo"), Plaintext: pt}); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(8) // 8 × GOMAXPROCS callers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := cl.Encrypt(context.Background(), &kms.EncryptInput{KeyId: aws.String("aws-demo"), Plaintext: pt}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// TestDevAWSAtEdges: with AWS on, a dev cluster's edges serve the AWS KMS
// API; the unmodified SDK, with a key scoped to edge-us, encrypts and
// decrypts there with a key placed everywhere; at edge-eu that access key
// is unknown (edge-eu relays it, and the central tier accepts it only
// through edge-us), and an access key scoped to no edge opens the blob
// there (relayed).
func TestDevAWSAtEdges(t *testing.T) {
	d := startAWSDev(t)
	ctx := t.Context()
	at := func(addr string) *kms.Client { return d.client(addr, d.scoped) }
	us, eu := d.edgeAddr("edge-us"), d.edgeAddr("edge-eu")
	if us == "" || eu == "" || d.c.Central.AWSAddr() == "" {
		t.Fatalf("AWS addresses: edge-us %q, edge-eu %q, central %q", us, eu, d.c.Central.AWSAddr())
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
	if dec, err := d.client(eu, d.all).Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || string(dec.Plaintext) != "dev" {
		t.Errorf("Decrypt at edge-eu with a key scoped to no edge (relayed) = %v, %v", dec, err)
	}
}
