package managed

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/secret"
)

// fzSource is the key source, material source and backend of the fuzz
// targets. Material is a function of key id and version and the backend's
// key is fixed, so ciphertexts and wrapped data keys in testdata/fuzz open
// in every run whatever random data keys and nonces sealed them.
type fzSource struct{ keys map[string]*Key }

func newFzSource() *fzSource {
	now := time.Unix(1_700_000_000, 0).UTC()
	versions := func(n int) []Version {
		var vs []Version
		for i := 1; i <= n; i++ {
			vs = append(vs, Version{Version: uint32(i), Created: now, RootKey: "softkms:root"})
		}
		return vs
	}
	s := &fzSource{keys: map[string]*Key{}}
	for _, k := range []*Key{
		// Three versions, ciphertexts of the first refused.
		{ID: "payments", Type: AES256GCM, Mode: ModeDerive, Primary: 3, MinDecryptionVersion: 2, Versions: versions(3)},
		{ID: "tenants", Type: AES256GCM, Mode: ModeWrap, Derived: true, Primary: 1, Versions: versions(1)},
		{ID: "hsm", Type: AES256GCM, Mode: ModeBackend, Primary: 1, Versions: versions(1)},
		{ID: "off", Type: AES256GCM, Mode: ModeDerive, State: StateDisabled, Primary: 1, Versions: versions(1)},
		{ID: "tags", Type: HMACSHA256, Mode: ModeDerive, Primary: 1, Versions: versions(1)},
	} {
		if k.State == "" {
			k.State = StateEnabled
		}
		s.keys[k.ID] = k
	}
	return s
}

func (s *fzSource) Get(_ context.Context, id string) (*Key, error) {
	if k, ok := s.keys[id]; ok {
		return k, nil
	}
	return nil, Errorf(ErrNotFound, "key %q does not exist", id)
}

func fzMaterial(id string, v uint32) *secret.Bytes {
	sum := sha256.Sum256(VersionInput("fuzz-material", id, v))
	return secret.Copy(sum[:])
}

func (s *fzSource) Material(_ context.Context, k *Key, v uint32) (*secret.Bytes, error) {
	return fzMaterial(k.ID, v), nil
}

// The backend wraps data keys with AES-256-GCM under a fixed key, bound to
// key id and version, as a root of trust would; a wrapped key that does not
// open is an ErrInvalidArgument, as the Backend interface asks.
var fzBackendKey = bytes.Repeat([]byte{0xb7}, 32)

func fzBackendAEAD() cipher.AEAD {
	b, _ := aes.NewCipher(fzBackendKey)
	a, _ := cipher.NewGCM(b)
	return a
}

func (s *fzSource) WrapDataKey(_ context.Context, k *Key, v uint32, dek []byte) ([]byte, error) {
	nonce := make([]byte, 12)
	_, _ = rand.Read(nonce)
	return fzBackendAEAD().Seal(nonce, nonce, dek, VersionInput("fuzz-backend", k.ID, v)), nil
}

func (s *fzSource) UnwrapDataKey(_ context.Context, k *Key, v uint32, wrapped []byte) (*secret.Bytes, error) {
	if len(wrapped) < 12+16 {
		return nil, Errorf(ErrInvalidArgument, "wrapped data key too short")
	}
	dek, err := fzBackendAEAD().Open(nil, wrapped[:12], wrapped[12:], VersionInput("fuzz-backend", k.ID, v))
	if err != nil {
		return nil, Errorf(ErrInvalidArgument, "wrapped data key does not open")
	}
	return secret.New(dek), nil
}

func (s *fzSource) Sign(context.Context, *Key, uint32, []byte) ([]byte, error) {
	return nil, Errorf(ErrFailedPrecondition, "no signing")
}

func (s *fzSource) MAC(context.Context, *Key, uint32, []byte) (*secret.Bytes, error) {
	return nil, Errorf(ErrFailedPrecondition, "no MACs")
}

