package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/tests/framework"
)

// operations runs every KeyBroker operation on every key of the matrix, as
// the app client, rotating each key once on the way, and records what it
// produced for the restart.
func (m *matrix) operations(t *testing.T) {
	for _, s := range m.specs {
		t.Run(s.id, func(t *testing.T) {
			var primary uint32 // the version each leaves primary
			switch s.typ {
			case typeAES:
				primary = m.aesOps(t, s)
			case typeHMAC:
				primary = m.macOps(t, s)
			default:
				primary = m.signOps(t, s)
			}
			m.describeOps(t, s, primary)
		})
	}
	t.Run("GenerateRandom", m.randomOps)
	t.Run("ListKeys", m.listOps)
	t.Run("batches", m.batchOps)
	t.Run("LookupKey and ListNodes advertise the node's address", m.advertisedAddress)
}

// open decrypts ct and checks the plaintext, key and version.
func (m *matrix) open(t *testing.T, ct []byte, ectx map[string]string, key string, version uint32, want []byte) {
	t.Helper()
	dec, err := m.app.KB.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: ectx})
	if err != nil {
		t.Errorf("Decrypt(%s v%d ciphertext): %v", key, version, err)
		return
	}
	if !bytes.Equal(dec.Plaintext, want) || dec.KeyId != key || dec.KeyVersion != version {
		t.Errorf("Decrypt = %q, %s v%d; want %q, %s v%d", dec.Plaintext, dec.KeyId, dec.KeyVersion, want, key, version)
	}
}

func (m *matrix) rotate(t *testing.T, id string, wantVersion uint32) *kbv1.KeyMetadata {
	t.Helper()
	k, err := m.admin.Admin.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: id})
	must(t, "RotateKey "+id, err)
	if k.PrimaryVersion != wantVersion || len(k.Versions) != int(wantVersion) {
		t.Fatalf("RotateKey(%s): primary %d, %d versions; want %d", id, k.PrimaryVersion, len(k.Versions), wantVersion)
	}
	return k
}

func (m *matrix) aesOps(t *testing.T, s keySpec) uint32 {
	kb := m.app.KB
	ectx := opsContext(s.id)
	pt := []byte("plaintext of " + s.id)

	enc, err := kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: s.id, Plaintext: pt, EncryptionContext: ectx})
	must(t, "Encrypt", err)
	if enc.KeyId != s.id || enc.KeyVersion != 1 {
		t.Errorf("Encrypt answered %s v%d, want %s v1", enc.KeyId, enc.KeyVersion, s.id)
	}
	m.open(t, enc.Ciphertext, ectx, s.id, 1, pt)
	_, err = kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: ectx, KeyId: s.id})
	wantStatus(t, "Decrypt naming its own key", err, codes.OK)
	_, err = kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: map[string]string{"tenant": "43", "key": s.id}})
	wantStatus(t, "Decrypt with another context", err, codes.InvalidArgument, "decryption failed")
	_, err = kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext})
	wantStatus(t, "Decrypt without the context", err, codes.InvalidArgument, "decryption failed")

	dk, err := kb.GenerateDataKey(t.Context(), &kbv1.GenerateDataKeyRequest{KeyId: s.id, EncryptionContext: ectx})
	must(t, "GenerateDataKey", err)
	if len(dk.Plaintext) != 32 || dk.KeyId != s.id || dk.KeyVersion != 1 {
		t.Errorf("GenerateDataKey: %d-byte key, %s v%d; want 32 bytes, %s v1", len(dk.Plaintext), dk.KeyId, dk.KeyVersion, s.id)
	}
	m.open(t, dk.EncryptedDataKey, ectx, s.id, 1, dk.Plaintext)

	dkw, err := kb.GenerateDataKeyWithoutPlaintext(t.Context(), &kbv1.GenerateDataKeyRequest{KeyId: s.id, EncryptionContext: ectx})
	must(t, "GenerateDataKeyWithoutPlaintext", err)
	if len(dkw.Plaintext) != 0 {
		t.Errorf("GenerateDataKeyWithoutPlaintext returned a %d-byte plaintext", len(dkw.Plaintext))
	}
	dec, err := kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: dkw.EncryptedDataKey, EncryptionContext: ectx})
	must(t, "Decrypt of the data key", err)
	if len(dec.Plaintext) != 32 || bytes.Equal(dec.Plaintext, dk.Plaintext) {
		t.Errorf("data key without plaintext decrypts to %x, want 32 fresh bytes", dec.Plaintext)
	}

	// Rotation: new ciphertexts take version 2, old ones still open.
	m.rotate(t, s.id, 2)
	enc2, err := kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: s.id, Plaintext: pt, EncryptionContext: ectx})
	must(t, "Encrypt after rotation", err)
	if enc2.KeyVersion != 2 {
		t.Errorf("Encrypt after rotation: version %d, want 2", enc2.KeyVersion)
	}
	m.open(t, enc.Ciphertext, ectx, s.id, 1, pt)
	m.open(t, enc2.Ciphertext, ectx, s.id, 2, pt)

	// ReEncrypt to the key's own primary, under a new context, and to
	// another key.
	newCtx := map[string]string{"tenant": "42", "moved": "yes"}
	re, err := kb.ReEncrypt(t.Context(), &kbv1.ReEncryptRequest{Ciphertext: enc.Ciphertext, SourceEncryptionContext: ectx, DestinationEncryptionContext: newCtx})
	must(t, "ReEncrypt", err)
	if re.SourceKeyId != s.id || re.SourceKeyVersion != 1 || re.KeyId != s.id || re.KeyVersion != 2 {
		t.Errorf("ReEncrypt: %s v%d → %s v%d, want %s v1 → %s v2", re.SourceKeyId, re.SourceKeyVersion, re.KeyId, re.KeyVersion, s.id, s.id)
	}
	m.open(t, re.Ciphertext, newCtx, s.id, 2, pt)
	other := "aes-wrap"
	if s.id == other {
		other = "aes-derive"
	}
	re2, err := kb.ReEncrypt(t.Context(), &kbv1.ReEncryptRequest{Ciphertext: enc2.Ciphertext, SourceEncryptionContext: ectx, DestinationKeyId: other, DestinationEncryptionContext: newCtx})
	must(t, "ReEncrypt to "+other, err)
	if re2.KeyId != other {
		t.Errorf("ReEncrypt to %s answered key %s", other, re2.KeyId)
	}
	m.open(t, re2.Ciphertext, newCtx, other, re2.KeyVersion, pt)

	m.sealed = append(m.sealed,
		sealedMsg{s.id, 1, ectx, pt, enc.Ciphertext},
		sealedMsg{s.id, 2, ectx, pt, enc2.Ciphertext},
		sealedMsg{s.id, 1, ectx, dk.Plaintext, dk.EncryptedDataKey},
		sealedMsg{s.id, 2, newCtx, pt, re.Ciphertext},
		sealedMsg{other, re2.KeyVersion, newCtx, pt, re2.Ciphertext},
	)
	return 2
}

