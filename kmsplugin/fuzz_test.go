package kmsplugin

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	kmsv2 "k8s.io/kms/apis/v2"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
)

// refusing is a KMS that knows the key's metadata and refuses to
// decrypt: the fuzz target checks what the plugin does before and
// around keybroker, not keybroker.
type refusing struct{ meta *kbv1.KeyMetadata }

func (r refusing) Encrypt(context.Context, string, []byte, map[string]string) (*client.Ciphertext, error) {
	return nil, status.Error(codes.Unavailable, "not here")
}

func (r refusing) Decrypt(context.Context, []byte, map[string]string) (*client.Plaintext, error) {
	return nil, status.Error(codes.InvalidArgument, "decryption failed")
}

func (r refusing) DescribeKey(context.Context, string) (*kbv1.KeyMetadata, error) { return r.meta, nil }

// FuzzDecrypt feeds arbitrary requests to Decrypt: every one must be
// answered with a gRPC error or a plaintext, never a panic, and a request
// over the API's limits must be InvalidArgument.
func FuzzDecrypt(f *testing.F) {
	meta := &kbv1.KeyMetadata{KeyId: "k8s", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE,
		State: kbv1.KeyState_KEY_STATE_ENABLED, PrimaryVersion: 1, CreatedAt: timestamppb.New(timestamppb.Now().AsTime()),
		Versions: []*kbv1.KeyVersion{{Version: 1, CreatedAt: timestamppb.Now()}}}
	// With a registry, so that the metrics' labels are exercised too.
	svc, err := New(refusing{meta}, Config{Key: "k8s", Registerer: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	good := KeyID(meta, 1)
	header := append([]byte{1, 3}, "k8s"...)
	header = append(header, 0, 0, 0, 1, 0, 60)
	f.Add(append(header, make([]byte, 60+12+16+32)...), good, FormatAnnotation, []byte(FormatVersion))
	f.Add([]byte{1}, good, "format.keybroker.dev", []byte("1"))
	f.Add([]byte("k8s:enc:kms:v2:x"), "", "a", []byte{})
	f.Add(make([]byte, 1025), good, "x.y", []byte("2"))
	f.Fuzz(func(t *testing.T, ct []byte, keyID, annKey string, annVal []byte) {
		// The caller's strings go everywhere a uid goes too.
		req := &kmsv2.DecryptRequest{Ciphertext: ct, KeyId: keyID, Uid: keyID, Annotations: map[string][]byte{annKey: annVal}}
		resp, err := svc.Decrypt(t.Context(), req)
		if err == nil {
			t.Fatalf("Decrypt(%x) = %x with a KMS that decrypts nothing", ct, resp.GetPlaintext())
		}
		if _, ok := status.FromError(err); !ok {
			t.Fatalf("Decrypt error %v is not a gRPC status", err)
		}
		if (len(ct) == 0 || len(ct) > MaxCiphertext || keyID == "" || len(keyID) > MaxKeyID) && status.Code(err) != codes.InvalidArgument {
			t.Fatalf("Decrypt of a request over the limits = %v, want InvalidArgument", err)
		}
	})
}