func newFzOps(tb testing.TB) (byID, *fzSource) {
	tb.Helper()
	src := newFzSource()
	ops, err := New(Config{Material: src, Backend: src})
	if err != nil {
		tb.Fatal(err)
	}
	o := byID{ops, src}
	return o, src
}

// fzContext turns "k=v\nk2=v2" into an encryption context ("" is none; a
// line without '=' is a key with an empty value).
func fzContext(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for line := range strings.SplitSeq(s, "\n") {
		k, v, _ := strings.Cut(line, "=")
		m[k] = v
	}
	return m
}

// fzRequestError fails unless err is one of the kinds a bad request may
// earn. Any other error becomes Internal at the API edge.
func fzRequestError(t *testing.T, op string, err error) {
	t.Helper()
	for _, kind := range []error{ErrInvalidArgument, ErrNotFound, ErrFailedPrecondition} {
		if errors.Is(err, kind) {
			return
		}
	}
	t.Fatalf("%s error %q is not InvalidArgument, NotFound or FailedPrecondition: it would reach the caller as Internal", op, err)
}

// fzPlaintexts are the only plaintexts FuzzDecrypt's seeds seal.
var fzPlaintexts = [][]byte{[]byte("hello"), nil, bytes.Repeat([]byte("0123456789"), 30)}

// sealVersion seals pt under an older version of a material-backed key, as
// Encrypt did before a rotation.
func sealVersion(tb testing.TB, src *fzSource, id string, v uint32, pt []byte, ectx map[string]string) []byte {
	tb.Helper()
	kek, err := envelope.KEK(fzMaterial(id, v), src.keys[id].Derived, ectx)
	if err != nil {
		tb.Fatal(err)
	}
	dk, err := envelope.GenerateDataKey(kek, id, v)
	if err != nil {
		tb.Fatal(err)
	}
	ct, err := dk.Seal(pt, ectx)
	if err != nil {
		tb.Fatal(err)
	}
	return ct
}

// decryptSeed is a ciphertext, its context and expected key, and whether
// Decrypt opens them.
type decryptSeed struct {
	ct              []byte
	ectx, expectKey string
	opens           bool
}

// decryptSeeds cover every key mode, contexts, rotated and retired
// versions, a disabled key, a key of the wrong type, an unknown key, and
// broken variants.
func decryptSeeds(tb testing.TB) []decryptSeed {
	tb.Helper()
	o, src := newFzOps(tb)
	ctx := context.Background()
	var out []decryptSeed
	for _, id := range []string{"payments", "tenants", "hsm"} {
		for i, ectx := range []string{"", "tenant=42", "tenant=42\npurpose=invoice"} {
			ct, _, err := o.Encrypt(ctx, id, fzPlaintexts[i], fzContext(ectx))
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, decryptSeed{ct, ectx, "", true}, decryptSeed{ct, ectx, id, true})
		}
	}
	good := out[2].ct // payments, tenant=42
	out = append(out,
		decryptSeed{sealVersion(tb, src, "payments", 2, fzPlaintexts[0], nil), "", "payments", true},
		decryptSeed{sealVersion(tb, src, "payments", 1, fzPlaintexts[0], nil), "", "", false},
		decryptSeed{sealVersion(tb, src, "off", 1, fzPlaintexts[0], nil), "", "", false},
		decryptSeed{sealVersion(tb, src, "tags", 1, fzPlaintexts[0], nil), "", "", false},
		decryptSeed{good, "tenant=43", "", false},
		decryptSeed{good, "tenant=42", "tenants", false},
		decryptSeed{good[:len(good)-1], "tenant=42", "", false},
		decryptSeed{bytes.Replace(good, []byte("payments"), []byte("nopenope"), 1), "tenant=42", "", false},
		decryptSeed{[]byte{envelope.FormatStreamV1}, "", "", false},
		decryptSeed{[]byte{}, "=\n" + strings.Repeat("k", 300) + "=v", "", false},
	)
	return out
}