func (m *matrix) macOps(t *testing.T, s keySpec) uint32 {
	kb := m.app.KB
	msg := []byte("message for " + s.id)
	verify := func(what string, version uint32, msg, tag []byte, want bool) {
		t.Helper()
		v, err := kb.VerifyMac(t.Context(), &kbv1.VerifyMacRequest{KeyId: s.id, KeyVersion: version, Message: msg, Mac: tag})
		if err != nil {
			t.Errorf("VerifyMac(%s): %v", what, err)
			return
		}
		if v.Valid != want {
			t.Errorf("VerifyMac(%s) = %v, want %v", what, v.Valid, want)
		}
	}

	mac, err := kb.GenerateMac(t.Context(), &kbv1.GenerateMacRequest{KeyId: s.id, Message: msg})
	must(t, "GenerateMac", err)
	if len(mac.Mac) != 32 || mac.KeyId != s.id || mac.KeyVersion != 1 {
		t.Errorf("GenerateMac: %d bytes, %s v%d; want 32 bytes, %s v1", len(mac.Mac), mac.KeyId, mac.KeyVersion, s.id)
	}
	verify("its own MAC", 0, msg, mac.Mac, true)
	tampered := slices.Clone(mac.Mac)
	tampered[0] ^= 1
	verify("a flipped bit", 0, msg, tampered, false)
	verify("another message", 0, []byte("another message"), mac.Mac, false)

	m.macs = append(m.macs, macedMsg{s.id, 1, msg, mac.Mac})

	// A rotation must give the new version a key of its own: otherwise a
	// MAC made before it verifies as the new version's, and raising
	// min_decryption_version retires nothing. A backend-mode key has one
	// backend key, so the node may refuse to rotate it instead, as it does
	// backend-mode signing keys.
	_, err = m.admin.Admin.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: s.id})
	if s.mode == modeBackend && status.Code(err) == codes.FailedPrecondition {
		return 1
	}
	must(t, "RotateKey", err)
	mac2, err := kb.GenerateMac(t.Context(), &kbv1.GenerateMacRequest{KeyId: s.id, Message: msg})
	must(t, "GenerateMac after rotation", err)
	if mac2.KeyVersion != 2 {
		t.Errorf("GenerateMac after rotation: version %d, want 2", mac2.KeyVersion)
	}
	verify("version 1's MAC at version 1", 1, msg, mac.Mac, true)
	verify("version 2's MAC at the primary", 0, msg, mac2.Mac, true)
	if bytes.Equal(mac.Mac, mac2.Mac) {
		t.Errorf("versions 1 and 2 give the same MAC %x: the rotation made no new key", mac.Mac)
	}
	verify("version 1's MAC at the primary", 0, msg, mac.Mac, false)
	m.macs = append(m.macs, macedMsg{s.id, 2, msg, mac2.Mac})
	return 2
}

