package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/tests/framework"
)

// reheader returns ct with its header naming key id at version instead.
func reheader(ct []byte, id string, version uint32) []byte {
	l := int(ct[1])
	out := append([]byte{ct[0], byte(len(id))}, id...)
	out = binary.BigEndian.AppendUint32(out, version)
	return append(out, ct[2+l+4:]...)
}

// flip returns a copy of b with the byte at i changed.
func flip(b []byte, i int) []byte {
	out := slices.Clone(b)
	out[i] ^= 0x01
	return out
}

// badInput sends the node malformed, tampered, foreign, oversized and
// ill-typed requests, each refused with its code and a message that says
// what was wrong; then checks that the node still answers and has not
// panicked.
func (m *matrix) badInput(t *testing.T, foreign map[string][]byte) {
	kb, admin := m.app.KB, m.admin
	ectx := opsContext("aes-derive")
	enc, err := kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "aes-derive", Plaintext: []byte("secret"), EncryptionContext: ectx})
	must(t, "Encrypt", err)
	ct := enc.Ciphertext
	wrappedAt := 1 + 1 + len("aes-derive") + 4 + 2 // the wrapped data key
	decrypt := func(ct []byte, ectx map[string]string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: ectx})
			return err
		}
	}
	encryptAs := func(r *framework.Conn, req *kbv1.EncryptRequest) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := r.KB.Encrypt(ctx, req)
			return err
		}
	}
	create := func(req *kbv1.CreateKeyRequest) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := admin.Admin.CreateKey(ctx, req)
			return err
		}
	}
	bigContext := map[string]string{}
	for i := range 65 {
		bigContext[fmt.Sprintf("k%d", i)] = "v"
	}
	items := func(n int) []*kbv1.EncryptRequest {
		out := make([]*kbv1.EncryptRequest, n)
		for i := range out {
			out[i] = &kbv1.EncryptRequest{KeyId: "aes-derive", Plaintext: []byte("x")}
		}
		return out
	}

	type badCase struct {
		name string
		call func(context.Context) error
		code codes.Code
		msg  string
	}
	cases := []badCase{
		// Ciphertexts that do not parse.
		{"empty ciphertext", decrypt(nil, ectx), codes.InvalidArgument, "empty"},
		{"ciphertext cut in the header", decrypt(ct[:5], ectx), codes.InvalidArgument, "truncated"},
		{"ciphertext cut in the wrapped key", decrypt(ct[:wrappedAt+10], ectx), codes.InvalidArgument, "truncated"},
		{"unknown format byte", decrypt(flip(ct, 0), ectx), codes.InvalidArgument, "unknown format byte 0x00"},
		{"header naming an invalid key id", decrypt(reheader(ct, "bad key!", 1), ectx), codes.InvalidArgument, "invalid key id"},
		// Ciphertexts that parse but do not open.
		{"ciphertext missing its last byte", decrypt(ct[:len(ct)-1], ectx), codes.InvalidArgument, "decryption failed"},
		{"flipped byte in the body", decrypt(flip(ct, len(ct)-1), ectx), codes.InvalidArgument, "decryption failed"},
		{"flipped byte in the wrapped key", decrypt(flip(ct, wrappedAt+20), ectx), codes.InvalidArgument, "decryption failed"},
		{"header renamed to another key", decrypt(reheader(ct, "aes-wrap", 1), ectx), codes.InvalidArgument, "decryption failed"},
		{"header naming a version the key lacks", decrypt(reheader(ct, "aes-derive", 99), ectx), codes.NotFound, `key "aes-derive" has no version 99`},
		{"wrong encryption context", decrypt(ct, map[string]string{"tenant": "43", "key": "aes-derive"}), codes.InvalidArgument, "decryption failed"},
		{"another key's ciphertext, Decrypt naming this key", func(ctx context.Context) error {
			_, err := kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: ectx, KeyId: "aes-wrap"})
			return err
		}, codes.InvalidArgument, `the ciphertext belongs to key "aes-derive", not "aes-wrap"`},
		{"ciphertext of an unknown key, as a client", decrypt(reheader(ct, "ghost", 1), ectx), codes.PermissionDenied, "may not Decrypt key ghost"},
		{"ciphertext of an unknown key, as an admin", func(ctx context.Context) error {
			_, err := admin.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: reheader(ct, "ghost", 1), EncryptionContext: ectx})
			return err
		}, codes.NotFound, `key "ghost" does not exist`},
		{"context over 64 pairs", decrypt(ct, bigContext), codes.InvalidArgument, "65 pairs, limit 64"},

		// Unknown keys and malformed ids.
		{"unknown key, as a client", encryptAs(m.app, &kbv1.EncryptRequest{KeyId: "no-such-key", Plaintext: []byte("x")}), codes.PermissionDenied, "may not Encrypt key no-such-key"},
		{"unknown key, as an admin", encryptAs(admin, &kbv1.EncryptRequest{KeyId: "no-such-key", Plaintext: []byte("x")}), codes.NotFound, `key "no-such-key" does not exist`},
		{"key id with a space", encryptAs(m.app, &kbv1.EncryptRequest{KeyId: "bad key", Plaintext: []byte("x")}), codes.InvalidArgument, `key_id "bad key" must be 1-128`},
		{"empty key id", encryptAs(m.app, &kbv1.EncryptRequest{Plaintext: []byte("x")}), codes.InvalidArgument, `key_id "" must be 1-128`},
		{"key id of 129 bytes", encryptAs(m.app, &kbv1.EncryptRequest{KeyId: strings.Repeat("k", 129), Plaintext: []byte("x")}), codes.InvalidArgument, "must be 1-128"},

		// Sizes.
		{"plaintext over 4 MiB, under the request limit", encryptAs(m.app, &kbv1.EncryptRequest{KeyId: "aes-derive", Plaintext: make([]byte, 4<<20+1)}),
			codes.InvalidArgument, "plaintext is 4194305 bytes, limit 4194304"},
		{"request over limits.max_request_bytes", encryptAs(m.app, &kbv1.EncryptRequest{KeyId: "aes-derive", Plaintext: make([]byte, framework.MaxRequestBytes+1)}),
			codes.ResourceExhausted, "larger than max"},
		{"GenerateRandom of 0 bytes", func(ctx context.Context) error {
			_, err := kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{})
			return err
		}, codes.InvalidArgument, "length 0 out of 1..1024"},
		{"GenerateRandom of 1025 bytes", func(ctx context.Context) error {
			_, err := kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 1025})
			return err
		}, codes.InvalidArgument, "length 1025 out of 1..1024"},
		{"ListKeys page of 1001", func(ctx context.Context) error {
			_, err := kb.ListKeys(ctx, &kbv1.ListKeysRequest{PageSize: 1001})
			return err
		}, codes.InvalidArgument, "page size 1001"},

		// Batches.
		{"empty BatchEncrypt", func(ctx context.Context) error {
			_, err := kb.BatchEncrypt(ctx, &kbv1.BatchEncryptRequest{})
			return err
		}, codes.InvalidArgument, "a batch holds 1..1000 items, not 0"},
		{"BatchEncrypt of 1001 items", func(ctx context.Context) error {
			_, err := kb.BatchEncrypt(ctx, &kbv1.BatchEncryptRequest{Items: items(1001)})
			return err
		}, codes.InvalidArgument, "a batch holds 1..1000 items, not 1001"},
		{"empty BatchDecrypt", func(ctx context.Context) error {
			_, err := kb.BatchDecrypt(ctx, &kbv1.BatchDecryptRequest{})
			return err
		}, codes.InvalidArgument, "not 0"},
		{"BatchGenerateDataKey of 1001 items", func(ctx context.Context) error {
			gen := make([]*kbv1.GenerateDataKeyRequest, 1001)
			for i := range gen {
				gen[i] = &kbv1.GenerateDataKeyRequest{KeyId: "aes-derive"}
			}
			_, err := kb.BatchGenerateDataKey(ctx, &kbv1.BatchGenerateDataKeyRequest{Items: gen})
			return err
		}, codes.InvalidArgument, "not 1001"},

		// Unspecified enums and impossible keys.
		{"CreateKey of unspecified type", create(&kbv1.CreateKeyRequest{KeyId: "bad-1", Mode: modeDerive}), codes.InvalidArgument, "type KEY_TYPE_UNSPECIFIED is not a key type"},
		{"CreateKey of unspecified mode", create(&kbv1.CreateKeyRequest{KeyId: "bad-2", Type: typeAES}), codes.InvalidArgument, "mode KEY_MODE_UNSPECIFIED is not a key mode"},
		{"CreateKey of an undefined type", create(&kbv1.CreateKeyRequest{KeyId: "bad-3", Type: 42, Mode: modeDerive}), codes.InvalidArgument, "is not a key type"},
		{"LookupKey of unspecified operation", func(ctx context.Context) error {
			_, err := kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "aes-derive"})
			return err
		}, codes.InvalidArgument, "operation is required"},
		{"CreateKey of a derived HMAC key", create(&kbv1.CreateKeyRequest{KeyId: "bad-4", Type: typeHMAC, Mode: modeDerive, Derived: true}),
			codes.InvalidArgument, "derived per-context keys are aes-256-gcm only"},
		{"CreateKey of a backend key on a root of another algorithm", create(&kbv1.CreateKeyRequest{KeyId: "bad-5", Type: typeECDSA, Mode: modeBackend, RootKey: m.c.Roots.Ref("root-aes")}),
			codes.InvalidArgument, "is declared with role wrap: a backend-mode key needs a root key with role backend"},
		{"CreateKey of a backend key on a backend root of another algorithm", create(&kbv1.CreateKeyRequest{KeyId: "bad-5b", Type: typeECDSA, Mode: modeBackend, RootKey: m.c.Roots.Ref("root-hsm-aes")}),
			codes.InvalidArgument, "needs a ecdsa-p256 root key"},
		{"CreateKey of a backend HMAC key on the derive root", create(&kbv1.CreateKeyRequest{KeyId: "bad-5c", Type: typeHMAC, Mode: modeBackend, RootKey: m.c.Roots.Ref("root-prf")}),
			codes.InvalidArgument, "is declared with role derive: a backend-mode key needs a root key with role backend"},
		{"CreateKey on an undeclared root key", create(&kbv1.CreateKeyRequest{KeyId: "bad-6", Type: typeAES, Mode: modeWrap, RootKey: m.c.Roots.Ref("no-such-root")}),
			codes.InvalidArgument, "no-such-root\" is not a declared root key"},
		{"CreateKey on a declared root key the backend does not have", create(&kbv1.CreateKeyRequest{KeyId: "bad-6b", Type: typeHMAC, Mode: modeBackend, RootKey: m.c.Roots.Ref("root-absent")}),
			codes.FailedPrecondition, "root-absent"},
		{"CreateKey on a root key no configured backend holds", create(&kbv1.CreateKeyRequest{KeyId: "bad-7", Type: typeAES, Mode: modeWrap, RootKey: "awskms:key-id=alias/x;region=eu-west-1"}),
			codes.InvalidArgument, "is in no configured backend"},
		{"CreateKey of an existing key", create(&kbv1.CreateKeyRequest{KeyId: "aes-derive", Type: typeAES, Mode: modeDerive}),
			codes.AlreadyExists, `key "aes-derive" already exists`},

		// Operations a key's type does not have.
		{"Encrypt with an HMAC key", encryptAs(m.app, &kbv1.EncryptRequest{KeyId: "hmac-derive", Plaintext: []byte("x")}), codes.InvalidArgument, "needs an aes-256-gcm key"},
		{"Sign with an AES key", func(ctx context.Context) error {
			_, err := kb.Sign(ctx, &kbv1.SignRequest{KeyId: "aes-derive", Input: &kbv1.SignRequest_Message{Message: []byte("x")}})
			return err
		}, codes.InvalidArgument, "needs an ecdsa-p256 or ed25519 key"},
		{"Sign with neither message nor digest", func(ctx context.Context) error {
			_, err := kb.Sign(ctx, &kbv1.SignRequest{KeyId: "ec-derive"})
			return err
		}, codes.InvalidArgument, "give a message or a digest"},
		{"Sign a 31-byte digest", func(ctx context.Context) error {
			_, err := kb.Sign(ctx, &kbv1.SignRequest{KeyId: "ec-derive", Input: &kbv1.SignRequest_Digest{Digest: make([]byte, 31)}})
			return err
		}, codes.InvalidArgument, "digest is 31 bytes, want 32"},
		{"GetPublicKey of an AES key", func(ctx context.Context) error {
			_, err := kb.GetPublicKey(ctx, &kbv1.GetPublicKeyRequest{KeyId: "aes-derive"})
			return err
		}, codes.InvalidArgument, "needs an ecdsa-p256 or ed25519 key"},
		{"GetPublicKey of a version the key lacks", func(ctx context.Context) error {
			_, err := kb.GetPublicKey(ctx, &kbv1.GetPublicKeyRequest{KeyId: "ec-derive", KeyVersion: 9})
			return err
		}, codes.NotFound, "has no version 9"},
		{"GenerateMac of an empty message", func(ctx context.Context) error {
			_, err := kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "hmac-derive"})
			return err
		}, codes.InvalidArgument, "message is 0 bytes"},
		{"VerifyMac at a version the key lacks", func(ctx context.Context) error {
			_, err := kb.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "hmac-derive", KeyVersion: 9, Message: []byte("x"), Mac: make([]byte, 32)})
			return err
		}, codes.NotFound, "has no version 9"},
		{"UpdateKey with a bad label", func(ctx context.Context) error {
			_, err := admin.Admin.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "aes-derive", Labels: map[string]string{"bad label": "x"}})
			return err
		}, codes.InvalidArgument, `label key "bad label"`},
	}
	for id, fct := range foreign {
		cases = append(cases, badCase{"another cluster's ciphertext under " + id, decrypt(fct, opsContext(id)), codes.InvalidArgument, "decryption failed"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rctx, rid := framework.WithRequestID(t)
			wantStatus(t, tc.name, tc.call(rctx), tc.code, tc.msg)
			if tc.code == codes.ResourceExhausted {
				return // refused by gRPC while reading the request, before any handler
			}
			// Package server: every call that reaches it is audited,
			// refused calls included.
			lines := m.c.AuditLines(t, rid)
			if len(lines) == 0 {
				t.Errorf("the refused call left no audit line (request %s)", rid)
			} else if last := lines[len(lines)-1]; last.Outcome != tc.code.String() {
				t.Errorf("audit line %+v, want outcome %s", last, tc.code)
			}
		})
	}

	// The node took all of it: it still answers, and has not panicked.
	if !m.p.Running() {
		t.Fatalf("central exited during the bad input:\n%s", m.p.Logs())
	}
	m.open(t, ct, ectx, "aes-derive", enc.KeyVersion, []byte("secret"))
	if logs := m.p.Logs(); strings.Contains(strings.ToLower(logs), "panic") {
		t.Errorf("central's stderr mentions a panic:\n%s", logs)
	}
	if bytes.Contains([]byte(m.p.Logs()), []byte(`"level":"ERROR"`)) {
		t.Errorf("central logged errors for bad input (internal errors?):\n%s", m.p.Logs())
	}
}