// FuzzDecrypt drives the decryption a node performs for Decrypt (and
// ReEncrypt) with arbitrary ciphertexts, contexts and expected keys, over
// keys of every mode with real material. It checks that nothing panics;
// that every refusal is InvalidArgument, NotFound or FailedPrecondition
// (anything else reaches the caller as Internal); and that what opens is
// one of the seeds' plaintexts, from an enabled AES key at a version not
// below its minimum, the key asked for, and opens under no other context
// and with no byte changed.
func FuzzDecrypt(f *testing.F) {
	o, src := newFzOps(f)
	for i, s := range decryptSeeds(f) {
		f.Add(s.ct, s.ectx, s.expectKey)
		if _, _, _, err := o.Decrypt(f.Context(), s.ct, fzContext(s.ectx), s.expectKey); (err == nil) != s.opens {
			f.Fatalf("seed %d: Decrypt = %v, want it to open: %v", i, err, s.opens)
		}
	}
	f.Fuzz(func(t *testing.T, ct []byte, ectxText, expectKey string) {
		ctx := t.Context()
		ectx := fzContext(ectxText)
		pt, k, v, err := o.Decrypt(ctx, ct, ectx, expectKey)
		if err != nil {
			fzRequestError(t, "Decrypt", err)
			return
		}
		known := false
		for _, p := range fzPlaintexts {
			known = known || bytes.Equal(p, pt)
		}
		if !known {
			t.Fatalf("Decrypt opened a ciphertext to %q, which no seed sealed", pt)
		}
		id, hv, err := PeekKeyID(ct)
		if err != nil || k == nil || k.ID != id || v != hv {
			t.Fatalf("Decrypt says key %v version %d; the header says %q version %d (%v)", k, v, id, hv, err)
		}
		if expectKey != "" && expectKey != id {
			t.Fatalf("Decrypt opened a ciphertext of key %q when %q was expected", id, expectKey)
		}
		if want := src.keys[id]; k.State != StateEnabled || k.Type != AES256GCM || want.Version(v) == nil || v < want.MinDecryptionVersion {
			t.Fatalf("Decrypt opened with key %q (%s, %s) version %d, min %d", id, k.State, k.Type, v, want.MinDecryptionVersion)
		}
		other := maps.Clone(ectx)
		if other == nil {
			other = map[string]string{}
		}
		other["fuzz-extra"] = "x"
		if _, _, _, err := o.Decrypt(ctx, ct, other, ""); err == nil {
			t.Fatal("Decrypt opened the ciphertext under another context too")
		}
		if len(ct) > 2048 {
			return
		}
		for i := range ct {
			bad := bytes.Clone(ct)
			bad[i] ^= 0x01
			if _, _, _, err := o.Decrypt(ctx, bad, ectx, ""); err == nil {
				t.Fatalf("Decrypt opened the ciphertext with byte %d changed", i)
			}
		}
	})
}

