package pkcs11

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/backends"
)

// conn is one operation's view of its session: the calls it makes and the
// context it checks before each of them. A PKCS#11 call cannot be
// interrupted, so the context is checked before each call sequence (an
// Init and its final call form one sequence: abandoning it half-way would
// leave an operation active on the session).
type conn struct {
	ctx context.Context
	p   *pkcs11.Ctx
	m   *module
	s   *session
	gen uint64 // module generation, read under the gate's read lock
}

func (c *conn) check() error { return c.ctx.Err() }

// keyEntry is a resolved root key. Entries are cached by key name and valid
// for one module generation: any event that may have invalidated object
// handles (a stale handle, closed sessions, a re-initialisation) moves the
// module to a new generation and so retires every entry.
type keyEntry struct {
	gen   uint64
	alg   backends.Algorithm
	h     pkcs11.ObjectHandle // the secret or private key
	point []byte              // CKA_EC_POINT of the matching public key, if any
}

// resolve finds the key named name and checks it may serve an operation
// needing want ("" accepts any algorithm).
func (b *Backend) resolve(c *conn, op, name string, want backends.Algorithm) (*keyEntry, error) {
	var e *keyEntry
	if v, ok := b.keys.Load(name); ok && v.(*keyEntry).gen == c.gen {
		e = v.(*keyEntry)
	} else {
		var err error
		if e, err = b.find(c, op, name); err != nil {
			return nil, err
		}
		b.keys.Store(name, e)
	}
	if want != "" && e.alg != want {
		return nil, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument,
			"key is %s; %s needs %s", e.alg, op, want)
	}
	return e, nil
}

// attr helpers decode CK_ULONG and CK_BBOOL attribute values.
func attrULong(v []byte) (uint64, bool) {
	switch len(v) {
	case 8:
		return binary.NativeEndian.Uint64(v), true
	case 4:
		return uint64(binary.NativeEndian.Uint32(v)), true
	}
	return 0, false
}

func attrBool(v []byte) bool { return len(v) == 1 && v[0] != 0 }

// attrs reads attributes of one object into a map.
func (c *conn) attrs(h pkcs11.ObjectHandle, types ...uint) (map[uint][]byte, error) {
	tmpl := make([]*pkcs11.Attribute, len(types))
	for i, t := range types {
		tmpl[i] = pkcs11.NewAttribute(t, nil)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	got, err := c.p.GetAttributeValue(c.s.h, pkcs11.ObjectHandle(h), tmpl)
	if err != nil {
		return nil, ck("C_GetAttributeValue", err)
	}
	out := make(map[uint][]byte, len(got))
	for _, a := range got {
		out[a.Type] = a.Value
	}
	return out, nil
}

// findObjects runs one C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal
// sequence.
func (c *conn) findObjects(tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if err := c.p.FindObjectsInit(c.s.h, tmpl); err != nil {
		return nil, ck("C_FindObjectsInit", err)
	}
	hs, _, err := c.p.FindObjects(c.s.h, max)
	if ferr := c.p.FindObjectsFinal(c.s.h); err == nil && ferr != nil {
		err = ck("C_FindObjectsFinal", ferr)
	} else if err != nil {
		err = ck("C_FindObjects", err)
	}
	if err != nil {
		return nil, err
	}
	for _, h := range hs {
		c.m.noteHandle(uint(h))
	}
	return hs, nil
}

// loggedIn reports whether the session sees private objects. A session that
// lost its login (C_Logout or C_CloseAllSessions elsewhere in the process)
// finds no private keys, which must not be mistaken for "no such key".
func (c *conn) loggedIn() error {
	if err := c.check(); err != nil {
		return err
	}
	info, err := c.p.GetSessionInfo(c.s.h)
	if err != nil {
		return ck("C_GetSessionInfo", err)
	}
	if info.State != pkcs11.CKS_RO_USER_FUNCTIONS && info.State != pkcs11.CKS_RW_USER_FUNCTIONS {
		return &callError{fn: "C_GetSessionInfo", rv: pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN)}
	}
	return nil
}

