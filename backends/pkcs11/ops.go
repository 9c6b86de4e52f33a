package pkcs11

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"slices"

	"github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/secret"
)

// CreatableAlgorithms implements backends.CreatesAlgorithms.
func (b *Backend) CreatableAlgorithms() []backends.Algorithm { return slices.Clone(creatable) }

// sealGCM encrypts under an AES key with a fresh 12-byte IV from
// crypto/rand and returns iv ‖ ciphertext ‖ tag.
func (c *conn) sealGCM(h pkcs11.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, gcmIVLen, gcmIVLen+len(plaintext)+gcmTagLen)
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	params := pkcs11.NewGCMParams(out, aad, gcmTagLen*8)
	defer params.Free()
	if err := c.check(); err != nil {
		return nil, err
	}
	if err := c.p.EncryptInit(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
		return nil, ck("C_EncryptInit", err)
	}
	ct, err := c.p.Encrypt(c.s.h, plaintext)
	if err != nil {
		c.poisonUnlessTerminated(err)
		return nil, ck("C_Encrypt", err)
	}
	if len(ct) != len(plaintext)+gcmTagLen {
		return nil, fmt.Errorf("C_Encrypt returned %d bytes for %d bytes of plaintext, want %d", len(ct), len(plaintext), len(plaintext)+gcmTagLen)
	}
	// Some modules (CloudHSM) ignore the caller's IV and write their own
	// back into the parameters; keep whichever was used.
	if iv := params.IV(); len(iv) == gcmIVLen && !bytes.Equal(iv, out) {
		copy(out, iv)
	} else if len(iv) != gcmIVLen {
		return nil, fmt.Errorf("module used a %d-byte GCM IV", len(iv))
	}
	return append(out, ct...), nil
}

// openGCM decrypts iv ‖ ciphertext ‖ tag.
func (c *conn) openGCM(h pkcs11.ObjectHandle, ciphertext, aad []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(ciphertext[:gcmIVLen], aad, gcmTagLen*8)
	defer params.Free()
	if err := c.check(); err != nil {
		return nil, err
	}
	if err := c.p.DecryptInit(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
		return nil, ck("C_DecryptInit", err)
	}
	pt, err := c.p.Decrypt(c.s.h, ciphertext[gcmIVLen:])
	if err != nil {
		c.poisonUnlessTerminated(err)
		return nil, ck("C_Decrypt", err)
	}
	return pt, nil
}

// poisonUnlessTerminated marks the session for closing when a single-part
// call failed in a way that may leave its operation active. Per PKCS#11 a
// failed C_Encrypt/C_Decrypt/C_Sign ends the operation except on
// CKR_BUFFER_TOO_SMALL; we trust that for the codes a bad input produces and
// do not trust it for anything unexpected.
func (c *conn) poisonUnlessTerminated(err error) {
	rv, _ := rvOf(err)
	if recoveryFor(err) != recoverNone || decryptFailure("C_Decrypt", rv) || kindOf(rv) == backends.ErrInvalidArgument {
		return
	}
	c.s.poisoned = true
}

// hmac computes HMAC-SHA256 with a generic-secret key.
func (c *conn) hmac(h pkcs11.ObjectHandle, data []byte) ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if err := c.p.SignInit(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, h); err != nil {
		return nil, ck("C_SignInit", err)
	}
	tag, err := c.p.Sign(c.s.h, data)
	if err != nil {
		c.poisonUnlessTerminated(err)
		return nil, ck("C_Sign", err)
	}
	if len(tag) != 32 {
		clear(tag)
		return nil, fmt.Errorf("CKM_SHA256_HMAC returned %d bytes, want 32", len(tag))
	}
	return tag, nil
}

func (c *conn) random(n int) ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	out, err := c.p.GenerateRandom(c.s.h, n)
	if err != nil {
		return nil, ck("C_GenerateRandom", err)
	}
	if len(out) != n {
		return nil, fmt.Errorf("C_GenerateRandom returned %d bytes, want %d", len(out), n)
	}
	return out, nil
}