// FuzzDecryptDataKey drives DecryptDataKey, the SDK's way to a data key,
// with arbitrary key ids, versions, wrapped keys and contexts. Refusals
// must be InvalidArgument, NotFound or FailedPrecondition; a data key
// returned must be the one the wrapped key really holds (unwrapped here
// independently, under the context's key for derived keys), from an
// enabled AES key at a version not below its minimum.
func FuzzDecryptDataKey(f *testing.F) {
	o, src := newFzOps(f)
	ctx := context.Background()
	for _, id := range []string{"payments", "tenants", "hsm"} {
		for _, ectx := range []string{"", "tenant=42"} {
			dk, err := o.GenerateDataKey(ctx, id, fzContext(ectx), true)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(id, dk.Key.Primary, dk.Wrapped, ectx)
			if _, _, err := o.DecryptDataKey(ctx, id, dk.Key.Primary, dk.Wrapped, fzContext(ectx)); err != nil {
				f.Fatalf("DecryptDataKey of a fresh %s data key: %v", id, err)
			}
			f.Add(id, dk.Key.Primary, dk.Wrapped, ectx+"x")
			f.Add(id, dk.Key.Primary+1, dk.Wrapped, ectx)
		}
	}
	for _, v := range []uint32{1, 2} {
		kek, _ := envelope.KEK(fzMaterial("payments", v), false, nil)
		w, err := envelope.WrapDataKey(kek, "payments", v, bytes.Repeat([]byte{1}, envelope.DEKSize))
		if err != nil {
			f.Fatal(err)
		}
		f.Add("payments", v, w, "")
	}
	f.Add("off", uint32(1), make([]byte, envelope.WrappedDEKLen), "")
	f.Add("tags", uint32(1), make([]byte, envelope.WrappedDEKLen), "")
	f.Add("-bad", uint32(0), []byte{}, "")
	f.Fuzz(func(t *testing.T, id string, v uint32, wrapped []byte, ectxText string) {
		ectx := fzContext(ectxText)
		dek, k, err := o.DecryptDataKey(t.Context(), id, v, wrapped, ectx)
		if err != nil {
			fzRequestError(t, "DecryptDataKey", err)
			return
		}
		defer dek.Destroy()
		want := src.keys[id]
		if want == nil || k.ID != id || k.State != StateEnabled || k.Type != AES256GCM || want.Version(v) == nil || v < want.MinDecryptionVersion {
			t.Fatalf("DecryptDataKey(%q, %d) returned a data key of %v", id, v, k)
		}
		var got *secret.Bytes
		if want.Mode == ModeBackend {
			got, err = src.UnwrapDataKey(t.Context(), want, v, wrapped)
		} else {
			var kek *secret.Bytes
			if kek, err = envelope.KEK(fzMaterial(id, v), want.Derived, ectx); err == nil {
				var dk *envelope.DataKey
				if dk, err = envelope.UnwrapDataKey(kek, id, v, wrapped); err == nil {
					got = dk.Key()
				}
			}
		}
		if err != nil {
			t.Fatalf("DecryptDataKey(%q, %d, %x, %q) returned a data key the wrapped key does not hold: %v", id, v, wrapped, ectxText, err)
		}
		if !got.Equal(dek) {
			t.Fatalf("DecryptDataKey(%q, %d) returned another data key than the wrapped one", id, v)
		}
	})
}