// keyTemplate is the search template of a key name: its label, or its id.
func keyTemplate(op, name string) ([]*pkcs11.Attribute, error) {
	if name == "" {
		return nil, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument, "empty key name")
	}
	label, id, err := backends.PKCS11KeyName(name)
	if err != nil {
		return nil, backends.NewError(scheme, op, name, backends.ErrInvalidArgument, err)
	}
	if id != nil {
		return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)}, nil
	}
	return []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}, nil
}

// find looks a key up on the token and classifies it. The name may match a
// secret key, or a private key and its public key (same label or id);
// anything else is ambiguous.
func (b *Backend) find(c *conn, op, name string) (*keyEntry, error) {
	tmpl, err := keyTemplate(op, name)
	if err != nil {
		return nil, err
	}
	hs, err := c.findObjects(tmpl, 16)
	if err != nil {
		return nil, err
	}
	var secrets, privates, publics []pkcs11.ObjectHandle
	for _, h := range hs {
		a, err := c.attrs(h, pkcs11.CKA_CLASS)
		if err != nil {
			return nil, err
		}
		switch class, _ := attrULong(a[pkcs11.CKA_CLASS]); class {
		case pkcs11.CKO_SECRET_KEY:
			secrets = append(secrets, h)
		case pkcs11.CKO_PRIVATE_KEY:
			privates = append(privates, h)
		case pkcs11.CKO_PUBLIC_KEY:
			publics = append(publics, h)
		}
	}
	switch {
	case len(secrets)+len(privates) == 0:
		if err := c.loggedIn(); err != nil {
			return nil, err
		}
		return nil, backends.Errorf(scheme, op, name, backends.ErrNotFound, "no secret or private key with this %s on the token", nameKind(name))
	case len(secrets)+len(privates) > 1:
		return nil, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument,
			"%s names %d keys (%d secret, %d private); give each root key a unique label", nameKind(name), len(secrets)+len(privates), len(secrets), len(privates))
	}
	e := &keyEntry{gen: c.gen}
	types := []uint{pkcs11.CKA_KEY_TYPE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
		pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE}
	if len(secrets) == 1 {
		e.h = secrets[0]
		types = append(types, pkcs11.CKA_VALUE_LEN)
	} else {
		e.h = privates[0]
	}
	a, err := c.attrs(e.h, types...)
	if err != nil {
		return nil, err
	}
	if err := b.checkProtected(op, name, a); err != nil {
		return nil, err
	}
	keyType, _ := attrULong(a[pkcs11.CKA_KEY_TYPE])
	if len(secrets) == 1 {
		n, _ := attrULong(a[pkcs11.CKA_VALUE_LEN])
		switch {
		case keyType == pkcs11.CKK_AES && n == 32:
			e.alg = backends.AES256
		case (keyType == pkcs11.CKK_GENERIC_SECRET || keyType == pkcs11.CKK_SHA256_HMAC) && n >= 32:
			e.alg = backends.HMAC256
		default:
			return nil, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument,
				"unsupported secret key (CKA_KEY_TYPE 0x%x, %d bytes): root keys are 32-byte AES or generic-secret keys of at least 32 bytes", keyType, n)
		}
		return e, nil
	}
	if keyType != pkcs11.CKK_EC {
		return nil, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument,
			"unsupported private key (CKA_KEY_TYPE 0x%x): only EC P-256 keys are supported", keyType)
	}
	p, err := c.attrs(e.h, pkcs11.CKA_EC_PARAMS)
	if err != nil {
		return nil, err
	}
	if !isP256(p[pkcs11.CKA_EC_PARAMS]) {
		return nil, backends.Errorf(scheme, op, name, backends.ErrInvalidArgument,
			"unsupported EC key: curve parameters %x are not P-256", p[pkcs11.CKA_EC_PARAMS])
	}
	e.alg = backends.ECDSAP256
	if len(publics) == 1 {
		pt, err := c.attrs(publics[0], pkcs11.CKA_EC_POINT)
		if err != nil {
			return nil, err
		}
		e.point = pt[pkcs11.CKA_EC_POINT]
	}
	return e, nil
}

