package pkcs11

import (
	"context"

	"github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/secret"
)

// KWP limits. SoftHSM 2.6.1 zero-pads a key whose length is not a multiple
// of 8 before wrapping it and records the padded length in the KWP header,
// so such a key would unwrap longer than it went in; WrapKWP therefore only
// takes multiples of 8, for which KWP is exact on every module.
const (
	kwpBlock     = 8
	minKWPInput  = 8
	minKWPOutput = 16
)

// WrapKWP wraps material (8..MaxEncryptInput bytes, a multiple of 8) under an
// aes-256 key with AES key wrap with padding (RFC 5649, CKM_AES_KEY_WRAP_PAD).
// Unlike Encrypt it binds no aad and needs no IV; its integrity check is
// KWP's own. The material is imported as a short-lived, extractable session
// object (it is already in the caller's memory) and destroyed after
// C_WrapKey.
func (b *Backend) WrapKWP(ctx context.Context, key string, material []byte) ([]byte, error) {
	switch {
	case key == "":
		return nil, backends.Errorf(scheme, opWrapKWP, key, backends.ErrInvalidArgument, "empty key name")
	case len(material) < minKWPInput || len(material) > backends.MaxEncryptInput || len(material)%kwpBlock != 0:
		return nil, backends.Errorf(scheme, opWrapKWP, key, backends.ErrInvalidArgument,
			"material is %d bytes; KWP takes a multiple of %d bytes in %d..%d", len(material), kwpBlock, minKWPInput, backends.MaxEncryptInput)
	}
	var out []byte
	err := b.exec(ctx, opWrapKWP, key, func(c *conn) error {
		k, err := b.resolve(c, opWrapKWP, key, backends.AES256)
		if err != nil {
			return err
		}
		if err := c.check(); err != nil {
			return err
		}
		tmp, err := c.p.CreateObject(c.s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, material),
		})
		if err != nil {
			return ck("C_CreateObject", err)
		}
		defer c.destroy(tmp)
		w, err := c.p.WrapKey(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, k.h, tmp)
		if err != nil {
			return ck("C_WrapKey", err)
		}
		out = w
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UnwrapKWP reverses WrapKWP. A wrapped value that fails KWP's integrity
// check (tampered, or wrapped under another key) is ErrDecryptionFailed.
func (b *Backend) UnwrapKWP(ctx context.Context, key string, wrapped []byte) (*secret.Bytes, error) {
	switch {
	case key == "":
		return nil, backends.Errorf(scheme, opUnwrapKWP, key, backends.ErrInvalidArgument, "empty key name")
	case len(wrapped) < minKWPOutput || len(wrapped) > backends.MaxCiphertext || len(wrapped)%kwpBlock != 0:
		return nil, backends.Errorf(scheme, opUnwrapKWP, key, backends.ErrInvalidArgument,
			"wrapped value is %d bytes; KWP output is a multiple of %d bytes in %d..%d", len(wrapped), kwpBlock, minKWPOutput, backends.MaxCiphertext)
	}
	var out []byte
	err := b.exec(ctx, opUnwrapKWP, key, func(c *conn) error {
		k, err := b.resolve(c, opUnwrapKWP, key, backends.AES256)
		if err != nil {
			return err
		}
		if err := c.check(); err != nil {
			return err
		}
		tmp, err := c.p.UnwrapKey(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, k.h, wrapped, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		})
		if err != nil {
			return ck("C_UnwrapKey", err)
		}
		defer c.destroy(tmp)
		a, err := c.attrs(tmp, pkcs11.CKA_VALUE)
		if err != nil {
			return err
		}
		out = a[pkcs11.CKA_VALUE]
		return nil
	})
	if err != nil {
		return nil, err
	}
	return secret.New(out), nil
}

// destroy removes a temporary session object. If that fails the session is
// closed instead of pooled, which destroys its session objects.
func (c *conn) destroy(h pkcs11.ObjectHandle) {
	if err := c.p.DestroyObject(c.s.h, h); err != nil {
		c.s.poisoned = true
	}
}