// parsePublicKey parses a GetPublicKey answer of type typ.
func parsePublicKey(t *testing.T, typ kbv1.KeyType, der []byte) any {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatalf("GetPublicKey: not a DER SubjectPublicKeyInfo: %v", err)
	}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		if typ == typeECDSA {
			return pub
		}
	case ed25519.PublicKey:
		if typ == typeEd25519 {
			return pub
		}
	}
	t.Fatalf("GetPublicKey of a %s key returned a %T", typ, pub)
	return nil
}

// checkSignature verifies sig with crypto/ecdsa or crypto/ed25519.
func checkSignature(t *testing.T, pub any, msg []byte, digest bool, sig []byte) {
	t.Helper()
	ok := false
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		d := msg
		if !digest {
			sum := sha256.Sum256(msg)
			d = sum[:]
		}
		ok = ecdsa.VerifyASN1(p, d, sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(p, msg, sig)
	}
	if !ok {
		t.Errorf("the %T does not verify the signature", pub)
	}
}

func (m *matrix) signOps(t *testing.T, s keySpec) uint32 {
	kb := m.app.KB
	msg := []byte("message for " + s.id)
	sum := sha256.Sum256(msg)
	digest := sum[:]
	verify := func(what string, req *kbv1.VerifyRequest, want bool) {
		t.Helper()
		req.KeyId = s.id
		v, err := kb.Verify(t.Context(), req)
		if err != nil {
			t.Errorf("Verify(%s): %v", what, err)
			return
		}
		if v.Valid != want {
			t.Errorf("Verify(%s) = %v, want %v", what, v.Valid, want)
		}
	}

	sig, err := kb.Sign(t.Context(), &kbv1.SignRequest{KeyId: s.id, Input: &kbv1.SignRequest_Message{Message: msg}})
	must(t, "Sign", err)
	if sig.KeyId != s.id || sig.KeyVersion != 1 {
		t.Errorf("Sign answered %s v%d, want %s v1", sig.KeyId, sig.KeyVersion, s.id)
	}
	pk, err := kb.GetPublicKey(t.Context(), &kbv1.GetPublicKeyRequest{KeyId: s.id})
	must(t, "GetPublicKey", err)
	if pk.KeyType != s.typ || pk.KeyId != s.id || pk.KeyVersion != 1 {
		t.Errorf("GetPublicKey: %s %s v%d, want %s %s v1", pk.KeyType, pk.KeyId, pk.KeyVersion, s.typ, s.id)
	}
	pub := parsePublicKey(t, s.typ, pk.PublicKey)
	checkSignature(t, pub, msg, false, sig.Signature)
	m.pubs[versionKey(s.id, 1)] = pk.PublicKey
	m.signed = append(m.signed, signedMsg{s.id, s.typ, 1, msg, false, sig.Signature})

	verify("its own signature", &kbv1.VerifyRequest{Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: sig.Signature}, true)
	tampered := slices.Clone(sig.Signature)
	tampered[len(tampered)/2] ^= 1
	verify("a flipped bit", &kbv1.VerifyRequest{Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: tampered}, false)
	verify("another message", &kbv1.VerifyRequest{Input: &kbv1.VerifyRequest_Message{Message: []byte("another")}, Signature: sig.Signature}, false)

	if s.typ == typeECDSA {
		dsig, err := kb.Sign(t.Context(), &kbv1.SignRequest{KeyId: s.id, Input: &kbv1.SignRequest_Digest{Digest: digest}})
		must(t, "Sign digest", err)
		checkSignature(t, pub, digest, true, dsig.Signature)
		verify("a digest's signature, by digest", &kbv1.VerifyRequest{Input: &kbv1.VerifyRequest_Digest{Digest: digest}, Signature: dsig.Signature}, true)
		verify("a digest's signature, by message", &kbv1.VerifyRequest{Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: dsig.Signature}, true)
		m.signed = append(m.signed, signedMsg{s.id, s.typ, 1, digest, true, dsig.Signature})
	} else {
		_, err := kb.Sign(t.Context(), &kbv1.SignRequest{KeyId: s.id, Input: &kbv1.SignRequest_Digest{Digest: digest}})
		wantStatus(t, "Sign a digest with ed25519", err, codes.InvalidArgument, "ed25519 keys sign messages")
		_, err = kb.Verify(t.Context(), &kbv1.VerifyRequest{KeyId: s.id, Input: &kbv1.VerifyRequest_Digest{Digest: digest}, Signature: sig.Signature})
		wantStatus(t, "Verify a digest with ed25519", err, codes.InvalidArgument, "ed25519 keys verify messages")
	}

	if s.mode == modeBackend {
		_, err := m.admin.Admin.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: s.id})
		wantStatus(t, "RotateKey of a backend-mode signing key", err, codes.FailedPrecondition, "cannot be rotated")
		return 1
	}
	m.rotate(t, s.id, 2)
	sig2, err := kb.Sign(t.Context(), &kbv1.SignRequest{KeyId: s.id, Input: &kbv1.SignRequest_Message{Message: msg}})
	must(t, "Sign after rotation", err)
	if sig2.KeyVersion != 2 {
		t.Errorf("Sign after rotation: version %d, want 2", sig2.KeyVersion)
	}
	pk2, err := kb.GetPublicKey(t.Context(), &kbv1.GetPublicKeyRequest{KeyId: s.id})
	must(t, "GetPublicKey after rotation", err)
	if pk2.KeyVersion != 2 || bytes.Equal(pk2.PublicKey, pk.PublicKey) {
		t.Errorf("GetPublicKey after rotation: version %d, new key %v; want version 2 and a new key", pk2.KeyVersion, !bytes.Equal(pk2.PublicKey, pk.PublicKey))
	}
	checkSignature(t, parsePublicKey(t, s.typ, pk2.PublicKey), msg, false, sig2.Signature)
	pk1, err := kb.GetPublicKey(t.Context(), &kbv1.GetPublicKeyRequest{KeyId: s.id, KeyVersion: 1})
	must(t, "GetPublicKey version 1", err)
	if !bytes.Equal(pk1.PublicKey, pk.PublicKey) || pk1.KeyVersion != 1 {
		t.Errorf("GetPublicKey(version 1) changed after the rotation")
	}
	verify("version 1's signature at version 1", &kbv1.VerifyRequest{KeyVersion: 1, Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: sig.Signature}, true)
	verify("version 1's signature at the primary", &kbv1.VerifyRequest{Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: sig.Signature}, false)
	verify("version 2's signature", &kbv1.VerifyRequest{Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: sig2.Signature}, true)
	m.pubs[versionKey(s.id, 2)] = pk2.PublicKey
	m.signed = append(m.signed, signedMsg{s.id, s.typ, 2, msg, false, sig2.Signature})
	return 2
}