func nameKind(name string) string {
	if strings.HasPrefix(name, "id=") {
		return "CKA_ID"
	}
	return "label"
}

// checkProtected refuses a root key that can leave the token. SoftHSM lets
// extractable and non-sensitive keys exist (and derive extractable keys from
// non-extractable ones), so the broker enforces this itself. PKCS#11 never
// lets CKA_EXTRACTABLE go from false to true or CKA_SENSITIVE from true to
// false, so a key that passes once keeps passing.
func (b *Backend) checkProtected(op, name string, a map[uint][]byte) error {
	switch {
	case attrBool(a[pkcs11.CKA_EXTRACTABLE]):
		return backends.Errorf(scheme, op, name, backends.ErrPermissionDenied,
			"key is extractable (CKA_EXTRACTABLE=true); keybroker refuses root keys that can be exported from the token")
	case !attrBool(a[pkcs11.CKA_SENSITIVE]):
		return backends.Errorf(scheme, op, name, backends.ErrPermissionDenied,
			"key is not sensitive (CKA_SENSITIVE=false); keybroker refuses root keys whose value can be read")
	case b.cfg.RequireNeverExtractable && !attrBool(a[pkcs11.CKA_NEVER_EXTRACTABLE]):
		return backends.Errorf(scheme, op, name, backends.ErrPermissionDenied,
			"key was extractable at some time (CKA_NEVER_EXTRACTABLE=false) and RequireNeverExtractable is set")
	case b.cfg.RequireNeverExtractable && !attrBool(a[pkcs11.CKA_ALWAYS_SENSITIVE]):
		return backends.Errorf(scheme, op, name, backends.ErrPermissionDenied,
			"key was readable at some time (CKA_ALWAYS_SENSITIVE=false) and RequireNeverExtractable is set")
	}
	return nil
}

// creatable lists what CreateKey makes.
var creatable = []backends.Algorithm{backends.AES256, backends.HMAC256, backends.ECDSAP256}

// maxLabel bounds the labels CreateKey accepts.
const maxLabel = 128

// create makes a token key labelled label: sensitive, never extractable,
// private, with only the usages its algorithm needs. Both halves of an EC
// pair share the label and a random CKA_ID.
func (b *Backend) create(c *conn, label string, alg backends.Algorithm) error {
	hs, err := c.findObjects([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}, 1)
	if err != nil {
		return err
	}
	if len(hs) > 0 {
		return backends.Errorf(scheme, opCreateKey, label, backends.ErrInvalidArgument, "an object labelled %q already exists", label)
	}
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	common := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
	usage := func(encrypt, sign bool) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, encrypt),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, encrypt),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, encrypt),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, encrypt),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, sign),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, sign),
		}
	}
	if err := c.check(); err != nil {
		return err
	}
	var h pkcs11.ObjectHandle
	switch alg {
	case backends.AES256:
		tmpl := append(append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		}, common...), usage(true, false)...)
		h, err = c.p.GenerateKey(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
		err = ck("C_GenerateKey", err)
	case backends.HMAC256:
		tmpl := append(append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		}, common...), usage(false, true)...)
		h, err = c.p.GenerateKey(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, tmpl)
		err = ck("C_GenerateKey", err)
	case backends.ECDSAP256:
		pub := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP256),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		}
		priv := append([]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		}, common...)
		var pubH pkcs11.ObjectHandle
		pubH, h, err = c.p.GenerateKeyPair(c.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pub, priv)
		err = ck("C_GenerateKeyPair", err)
		c.m.noteHandle(uint(pubH))
	default:
		return backends.Errorf(scheme, opCreateKey, label, backends.ErrUnsupported, "cannot create %s keys", alg)
	}
	c.m.noteHandle(uint(h))
	return err
}

// validLabel checks a CreateKey name.
func validLabel(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty key name")
	case len(name) > maxLabel:
		return fmt.Errorf("label is %d bytes, limit %d", len(name), maxLabel)
	case strings.HasPrefix(name, "id="):
		return fmt.Errorf("CreateKey takes a label, not an id= name")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("label has a control character")
		}
	}
	return nil
}