// Encrypt seals plaintext with AES-256-GCM under an aes-256 key. The IV is
// 12 bytes from crypto/rand (the kernel CSPRNG): GCM needs IVs that never
// repeat, not secret ones, and drawing them in Go saves a round trip to the
// token per call. With random IVs, NIST SP 800-38D limits a key to 2^32
// encryptions. The result is iv ‖ ciphertext ‖ tag.
func (b *Backend) Encrypt(ctx context.Context, key string, plaintext, aad []byte) ([]byte, error) {
	var out []byte
	err := b.exec(ctx, opEncrypt, key, func(c *conn) error {
		k, err := b.resolve(c, opEncrypt, key, backends.AES256)
		if err != nil {
			return err
		}
		out, err = c.sealGCM(k.h, plaintext, aad)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Decrypt opens a ciphertext from Encrypt. A ciphertext shorter than a
// 12-byte IV and a 16-byte tag is ErrInvalidArgument; a wrong key, wrong aad
// or any tampering is ErrDecryptionFailed.
func (b *Backend) Decrypt(ctx context.Context, key string, ciphertext, aad []byte) (*secret.Bytes, error) {
	if len(ciphertext) < gcmIVLen+gcmTagLen {
		return nil, backends.Errorf(scheme, opDecrypt, key, backends.ErrInvalidArgument,
			"ciphertext is %d bytes, shorter than a %d-byte IV and a %d-byte tag", len(ciphertext), gcmIVLen, gcmTagLen)
	}
	var pt []byte
	err := b.exec(ctx, opDecrypt, key, func(c *conn) error {
		k, err := b.resolve(c, opDecrypt, key, backends.AES256)
		if err != nil {
			return err
		}
		pt, err = c.openGCM(k.h, ciphertext, aad)
		return err
	})
	if err != nil {
		return nil, err
	}
	return secret.New(pt), nil
}

// GenerateRandom returns n bytes from the token's C_GenerateRandom.
func (b *Backend) GenerateRandom(ctx context.Context, n int) ([]byte, error) {
	var out []byte
	err := b.exec(ctx, opRandom, "", func(c *conn) error {
		var err error
		out, err = c.random(n)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Describe reports a key's algorithm. A key the broker refuses to use
// (extractable or not sensitive) is ErrPermissionDenied.
func (b *Backend) Describe(ctx context.Context, key string) (backends.KeyInfo, error) {
	var info backends.KeyInfo
	err := b.exec(ctx, opDescribe, key, func(c *conn) error {
		k, err := b.resolve(c, opDescribe, key, "")
		if err != nil {
			return err
		}
		info = backends.KeyInfo{Key: key, Algorithm: k.alg, Enabled: true}
		return nil
	})
	return info, err
}

// MAC computes HMAC-SHA256 inside the token (CKM_SHA256_HMAC on a
// generic-secret key of at least 32 bytes).
func (b *Backend) MAC(ctx context.Context, key string, data []byte) (*secret.Bytes, error) {
	var tag []byte
	err := b.exec(ctx, opMAC, key, func(c *conn) error {
		k, err := b.resolve(c, opMAC, key, backends.HMAC256)
		if err != nil {
			return err
		}
		tag, err = c.hmac(k.h, data)
		return err
	})
	if err != nil {
		return nil, err
	}
	return secret.New(tag), nil
}

// VerifyMAC recomputes the tag in the token and compares in constant time;
// a mismatch is ErrDecryptionFailed.
func (b *Backend) VerifyMAC(ctx context.Context, key string, data, tag []byte) error {
	return b.exec(ctx, opVerifyMAC, key, func(c *conn) error {
		k, err := b.resolve(c, opVerifyMAC, key, backends.HMAC256)
		if err != nil {
			return err
		}
		want, err := c.hmac(k.h, data)
		if err != nil {
			return err
		}
		ok := subtle.ConstantTimeCompare(want, tag) == 1
		clear(want)
		if !ok {
			return backends.Errorf(scheme, opVerifyMAC, key, backends.ErrDecryptionFailed, "tag mismatch")
		}
		return nil
	})
}

// Sign signs a SHA-256 digest with an ecdsa-p256 key: raw CKM_ECDSA (SoftHSM
// has no CKM_ECDSA_SHA256), its r‖s converted to ASN.1 DER.
func (b *Backend) Sign(ctx context.Context, key string, digest []byte) ([]byte, error) {
	if len(digest) != 32 {
		return nil, backends.Errorf(scheme, opSign, key, backends.ErrInvalidArgument,
			"digest is %d bytes; ecdsa-p256 signs a 32-byte SHA-256 digest", len(digest))
	}
	var sig []byte
	err := b.exec(ctx, opSign, key, func(c *conn) error {
		k, err := b.resolve(c, opSign, key, backends.ECDSAP256)
		if err != nil {
			return err
		}
		if err := c.check(); err != nil {
			return err
		}
		if err := c.p.SignInit(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, k.h); err != nil {
			return ck("C_SignInit", err)
		}
		raw, err := c.p.Sign(c.s.h, digest)
		if err != nil {
			c.poisonUnlessTerminated(err)
			return ck("C_Sign", err)
		}
		sig, err = ecdsaDER(raw)
		return err
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// PublicKey returns the *ecdsa.PublicKey of an ecdsa-p256 key, read from
// CKA_EC_POINT of the public key object with the same label (or id).
func (b *Backend) PublicKey(ctx context.Context, key string) (crypto.PublicKey, error) {
	var pub *ecdsa.PublicKey
	err := b.exec(ctx, opPublicKey, key, func(c *conn) error {
		k, err := b.resolve(c, opPublicKey, key, backends.ECDSAP256)
		if err != nil {
			return err
		}
		if k.point == nil {
			return backends.Errorf(scheme, opPublicKey, key, backends.ErrNotFound,
				"the private key has no public key object with the same %s", nameKind(key))
		}
		if pub, err = parseECPoint(k.point); err != nil {
			return backends.NewError(scheme, opPublicKey, key, backends.ErrInvalidArgument, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pub, nil
}

// GenerateDataKey draws a 256-bit data key from the token's RNG and seals
// it under key as Encrypt does, in one session.
func (b *Backend) GenerateDataKey(ctx context.Context, key string, aad []byte) (*secret.Bytes, []byte, error) {
	var dek, wrapped []byte
	err := b.exec(ctx, opDataKey, key, func(c *conn) error {
		k, err := b.resolve(c, opDataKey, key, backends.AES256)
		if err != nil {
			return err
		}
		d, err := c.random(32)
		if err != nil {
			return err
		}
		w, err := c.sealGCM(k.h, d, aad)
		if err != nil {
			clear(d)
			return err
		}
		dek, wrapped = d, w
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return secret.New(dek), wrapped, nil
}

// CreateKey creates a token key labelled name: aes-256 (encrypt, decrypt,
// wrap, unwrap), hmac-256 (a 32-byte generic secret: sign, verify) or
// ecdsa-p256 (a key pair: private sign, public verify). Keys are sensitive,
// never extractable and private. An existing label is ErrInvalidArgument.
// The check and the creation are atomic within this backend, not against
// other processes using the token.
func (b *Backend) CreateKey(ctx context.Context, name string, alg backends.Algorithm) (backends.KeyInfo, error) {
	if err := validLabel(name); err != nil {
		return backends.KeyInfo{}, backends.NewError(scheme, opCreateKey, name, backends.ErrInvalidArgument, err)
	}
	if !slices.Contains(creatable, alg) {
		kind := backends.ErrInvalidArgument
		if alg.Valid() {
			kind = backends.ErrUnsupported
		}
		return backends.KeyInfo{}, backends.Errorf(scheme, opCreateKey, name, kind, "cannot create %q keys (creatable: %v)", alg, creatable)
	}
	if err := lock(ctx, b.createMu); err != nil {
		return backends.KeyInfo{}, wrapErr(opCreateKey, name, err)
	}
	defer unlock(b.createMu)
	err := b.exec(ctx, opCreateKey, name, func(c *conn) error { return b.create(c, name, alg) })
	if err != nil {
		return backends.KeyInfo{}, err
	}
	return backends.KeyInfo{Key: name, Algorithm: alg, Enabled: true}, nil
}

// Health checks that a session is logged in and the token is present.
func (b *Backend) Health(ctx context.Context) error {
	return b.exec(ctx, opHealth, "", func(c *conn) error {
		if err := c.loggedIn(); err != nil {
			return err
		}
		if _, err := c.p.GetTokenInfo(uint(b.slot.Load())); err != nil {
			return ck("C_GetTokenInfo", err)
		}
		return nil
	})
}