// describeOps checks DescribeKey and LookupKey as the app sees them (no
// root key: that is told to admins only); the key's primary version is
// primary.
func (m *matrix) describeOps(t *testing.T, s keySpec, primary uint32) {
	d, err := m.app.KB.DescribeKey(t.Context(), &kbv1.DescribeKeyRequest{KeyId: s.id})
	must(t, "DescribeKey", err)
	k := d.Key
	if k.KeyId != s.id || k.Type != s.typ || k.Mode != s.mode || k.Derived != s.derived || k.State != kbv1.KeyState_KEY_STATE_ENABLED ||
		k.PrimaryVersion != primary || len(k.Versions) != int(primary) || k.RootKey != "" || k.Labels["owner"] != framework.TrustDomain {
		t.Errorf("DescribeKey(%s) = %v; want %s %s derived=%v enabled, primary and versions %d, no root key", s.id, k, s.typ, s.mode, s.derived, primary)
	}
	d, err = m.admin.KB.DescribeKey(t.Context(), &kbv1.DescribeKeyRequest{KeyId: s.id})
	must(t, "DescribeKey as an admin", err)
	if got := d.GetKey().GetRootKey(); got != s.rootRef(m.c.Roots) {
		t.Errorf("DescribeKey(%s) as an admin: root key %q, want %s", s.id, got, s.rootRef(m.c.Roots))
	}
	l, err := m.app.KB.LookupKey(t.Context(), &kbv1.LookupKeyRequest{KeyId: s.id, Operation: kbv1.Operation_OPERATION_DESCRIBE_KEY})
	must(t, "LookupKey", err)
	if len(l.Nodes) != 1 || l.Nodes[0].NodeId != "central-1" || l.Nodes[0].Kind != "central" || l.Nodes[0].Reason != kbv1.LookupReason_LOOKUP_REASON_ROOT_OF_TRUST {
		t.Errorf("LookupKey(%s) = %v, want central-1, central, ROOT_OF_TRUST", s.id, l.Nodes)
	}
}

func (m *matrix) randomOps(t *testing.T) {
	for _, n := range []uint32{1, 32, 1024} {
		r, err := m.app.KB.GenerateRandom(t.Context(), &kbv1.GenerateRandomRequest{Length: n})
		must(t, "GenerateRandom", err)
		if len(r.Random) != int(n) {
			t.Errorf("GenerateRandom(%d) returned %d bytes", n, len(r.Random))
		}
	}
	a, err := m.app.KB.GenerateRandom(t.Context(), &kbv1.GenerateRandomRequest{Length: 32})
	must(t, "GenerateRandom", err)
	b, err := m.app.KB.GenerateRandom(t.Context(), &kbv1.GenerateRandomRequest{Length: 32})
	must(t, "GenerateRandom", err)
	if bytes.Equal(a.Random, b.Random) {
		t.Errorf("two GenerateRandom(32) returned the same bytes %x", a.Random)
	}
}

