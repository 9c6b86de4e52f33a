package awskms

import (
	"context"
	"crypto/sha256"
	"net/http"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// BenchmarkRawSDK is the ceiling BenchmarkBackend is measured against: the
// AWS SDK's kms.Client calling the same in-process fake directly, with the
// same keys, inputs and client settings as the backend (static credentials
// behind a credentials cache, the same HTTP transport and connection pool,
// the same retryer), and nothing of keybroker's: no input checks, rate
// limiter, attempt counting, metrics or error classification. The
// requests are built once. Sub-benchmarks have BenchmarkBackend's names,
// so the two runs line up:
//
//	go test -run '^$' -bench 'BenchmarkBackend|BenchmarkRawSDK' -benchtime 1s -count 5 ./backends/awskms/
func BenchmarkRawSDK(b *testing.B) {
	f, keys := fixture(b)
	api := rawClient(testConfig(f.URL()).withDefaults())
	// backendtest.Bench's inputs: 32 bytes of plaintext, the message as
	// aad, its SHA-256 as the digest.
	pt := make([]byte, 32)
	msg := []byte("keybroker/v1/material\x00bench\x00\x00\x00\x01")
	digest := sha256.Sum256(msg)
	enc := &kms.EncryptInput{KeyId: aws.String(keys.AES), Plaintext: pt, EncryptionContext: encryptionContext(msg),
		EncryptionAlgorithm: types.EncryptionAlgorithmSpecSymmetricDefault}
	mac := &kms.GenerateMacInput{KeyId: aws.String(keys.HMAC), Message: msg, MacAlgorithm: types.MacAlgorithmSpecHmacSha256}
	sign := &kms.SignInput{KeyId: aws.String(keys.ECDSA), Message: digest[:], MessageType: types.MessageTypeDigest,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256}
	ops := []struct {
		name string
		op   func(context.Context) error
	}{
		{"Encrypt32B", func(ctx context.Context) error { _, err := api.Encrypt(ctx, enc); return err }},
		{"MAC", func(ctx context.Context) error { _, err := api.GenerateMac(ctx, mac); return err }},
		{"Sign", func(ctx context.Context) error { _, err := api.Sign(ctx, sign); return err }},
	}
	for _, o := range ops {
		b.Run(o.name, func(b *testing.B) {
			if o.name == "Encrypt32B" {
				b.SetBytes(int64(len(pt)))
			}
			ctx := b.Context()
			for b.Loop() {
				if err := o.op(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(o.name+"Parallel", func(b *testing.B) {
			ctx := b.Context()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := o.op(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// rawClient builds the kms.Client New builds for cfg (cfg with its
// defaults), without the backend's middleware.
func rawClient(cfg Config) *kms.Client {
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = max(cfg.Burst, awshttp.DefaultHTTPTransportMaxIdleConnsPerHost)
		t.MaxIdleConns = max(cfg.Burst, awshttp.DefaultHTTPTransportMaxIdleConns)
	}).Freeze()
	return kms.New(kms.Options{
		Region:       cfg.Region,
		Credentials:  aws.NewCredentialsCache(cfg.Credentials),
		HTTPClient:   hc,
		Retryer:      newRetryer(cfg),
		BaseEndpoint: aws.String(cfg.Endpoint),
	})
}