// FuzzValidateMeta checks the validation CreateKey and the registry apply
// to a key's metadata (id, type, mode, rotation, description, labels,
// placement): refusals are InvalidArgument; an accepted key has an id a
// ciphertext header can carry, labels and a placement Cedar takes, and
// (given the UTF-8 strings the API delivers) survives the registry's JSON
// encoding unchanged and still valid.
func FuzzValidateMeta(f *testing.F) {
	f.Add("payments", "aes-256-gcm", "derive", false, int64(0), "", "", "team=payments")
	f.Add("billing/invoices:v2", "aes-256-gcm", "wrap", true, int64(30*24*time.Hour), "invoices", `principal.region == "eu"`, "team=billing\nenv=prod")
	f.Add("signer", "ecdsa-p256", "backend", false, int64(time.Hour), "", `principal.hasTag("pci") && principal.getTag("pci") == "yes"`, "")
	f.Add("mac.1", "hmac-sha256", "derive", false, int64(0), strings.Repeat("d", 1025), "", "")
	f.Add("k", "aes-256-gcm", "backend", true, int64(0), "", "", "")
	f.Add("k", "ed25519", "derive", true, int64(0), "", "", "")
	f.Add(".hidden", "AES-256-GCM", "Derive", false, int64(-1), "", "true } ; permit (principal, action, resource) when { true", "=x")
	f.Add(strings.Repeat("a", 129), "aes-256-gcm", "derive", false, int64(0), "", "principal.nope", "a/b.c-d_e="+strings.Repeat("v", 257))
	f.Fuzz(func(t *testing.T, id, typ, mode string, derived bool, rotation int64, description, placement, labelsText string) {
		k := &Key{ID: id, Type: KeyType(typ), Mode: Mode(mode), Derived: derived, State: StateEnabled,
			RotationPeriod: time.Duration(rotation), Description: description, Placement: placement, Labels: fzContext(labelsText)}
		err := k.ValidateMeta()
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("ValidateMeta error %v is not InvalidArgument", err)
			}
			return
		}
		if !envelope.ValidKeyID(k.ID) {
			t.Fatalf("key id %q is valid for a key but not in a ciphertext header", k.ID)
		}
		if !k.Type.Valid() || !k.Mode.Valid() || len(k.Description) > 1024 || len(k.Labels) > MaxLabels ||
			(k.RotationPeriod != 0 && k.RotationPeriod < MinRotationPeriod) || (k.Derived && (k.Type != AES256GCM || k.Mode == ModeBackend)) {
			t.Fatalf("ValidateMeta accepted %+v", k)
		}
		if k.Placement != "" {
			if err := policy.ValidatePlacement(k.ID, k.Placement); err != nil {
				t.Fatalf("ValidateMeta accepted a placement ValidatePlacement refuses: %v", err)
			}
		}
		// Cedar takes the key as a resource, and its placement as policies.
		set, err := policy.Parse(map[string][]byte{"f.cedar": []byte(`permit (principal is Edge, action == Action::"HoldMaterial", resource);`)})
		if err != nil {
			t.Fatal(err)
		}
		res := policy.Key{Name: k.ID, Type: string(k.Type), Mode: string(k.Mode), Labels: k.Labels}
		edge := policy.Principal{Kind: policy.KindEdge, Name: "e", TrustDomain: "kb.test", Region: "eu", Labels: k.Labels}
		set.AuthorizeKey(policy.Principal{Kind: policy.KindClient, Name: "c", Labels: k.Labels}, policy.Encrypt, res)
		if d := set.AuthorizeHoldMaterial(edge, res, k.Placement); k.Placement != "" && len(d.Policies) == 0 && len(d.Errors) == 0 && d.Allowed {
			t.Fatalf("HoldMaterial allowed with no deciding policy: %+v", d)
		}
		if !utf8.ValidString(k.ID+k.Description+k.Placement) || !validUTF8Map(k.Labels) {
			return
		}
		raw, err := json.Marshal(k)
		if err != nil {
			t.Fatal(err)
		}
		var back Key
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatalf("stored key does not decode: %v\n%s", err, raw)
		}
		if diff := cmp.Diff(k, &back); diff != "" {
			t.Fatalf("key changed through JSON (-validated +stored):\n%s", diff)
		}
		if err := back.ValidateMeta(); err != nil {
			t.Fatalf("stored key no longer validates: %v", err)
		}
	})
}

func validUTF8Map(m map[string]string) bool {
	for k, v := range m {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// FuzzPageAfter: any page token and selector give an id or
// ErrInvalidArgument, never a panic; an id given back is a valid key id,
// and a token made for it with the same selector gives it back.
func FuzzPageAfter(f *testing.F) {
	f.Add(PageToken(map[string]string{"team": "x"}, "tenant-0042"), "team", "x")
	f.Add("tenant-0042", "", "")
	f.Add("k1.", "a", "")
	f.Add("k1.AAAAAAAAAAAA", "", "")
	f.Fuzz(func(t *testing.T, token, name, value string) {
		sel := map[string]string{}
		if name != "" {
			sel[name] = value
		}
		id, err := PageAfter(token, sel)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("PageAfter(%q) = %v, want ErrInvalidArgument", token, err)
			}
			return
		}
		if token == "" {
			return
		}
		if !envelope.ValidKeyID(id) {
			t.Fatalf("PageAfter(%q) = %q, not a key id", token, id)
		}
		if again, err := PageAfter(PageToken(sel, id), sel); err != nil || again != id {
			t.Fatalf("round trip of %q = %q, %v", id, again, err)
		}
	})
}