func (m *matrix) listOps(t *testing.T) {
	var all []string
	for _, s := range m.specs {
		all = append(all, s.id)
	}
	owned := slices.Clone(all)
	all = append(all, unownedKey)
	slices.Sort(all)
	slices.Sort(owned)
	ids := func(keys []*kbv1.KeyMetadata) []string {
		var out []string
		for _, k := range keys {
			out = append(out, k.KeyId)
		}
		return out
	}

	// Other subtests add keys of their own; this one runs first, so the
	// matrix's keys are all there are. The app may describe only the
	// owned ones, so it lists only those; an admin lists every key.
	l, err := m.admin.KB.ListKeys(t.Context(), &kbv1.ListKeysRequest{})
	must(t, "ListKeys as an admin", err)
	if diff := cmp.Diff(all, ids(l.Keys)); diff != "" || l.NextPageToken != "" {
		t.Errorf("ListKeys as an admin (-want +got):\n%s\nnext page token %q", diff, l.NextPageToken)
	}
	l, err = m.app.KB.ListKeys(t.Context(), &kbv1.ListKeysRequest{})
	must(t, "ListKeys", err)
	if diff := cmp.Diff(owned, ids(l.Keys)); diff != "" || l.NextPageToken != "" {
		t.Errorf("ListKeys (-want +got):\n%s\nnext page token %q", diff, l.NextPageToken)
	}
	l, err = m.app.KB.ListKeys(t.Context(), &kbv1.ListKeysRequest{LabelSelector: ownerLabels})
	must(t, "ListKeys by label", err)
	if diff := cmp.Diff(owned, ids(l.Keys)); diff != "" {
		t.Errorf("ListKeys owner=%s (-want +got):\n%s", framework.TrustDomain, diff)
	}
	var paged []string
	token := ""
	for pages := 1; ; pages++ {
		l, err := m.app.KB.ListKeys(t.Context(), &kbv1.ListKeysRequest{PageSize: 4, PageToken: token})
		must(t, "ListKeys page", err)
		if len(l.Keys) > 4 {
			t.Fatalf("ListKeys page of 4 returned %d keys", len(l.Keys))
		}
		paged = append(paged, ids(l.Keys)...)
		if token = l.NextPageToken; token == "" {
			break
		}
		if pages > len(all) {
			t.Fatalf("ListKeys pages never end; token %q", token)
		}
	}
	if diff := cmp.Diff(owned, paged); diff != "" {
		t.Errorf("ListKeys by pages of 4 (-want +got):\n%s", diff)
	}
}

