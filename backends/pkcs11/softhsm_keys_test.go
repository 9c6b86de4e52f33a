package pkcs11_test

import (
	"errors"
	"fmt"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

// TestCreatedKeyAttributes reads back, behind the backend, the attributes
// of the keys CreateKey makes.
func TestCreatedKeyAttributes(t *testing.T) {
	tok := softhsmtest.New(t)
	b := newBackend(t, tok, nil)
	k := createKeys(t, b)
	r := newRaw(t, tok)
	h := r.session(t, tok.PIN)
	for _, tc := range []struct {
		label string
		class uint
		want  map[uint]bool
	}{
		{k.aes, p11.CKO_SECRET_KEY, map[uint]bool{
			p11.CKA_TOKEN: true, p11.CKA_PRIVATE: true, p11.CKA_SENSITIVE: true, p11.CKA_EXTRACTABLE: false,
			p11.CKA_ENCRYPT: true, p11.CKA_DECRYPT: true, p11.CKA_WRAP: true, p11.CKA_UNWRAP: true,
			p11.CKA_SIGN: false, p11.CKA_VERIFY: false, p11.CKA_DERIVE: false,
		}},
		{k.hmac, p11.CKO_SECRET_KEY, map[uint]bool{
			p11.CKA_TOKEN: true, p11.CKA_PRIVATE: true, p11.CKA_SENSITIVE: true, p11.CKA_EXTRACTABLE: false,
			p11.CKA_SIGN: true, p11.CKA_VERIFY: true, p11.CKA_ENCRYPT: false, p11.CKA_DECRYPT: false,
			p11.CKA_WRAP: false, p11.CKA_UNWRAP: false, p11.CKA_DERIVE: false,
		}},
		{k.ecdsa, p11.CKO_PRIVATE_KEY, map[uint]bool{
			p11.CKA_TOKEN: true, p11.CKA_PRIVATE: true, p11.CKA_SENSITIVE: true, p11.CKA_EXTRACTABLE: false,
			p11.CKA_SIGN: true, p11.CKA_DECRYPT: false, p11.CKA_UNWRAP: false, p11.CKA_DERIVE: false,
		}},
		{k.ecdsa, p11.CKO_PUBLIC_KEY, map[uint]bool{
			p11.CKA_TOKEN: true, p11.CKA_VERIFY: true, p11.CKA_ENCRYPT: false, p11.CKA_WRAP: false,
		}},
	} {
		obj := r.find(t, h, tc.label, tc.class)
		var tmpl []*p11.Attribute
		for a := range tc.want {
			tmpl = append(tmpl, p11.NewAttribute(a, nil))
		}
		got, err := r.p.GetAttributeValue(h, obj, tmpl)
		if err != nil {
			t.Fatalf("C_GetAttributeValue(%q): %v", tc.label, err)
		}
		for _, a := range got {
			if v := len(a.Value) == 1 && a.Value[0] != 0; v != tc.want[a.Type] {
				t.Errorf("%q (class %d) attribute 0x%x = %v, want %v", tc.label, tc.class, a.Type, v, tc.want[a.Type])
			}
		}
	}
	if _, err := b.CreateKey(t.Context(), k.aes, backends.HMAC256); !isKind(err, backends.ErrInvalidArgument) {
		t.Errorf("CreateKey over an existing label of another type = %v, want ErrInvalidArgument", err)
	}
	for _, name := range []string{"", "id=%01", "bad\nlabel"} {
		if _, err := b.CreateKey(t.Context(), name, backends.AES256); !isKind(err, backends.ErrInvalidArgument) {
			t.Errorf("CreateKey(%q) = %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := b.CreateKey(t.Context(), "ed", backends.Ed25519); !isKind(err, backends.ErrUnsupported) {
		t.Errorf("CreateKey(ed25519) = %v, want ErrUnsupported", err)
	}
}

// TestUnsupportedKeys gives the backend keys it must not take for root
// keys: wrong sizes and types, and ambiguous labels.
func TestUnsupportedKeys(t *testing.T) {
	tok := softhsmtest.New(t)
	b := newBackend(t, tok, nil)
	r := newRaw(t, tok)
	h := r.session(t, tok.PIN)
	protected := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true), p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
	}
	gen := func(label string, mech uint, extra ...*p11.Attribute) {
		t.Helper()
		tmpl := append(append([]*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, label)}, protected...), extra...)
		if _, err := r.p.GenerateKey(h, []*p11.Mechanism{p11.NewMechanism(mech, nil)}, tmpl); err != nil {
			t.Fatalf("C_GenerateKey(%q): %v", label, err)
		}
	}
	gen("aes-128", p11.CKM_AES_KEY_GEN, p11.NewAttribute(p11.CKA_VALUE_LEN, 16))
	gen("hmac-short", p11.CKM_GENERIC_SECRET_KEY_GEN, p11.NewAttribute(p11.CKA_VALUE_LEN, 16))
	gen("twice", p11.CKM_AES_KEY_GEN, p11.NewAttribute(p11.CKA_VALUE_LEN, 32))
	gen("twice", p11.CKM_AES_KEY_GEN, p11.NewAttribute(p11.CKA_VALUE_LEN, 32))
	_, _, err := r.p.GenerateKeyPair(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*p11.Attribute{p11.NewAttribute(p11.CKA_TOKEN, true), p11.NewAttribute(p11.CKA_LABEL, "p384"),
			p11.NewAttribute(p11.CKA_EC_PARAMS, []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22})},
		append([]*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, "p384"), p11.NewAttribute(p11.CKA_SIGN, true)}, protected...))
	if err != nil {
		t.Fatalf("C_GenerateKeyPair(P-384): %v", err)
	}
	for _, label := range []string{"aes-128", "hmac-short", "twice", "p384"} {
		_, err := b.Describe(t.Context(), label)
		wantKind(t, fmt.Sprintf("Describe(%q)", label), err, backends.ErrInvalidArgument)
	}
}

func isKind(err, kind error) bool {
	var be *backends.Error
	return err != nil && errors.As(err, &be) && errors.Is(err, kind)
}