func (m *matrix) batchOps(t *testing.T) {
	var aes []keySpec
	for _, s := range m.specs {
		if s.typ == typeAES {
			aes = append(aes, s)
		}
	}
	var items []*kbv1.EncryptRequest
	for _, s := range aes {
		items = append(items, &kbv1.EncryptRequest{KeyId: s.id, Plaintext: []byte("batch " + s.id), EncryptionContext: opsContext(s.id)})
	}
	// Three bad items: one error each, and the batch still succeeds.
	bad := []struct {
		item *kbv1.EncryptRequest
		code codes.Code
	}{
		{&kbv1.EncryptRequest{KeyId: "hmac-derive", Plaintext: []byte("x")}, codes.InvalidArgument},
		{&kbv1.EncryptRequest{KeyId: unownedKey, Plaintext: []byte("x")}, codes.PermissionDenied},
		{&kbv1.EncryptRequest{KeyId: "no-such-key", Plaintext: []byte("x")}, codes.PermissionDenied},
	}
	for _, b := range bad {
		items = append(items, b.item)
	}
	rctx, rid := framework.WithRequestID(t)
	be, err := m.app.KB.BatchEncrypt(rctx, &kbv1.BatchEncryptRequest{Items: items})
	must(t, "BatchEncrypt", err)
	if len(be.Results) != len(items) {
		t.Fatalf("BatchEncrypt: %d results for %d items", len(be.Results), len(items))
	}
	var dec []*kbv1.DecryptRequest
	for i, s := range aes {
		r := be.Results[i]
		if r.Error != nil || r.Response.GetKeyId() != s.id || r.Response.GetKeyVersion() != 2 {
			t.Errorf("BatchEncrypt item %d (%s): %v, want a ciphertext of %s v2", i, s.id, r, s.id)
			continue
		}
		dec = append(dec, &kbv1.DecryptRequest{Ciphertext: r.Response.Ciphertext, EncryptionContext: opsContext(s.id)})
	}
	for i, b := range bad {
		r := be.Results[len(aes)+i]
		if r.Response != nil || codes.Code(r.Error.GetCode()) != b.code || r.Error.GetMessage() == "" {
			t.Errorf("BatchEncrypt item %s: %v, want error %v with a message", b.item.KeyId, r, b.code)
		}
	}
	if lines := m.c.AuditLines(t, rid); len(lines) != len(items) {
		t.Errorf("BatchEncrypt of %d items left %d audit lines, want one per item", len(items), len(lines))
	}

	dec = append(dec, &kbv1.DecryptRequest{Ciphertext: []byte("not a ciphertext")})
	bd, err := m.app.KB.BatchDecrypt(t.Context(), &kbv1.BatchDecryptRequest{Items: dec})
	must(t, "BatchDecrypt", err)
	if len(bd.Results) != len(dec) {
		t.Fatalf("BatchDecrypt: %d results for %d items", len(bd.Results), len(dec))
	}
	for i, r := range bd.Results[:len(dec)-1] {
		id := aes[i].id
		if r.Error != nil || string(r.Response.GetPlaintext()) != "batch "+id {
			t.Errorf("BatchDecrypt item %d: %v, want %q", i, r, "batch "+id)
		}
	}
	if last := bd.Results[len(dec)-1]; codes.Code(last.Error.GetCode()) != codes.InvalidArgument {
		t.Errorf("BatchDecrypt of garbage: %v, want InvalidArgument", last)
	}

	for _, without := range []bool{false, true} {
		var gen []*kbv1.GenerateDataKeyRequest
		for _, s := range aes {
			gen = append(gen, &kbv1.GenerateDataKeyRequest{KeyId: s.id, EncryptionContext: opsContext(s.id)})
		}
		bg, err := m.app.KB.BatchGenerateDataKey(t.Context(), &kbv1.BatchGenerateDataKeyRequest{Items: gen, WithoutPlaintext: without})
		must(t, "BatchGenerateDataKey", err)
		if len(bg.Results) != len(gen) {
			t.Fatalf("BatchGenerateDataKey: %d results for %d items", len(bg.Results), len(gen))
		}
		var open []*kbv1.DecryptRequest
		for i, r := range bg.Results {
			wantLen := 32
			if without {
				wantLen = 0
			}
			if r.Error != nil || len(r.Response.GetPlaintext()) != wantLen || r.Response.GetKeyId() != aes[i].id {
				t.Errorf("BatchGenerateDataKey(without_plaintext=%v) item %d: %v", without, i, r)
				continue
			}
			open = append(open, &kbv1.DecryptRequest{Ciphertext: r.Response.EncryptedDataKey, EncryptionContext: opsContext(aes[i].id)})
		}
		bd, err := m.app.KB.BatchDecrypt(t.Context(), &kbv1.BatchDecryptRequest{Items: open})
		must(t, "BatchDecrypt of data keys", err)
		for i, r := range bd.Results {
			if r.Error != nil || len(r.Response.GetPlaintext()) != 32 ||
				(!without && !bytes.Equal(r.Response.GetPlaintext(), bg.Results[i].Response.GetPlaintext())) {
				t.Errorf("BatchDecrypt of data key %d (without_plaintext=%v): %v", i, without, r)
			}
		}
	}
}

// advertisedAddress checks that the node names the address it listens on:
// callers dial what LookupKey and ListNodes return.
func (m *matrix) advertisedAddress(t *testing.T) {
	l, err := m.app.KB.LookupKey(t.Context(), &kbv1.LookupKeyRequest{KeyId: "aes-derive", Operation: kbv1.Operation_OPERATION_ENCRYPT})
	must(t, "LookupKey", err)
	if len(l.Nodes) != 1 || l.Nodes[0].Address != m.p.Addr {
		t.Errorf("LookupKey nodes = %v, want one at the node's listen address %s", l.Nodes, m.p.Addr)
	}
	n, err := m.admin.Admin.ListNodes(t.Context(), &kbv1.ListNodesRequest{})
	must(t, "ListNodes", err)
	if len(n.Nodes) != 1 || n.Nodes[0].Address != m.p.Addr || n.Nodes[0].NodeId != "central-1" {
		t.Errorf("ListNodes = %v, want central-1 at the node's listen address %s", n.Nodes, m.p.Addr)
	}
}

// lifecycle drives keys of its own, one per AES mode plus an HMAC and a
// signing key, through rotation, the minimum decryption version,
// disabling, and pending deletion.
func (m *matrix) lifecycle(t *testing.T) {
	for _, s := range []keySpec{
		{id: "life-aes-derive", typ: typeAES, mode: modeDerive, derived: true},
		{id: "life-aes-wrap", typ: typeAES, mode: modeWrap},
		{id: "life-aes-backend", typ: typeAES, mode: modeBackend},
		{id: "life-hmac-wrap", typ: typeHMAC, mode: modeWrap},
		{id: "life-ec-derive", typ: typeECDSA, mode: modeDerive},
	} {
		t.Run(s.id, func(t *testing.T) { m.lifecycleOf(t, s) })
	}
}

func (m *matrix) lifecycleOf(t *testing.T, s keySpec) {
	m.createKey(t, s, ownerLabels)
	kb, admin := m.app.KB, m.admin.Admin
	// v1 uses version 1 (decrypt, verify at version 1); cur uses the
	// primary version.
	var v1, cur func() error
	ectx := opsContext(s.id)
	msg := []byte("lifecycle of " + s.id)
	switch s.typ {
	case typeAES:
		enc, err := kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: s.id, Plaintext: msg, EncryptionContext: ectx})
		must(t, "Encrypt", err)
		v1 = func() error {
			_, err := kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: ectx})
			return err
		}
		cur = func() error {
			enc, err := kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: s.id, Plaintext: msg, EncryptionContext: ectx})
			if err != nil {
				return err
			}
			_, err = kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext, EncryptionContext: ectx})
			return err
		}
	case typeHMAC:
		mac, err := kb.GenerateMac(t.Context(), &kbv1.GenerateMacRequest{KeyId: s.id, Message: msg})
		must(t, "GenerateMac", err)
		v1 = func() error {
			_, err := kb.VerifyMac(t.Context(), &kbv1.VerifyMacRequest{KeyId: s.id, KeyVersion: 1, Message: msg, Mac: mac.Mac})
			return err
		}
		cur = func() error {
			_, err := kb.GenerateMac(t.Context(), &kbv1.GenerateMacRequest{KeyId: s.id, Message: msg})
			return err
		}
	default:
		sig, err := kb.Sign(t.Context(), &kbv1.SignRequest{KeyId: s.id, Input: &kbv1.SignRequest_Message{Message: msg}})
		must(t, "Sign", err)
		v1 = func() error {
			_, err := kb.Verify(t.Context(), &kbv1.VerifyRequest{KeyId: s.id, KeyVersion: 1, Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: sig.Signature})
			if err == nil {
				_, err = kb.GetPublicKey(t.Context(), &kbv1.GetPublicKeyRequest{KeyId: s.id, KeyVersion: 1})
			}
			return err
		}
		cur = func() error {
			_, err := kb.Sign(t.Context(), &kbv1.SignRequest{KeyId: s.id, Input: &kbv1.SignRequest_Message{Message: msg}})
			return err
		}
	}
	state := func(want kbv1.KeyState) {
		t.Helper()
		d, err := kb.DescribeKey(t.Context(), &kbv1.DescribeKeyRequest{KeyId: s.id})
		must(t, "DescribeKey", err)
		if d.Key.State != want {
			t.Errorf("DescribeKey(%s).state = %v, want %v", s.id, d.Key.State, want)
		}
	}
	req := &kbv1.KeyRequest{KeyId: s.id}

	m.rotate(t, s.id, 2)
	wantStatus(t, "version 1 after rotation", v1(), codes.OK)
	wantStatus(t, "primary after rotation", cur(), codes.OK)

	two, three := uint32(2), uint32(3)
	k, err := admin.UpdateKey(t.Context(), &kbv1.UpdateKeyRequest{KeyId: s.id, MinDecryptionVersion: &two})
	must(t, "UpdateKey min_decryption_version=2", err)
	if k.MinDecryptionVersion != 2 {
		t.Errorf("UpdateKey: min_decryption_version %d, want 2", k.MinDecryptionVersion)
	}
	wantStatus(t, "version 1 below the minimum", v1(), codes.FailedPrecondition, "below the minimum decryption version 2")
	wantStatus(t, "primary above the minimum", cur(), codes.OK)
	_, err = admin.UpdateKey(t.Context(), &kbv1.UpdateKeyRequest{KeyId: s.id, MinDecryptionVersion: &three})
	wantStatus(t, "min_decryption_version above the primary", err, codes.InvalidArgument, "above the primary version")

	_, err = admin.DisableKey(t.Context(), req)
	must(t, "DisableKey", err)
	state(kbv1.KeyState_KEY_STATE_DISABLED)
	wantStatus(t, "use of a disabled key", cur(), codes.FailedPrecondition, "is disabled")
	_, err = admin.RotateKey(t.Context(), req)
	wantStatus(t, "RotateKey of a disabled key", err, codes.FailedPrecondition, "is disabled")
	_, err = admin.EnableKey(t.Context(), req)
	must(t, "EnableKey", err)
	state(kbv1.KeyState_KEY_STATE_ENABLED)
	wantStatus(t, "use after EnableKey", cur(), codes.OK)

	_, err = admin.ScheduleKeyDeletion(t.Context(), &kbv1.ScheduleKeyDeletionRequest{KeyId: s.id, PendingWindow: durationpb.New(24 * time.Hour)})
	wantStatus(t, "ScheduleKeyDeletion in a day", err, codes.InvalidArgument, "pending window")
	k, err = admin.ScheduleKeyDeletion(t.Context(), &kbv1.ScheduleKeyDeletionRequest{KeyId: s.id, PendingWindow: durationpb.New(7 * 24 * time.Hour)})
	must(t, "ScheduleKeyDeletion", err)
	if k.State != kbv1.KeyState_KEY_STATE_PENDING_DELETION || time.Until(k.DeletionTime.AsTime()) < 6*24*time.Hour {
		t.Errorf("ScheduleKeyDeletion: state %v, deletion at %v; want pending deletion in 7 days", k.State, k.DeletionTime.AsTime())
	}
	wantStatus(t, "use of a key pending deletion", cur(), codes.FailedPrecondition, "pending deletion")
	wantStatus(t, "version 1 of a key pending deletion", v1(), codes.FailedPrecondition, "pending deletion")
	_, err = admin.EnableKey(t.Context(), req)
	wantStatus(t, "EnableKey of a key pending deletion", err, codes.FailedPrecondition, "only a disabled key can be enabled")
	_, err = admin.ScheduleKeyDeletion(t.Context(), &kbv1.ScheduleKeyDeletionRequest{KeyId: s.id})
	wantStatus(t, "ScheduleKeyDeletion twice", err, codes.FailedPrecondition, "already pending deletion")

	_, err = admin.CancelKeyDeletion(t.Context(), req)
	must(t, "CancelKeyDeletion", err)
	state(kbv1.KeyState_KEY_STATE_DISABLED)
	wantStatus(t, "use after CancelKeyDeletion, before EnableKey", cur(), codes.FailedPrecondition, "is disabled")
	_, err = admin.EnableKey(t.Context(), req)
	must(t, "EnableKey after CancelKeyDeletion", err)
	state(kbv1.KeyState_KEY_STATE_ENABLED)
	wantStatus(t, "use after cancel and enable", cur(), codes.OK)
	wantStatus(t, "version 1, still below the minimum", v1(), codes.FailedPrecondition, "below the minimum decryption version")
}

// restarted checks, against a restarted node, that every key and version
// is as it was and that everything the operations produced still opens
// and verifies.
func (m *matrix) restarted(t *testing.T, before map[string]*kbv1.KeyMetadata) {
	if diff := cmp.Diff(before, m.listKeys(t), protocmp.Transform()); diff != "" {
		t.Errorf("keys after the restart (-before +after):\n%s", diff)
	}
	for _, s := range m.sealed {
		m.open(t, s.ct, s.ectx, s.key, s.version, s.plaintext)
	}
	for _, s := range m.signed {
		req := &kbv1.VerifyRequest{KeyId: s.key, KeyVersion: s.version, Signature: s.sig}
		if s.digest {
			req.Input = &kbv1.VerifyRequest_Digest{Digest: s.msg}
		} else {
			req.Input = &kbv1.VerifyRequest_Message{Message: s.msg}
		}
		v, err := m.app.KB.Verify(t.Context(), req)
		if err != nil || !v.Valid {
			t.Errorf("Verify(%s v%d signature) after the restart: %v, %v", s.key, s.version, v, err)
		}
		pk, err := m.app.KB.GetPublicKey(t.Context(), &kbv1.GetPublicKeyRequest{KeyId: s.key, KeyVersion: s.version})
		if err != nil || !bytes.Equal(pk.PublicKey, m.pubs[versionKey(s.key, s.version)]) {
			t.Errorf("GetPublicKey(%s v%d) after the restart: changed, or %v", s.key, s.version, err)
			continue
		}
		checkSignature(t, parsePublicKey(t, s.typ, pk.PublicKey), s.msg, s.digest, s.sig)
	}
	for _, s := range m.macs {
		v, err := m.app.KB.VerifyMac(t.Context(), &kbv1.VerifyMacRequest{KeyId: s.key, KeyVersion: s.version, Message: s.msg, Mac: s.mac})
		if err != nil || !v.Valid {
			t.Errorf("VerifyMac(%s v%d MAC) after the restart: %v, %v", s.key, s.version, v, err)
		}
	}
	for _, s := range m.specs {
		if s.typ != typeAES {
			continue
		}
		enc, err := m.app.KB.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: s.id, Plaintext: []byte("after"), EncryptionContext: opsContext(s.id)})
		if err != nil {
			t.Errorf("Encrypt(%s) after the restart: %v", s.id, err)
			continue
		}
		m.open(t, enc.Ciphertext, opsContext(s.id), s.id, 2, []byte("after"))
	}
	if len(m.sealed) == 0 || len(m.signed) == 0 || len(m.macs) == 0 {
		t.Errorf("nothing to check: %d ciphertexts, %d signatures, %d MACs", len(m.sealed), len(m.signed), len(m.macs))
	}
	t.Logf("after the restart: %d keys as they were; %d ciphertexts, %d signatures and %d MACs checked",
		len(before), len(m.sealed), len(m.signed), len(m.macs))
}
