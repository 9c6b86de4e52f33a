package backends

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// KeyURI is a parsed backend key URI.
type KeyURI interface {
	// Scheme is the URI scheme: pkcs11, awskms, gcpkms or softkms.
	Scheme() string
	// Key is the key's name inside the backend, as Backend methods take it;
	// empty when the URI names only a backend.
	Key() string
	// BackendURI is the canonical URI of the backend alone, without key
	// attributes. Two key URIs with the same BackendURI share one backend.
	BackendURI() string
	// String is the canonical form of the whole URI.
	String() string
}

// ParseKeyURI parses a URI of any of the built-in schemes.
func ParseKeyURI(s string) (KeyURI, error) {
	scheme, _, ok := strings.Cut(s, ":")
	if !ok {
		return nil, uriError(s, "missing scheme")
	}
	switch scheme {
	case "pkcs11":
		return ParsePKCS11URI(s)
	case "awskms":
		return ParseAWSKMSURI(s)
	case "gcpkms":
		return ParseGCPKMSURI(s)
	case "softkms":
		return ParseSoftKMSURI(s)
	}
	return nil, uriError(s, "unknown scheme %q (want pkcs11, awskms, gcpkms or softkms)", scheme)
}

// maxURI bounds a URI's raw length and maxValues the decoded length of its
// attribute values; nothing legitimate comes close. The raw bound leaves room
// for percent-encoding, so a canonical form always parses again.
const (
	maxURI    = 16 << 10
	maxValues = 4 << 10
)

func uriError(s, format string, args ...any) error {
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return fmt.Errorf("backends: invalid URI %q: %s: %w", s, fmt.Sprintf(format, args...), ErrInvalidArgument)
}

// attr is one name=value pair, value percent-decoded.
type attr struct{ name, value string }

// splitAttrs splits "a=b<sep>c=d" into pairs, decoding values. An empty
// input gives no pairs; empty elements (a trailing separator) are refused.
func splitAttrs(uri, s string, sep byte) ([]attr, error) {
	if s == "" {
		return nil, nil
	}
	var out []attr
	seen := map[string]bool{}
	total := 0
	for part := range strings.SplitSeq(s, string(sep)) {
		name, raw, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, uriError(uri, "attribute %q is not name=value", part)
		}
		if seen[name] {
			return nil, uriError(uri, "attribute %q repeated", name)
		}
		seen[name] = true
		v, err := url.PathUnescape(raw)
		if err != nil {
			return nil, uriError(uri, "attribute %q: bad percent-encoding", name)
		}
		if total += len(name) + len(v); total > maxValues {
			return nil, uriError(uri, "attributes longer than %d bytes", maxValues)
		}
		out = append(out, attr{name, v})
	}
	return out, nil
}

// escapeValue percent-encodes a value for the canonical form: everything
// outside RFC 3986 unreserved characters, ':', '/' and '@' is encoded.
func escapeValue(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
			strings.IndexByte("-._~:/@", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func joinAttrs(scheme string, first string, attrs []attr, sep string) string {
	var parts []string
	if first != "" {
		parts = append(parts, first)
	}
	for _, a := range attrs {
		if a.value != "" {
			parts = append(parts, a.name+"="+escapeValue(a.value))
		}
	}
	return scheme + ":" + strings.Join(parts, sep)
}

func checkPrintable(uri, name, v string) error {
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return uriError(uri, "attribute %q has a control character", name)
		}
	}
	return nil
}

// ---- pkcs11 (RFC 7512) ----

// PKCS11URI is a parsed RFC 7512 PKCS#11 URI, for example
//
//	pkcs11:token=keybroker;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin&max-sessions=16
//
// Path attributes: token, manufacturer, serial, model, slot-id, object, id,
// type. Query attributes: module-path, module-name, pin-source and the
// keybroker extension max-sessions. pin-value is refused: a PIN in a URI ends
// up in configs, logs and shell history. Any other attribute is an error.
type PKCS11URI struct {
	Token        string // CKA token label
	Manufacturer string
	Serial       string
	Model        string
	SlotID       int    // -1 when absent
	Object       string // CKA_LABEL of the key
	ID           []byte // CKA_ID of the key
	Type         string // public, private, cert, secret-key, data
	ModulePath   string // absolute path of the PKCS#11 module
	ModuleName   string
	PinSource    string // file holding the user PIN
	MaxSessions  int    // 0 means the backend's default
}

var pkcs11Types = map[string]bool{"public": true, "private": true, "cert": true, "secret-key": true, "data": true}

// ParsePKCS11URI parses s strictly.
func ParsePKCS11URI(s string) (*PKCS11URI, error) {
	if len(s) > maxURI {
		return nil, uriError(s, "longer than %d bytes", maxURI)
	}
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return nil, uriError(s, "scheme is not pkcs11")
	}
	path, query, _ := strings.Cut(rest, "?")
	if strings.Contains(query, "?") || strings.Contains(rest, "#") {
		return nil, uriError(s, "unexpected '?' or '#'")
	}
	u := &PKCS11URI{SlotID: -1}
	pattrs, err := splitAttrs(s, path, ';')
	if err != nil {
		return nil, err
	}
	for _, a := range pattrs {
		if err := checkPrintable(s, a.name, a.value); err != nil && a.name != "id" {
			return nil, err
		}
		switch a.name {
		case "token":
			u.Token = a.value
		case "manufacturer":
			u.Manufacturer = a.value
		case "serial":
			u.Serial = a.value
		case "model":
			u.Model = a.value
		case "slot-id":
			n, err := strconv.ParseUint(a.value, 10, 31)
			if err != nil {
				return nil, uriError(s, "slot-id %q is not a decimal number", a.value)
			}
			u.SlotID = int(n)
		case "object":
			u.Object = a.value
		case "id":
			if a.value == "" {
				return nil, uriError(s, "empty id")
			}
			u.ID = []byte(a.value)
		case "type":
			if !pkcs11Types[a.value] {
				return nil, uriError(s, "type %q is not one of public, private, cert, secret-key, data", a.value)
			}
			u.Type = a.value
		case "library-manufacturer", "library-description", "library-version", "slot-manufacturer", "slot-description":
			return nil, uriError(s, "attribute %q is not supported; select the token by token or serial", a.name)
		case "pin-value", "pin-source", "module-path", "module-name", "max-sessions":
			return nil, uriError(s, "%q is a query attribute: put it after '?'", a.name)
		default:
			return nil, uriError(s, "unknown path attribute %q", a.name)
		}
	}
	qattrs, err := splitAttrs(s, query, '&')
	if err != nil {
		return nil, err
	}
	for _, a := range qattrs {
		if err := checkPrintable(s, a.name, a.value); err != nil {
			return nil, err
		}
		switch a.name {
		case "module-path":
			if !filepath.IsAbs(a.value) {
				return nil, uriError(s, "module-path %q is not absolute", a.value)
			}
			u.ModulePath = a.value
		case "module-name":
			if strings.ContainsAny(a.value, "/\\") || a.value == "" {
				return nil, uriError(s, "module-name %q must be a bare name", a.value)
			}
			u.ModuleName = a.value
		case "pin-source":
			p := strings.TrimPrefix(a.value, "file:")
			if !filepath.IsAbs(p) {
				return nil, uriError(s, "pin-source %q is not an absolute file path", a.value)
			}
			u.PinSource = p
		case "pin-value":
			return nil, uriError(s, "pin-value is refused: put the PIN in a file and name it with pin-source")
		case "max-sessions":
			n, err := strconv.Atoi(a.value)
			if err != nil || n < 1 || n > 1024 {
				return nil, uriError(s, "max-sessions %q is not a number in 1..1024", a.value)
			}
			u.MaxSessions = n
		default:
			return nil, uriError(s, "unknown query attribute %q", a.name)
		}
	}
	if u.Token == "" && u.Serial == "" && u.SlotID < 0 {
		return nil, uriError(s, "no token selected: give token=LABEL or serial=SERIAL")
	}
	return u, nil
}

// Scheme implements KeyURI.
func (u *PKCS11URI) Scheme() string { return "pkcs11" }

// Key returns the key name Backend methods take: the object label, or
// "id=%xx..." when only a CKA_ID is given (see PKCS11KeyName).
func (u *PKCS11URI) Key() string {
	if u.Object != "" {
		return u.Object
	}
	if len(u.ID) > 0 {
		return "id=" + pctAll(u.ID)
	}
	return ""
}

// PKCS11KeyName splits a pkcs11 key name as returned by Key into a label or
// an id.
func PKCS11KeyName(name string) (label string, id []byte, err error) {
	v, ok := strings.CutPrefix(name, "id=")
	if !ok {
		return name, nil, nil
	}
	d, err := url.PathUnescape(v)
	if err != nil || d == "" {
		return "", nil, fmt.Errorf("bad id %q: %w", name, ErrInvalidArgument)
	}
	return "", []byte(d), nil
}

func pctAll(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		sb.WriteString("%" + strings.ToUpper(hex.EncodeToString([]byte{c})))
	}
	return sb.String()
}

func (u *PKCS11URI) render(withKey bool) string {
	path := []attr{{"token", u.Token}, {"manufacturer", u.Manufacturer}, {"serial", u.Serial}, {"model", u.Model}}
	if u.SlotID >= 0 {
		path = append(path, attr{"slot-id", strconv.Itoa(u.SlotID)})
	}
	s := joinAttrs("pkcs11", "", path, ";")
	if withKey {
		if u.Object != "" {
			s += ";object=" + escapeValue(u.Object)
		}
		if len(u.ID) > 0 {
			s += ";id=" + pctAll(u.ID)
		}
		if u.Type != "" {
			s += ";type=" + u.Type
		}
	}
	q := []attr{{"module-path", u.ModulePath}, {"module-name", u.ModuleName}, {"pin-source", u.PinSource}}
	if u.MaxSessions > 0 {
		q = append(q, attr{"max-sessions", strconv.Itoa(u.MaxSessions)})
	}
	if qs := strings.TrimPrefix(joinAttrs("", "", q, "&"), ":"); qs != "" {
		s += "?" + qs
	}
	return s
}

// BackendURI implements KeyURI.
func (u *PKCS11URI) BackendURI() string { return u.render(false) }

// String implements KeyURI.
func (u *PKCS11URI) String() string { return u.render(true) }

// ---- awskms ----

// AWSKMSURI names an AWS KMS key or region, for example
//
//	awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//	awskms:key-id=alias/keybroker-root;region=eu-west-1
//	awskms:region=eu-west-1;endpoint=https://kms.internal:8443;rate-limit=500;burst=50
//
// Attributes: key-id (a key id, key ARN, alias name or alias ARN), region
// (taken from the ARN when omitted), endpoint (an http or https URL that
// overrides the service endpoint), rate-limit (outbound requests per second)
// and burst (token-bucket depth).
type AWSKMSURI struct {
	KeyID     string
	Region    string
	Endpoint  string
	RateLimit float64 // 0 means the backend's default
	Burst     int     // 0 means the backend's default
}

var (
	awsKeyIDRe  = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$|^mrk-[0-9a-f]{32}$`)
	awsAliasRe  = regexp.MustCompile(`^alias/[a-zA-Z0-9/_-]{1,250}$`)
	awsARNRe    = regexp.MustCompile(`^arn:aws[a-z-]*:kms:([a-z]{2}(?:-[a-z]+)+-\d):\d{12}:(key/[0-9a-zA-Z-]+|alias/[a-zA-Z0-9/_-]+)$`)
	awsRegionRe = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d$`)
)

// ParseAWSKMSURI parses s strictly.
func ParseAWSKMSURI(s string) (*AWSKMSURI, error) {
	if len(s) > maxURI {
		return nil, uriError(s, "longer than %d bytes", maxURI)
	}
	rest, ok := strings.CutPrefix(s, "awskms:")
	if !ok {
		return nil, uriError(s, "scheme is not awskms")
	}
	attrs, err := splitAttrs(s, rest, ';')
	if err != nil {
		return nil, err
	}
	u := &AWSKMSURI{}
	arnRegion := ""
	for _, a := range attrs {
		if err := checkPrintable(s, a.name, a.value); err != nil {
			return nil, err
		}
		switch a.name {
		case "key-id":
			switch {
			case awsKeyIDRe.MatchString(a.value), awsAliasRe.MatchString(a.value):
			case awsARNRe.MatchString(a.value):
				arnRegion = awsARNRe.FindStringSubmatch(a.value)[1]
			default:
				return nil, uriError(s, "key-id %q is not a key id, key ARN, alias or alias ARN", a.value)
			}
			u.KeyID = a.value
		case "region":
			if !awsRegionRe.MatchString(a.value) {
				return nil, uriError(s, "region %q is not an AWS region name", a.value)
			}
			u.Region = a.value
		case "endpoint":
			e, err := url.Parse(a.value)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" || e.User != nil {
				return nil, uriError(s, "endpoint %q is not an http(s) URL", a.value)
			}
			u.Endpoint = a.value
		case "rate-limit":
			f, err := strconv.ParseFloat(a.value, 64)
			if err != nil || f <= 0 || f > 1e6 {
				return nil, uriError(s, "rate-limit %q is not a positive number of requests per second", a.value)
			}
			u.RateLimit = f
		case "burst":
			n, err := strconv.Atoi(a.value)
			if err != nil || n < 1 || n > 1e6 {
				return nil, uriError(s, "burst %q is not a positive integer", a.value)
			}
			u.Burst = n
		default:
			return nil, uriError(s, "unknown attribute %q (want key-id, region, endpoint, rate-limit, burst)", a.name)
		}
	}
	switch {
	case u.Region == "" && arnRegion != "":
		u.Region = arnRegion
	case u.Region != "" && arnRegion != "" && u.Region != arnRegion:
		return nil, uriError(s, "region %q contradicts the ARN's region %q", u.Region, arnRegion)
	}
	if u.Region == "" {
		return nil, uriError(s, "no region: give region= or a key ARN")
	}
	return u, nil
}

// Scheme implements KeyURI.
func (u *AWSKMSURI) Scheme() string { return "awskms" }

// Key implements KeyURI.
func (u *AWSKMSURI) Key() string { return u.KeyID }

func (u *AWSKMSURI) backendAttrs() []attr {
	a := []attr{{"region", u.Region}, {"endpoint", u.Endpoint}}
	if u.RateLimit > 0 {
		a = append(a, attr{"rate-limit", strconv.FormatFloat(u.RateLimit, 'g', -1, 64)})
	}
	if u.Burst > 0 {
		a = append(a, attr{"burst", strconv.Itoa(u.Burst)})
	}
	return a
}

// BackendURI implements KeyURI.
func (u *AWSKMSURI) BackendURI() string { return joinAttrs("awskms", "", u.backendAttrs(), ";") }

// String implements KeyURI.
func (u *AWSKMSURI) String() string {
	return joinAttrs("awskms", "", append([]attr{{"key-id", u.KeyID}}, u.backendAttrs()...), ";")
}

// ---- gcpkms ----

// GCPKMSURI names a GCP Cloud KMS resource, for example
//
//	gcpkms:projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k
//	gcpkms:projects/p/locations/europe-west1/keyRings/r/cryptoKeys/m/cryptoKeyVersions/1
//	gcpkms:projects/p/locations/europe-west1/keyRings/r;endpoint=127.0.0.1:8443
//
// The resource is a key ring (a backend that creates keys in it), a
// CryptoKey (encrypt and decrypt use its primary version) or a
// CryptoKeyVersion (MAC and signing name a version). The only attribute is
// endpoint (host:port of the service).
type GCPKMSURI struct {
	Resource string
	Endpoint string
}

var (
	gcpSeg          = `[a-zA-Z0-9_-]{1,63}`
	gcpKeyRingRe    = regexp.MustCompile(`^projects/[a-z0-9.:-]{1,100}/locations/` + gcpSeg + `/keyRings/` + gcpSeg + `$`)
	gcpCryptoKeyRe  = regexp.MustCompile(`^projects/[a-z0-9.:-]{1,100}/locations/` + gcpSeg + `/keyRings/` + gcpSeg + `/cryptoKeys/` + gcpSeg + `$`)
	gcpKeyVersionRe = regexp.MustCompile(`^projects/[a-z0-9.:-]{1,100}/locations/` + gcpSeg + `/keyRings/` + gcpSeg + `/cryptoKeys/` + gcpSeg + `/cryptoKeyVersions/[0-9]{1,10}$`)
)

// GCPResourceKind says what a resource name names: "keyRing", "cryptoKey",
// "cryptoKeyVersion", or "" if it is not a valid name.
func GCPResourceKind(name string) string {
	switch {
	case gcpKeyRingRe.MatchString(name):
		return "keyRing"
	case gcpCryptoKeyRe.MatchString(name):
		return "cryptoKey"
	case gcpKeyVersionRe.MatchString(name):
		return "cryptoKeyVersion"
	}
	return ""
}

// ParseGCPKMSURI parses s strictly.
func ParseGCPKMSURI(s string) (*GCPKMSURI, error) {
	if len(s) > maxURI {
		return nil, uriError(s, "longer than %d bytes", maxURI)
	}
	rest, ok := strings.CutPrefix(s, "gcpkms:")
	if !ok {
		return nil, uriError(s, "scheme is not gcpkms")
	}
	res, attrsPart, _ := strings.Cut(rest, ";")
	if GCPResourceKind(res) == "" {
		return nil, uriError(s, "%q is not a key ring, CryptoKey or CryptoKeyVersion resource name", res)
	}
	u := &GCPKMSURI{Resource: res}
	attrs, err := splitAttrs(s, attrsPart, ';')
	if err != nil {
		return nil, err
	}
	for _, a := range attrs {
		switch a.name {
		case "endpoint":
			host, port, ok := strings.Cut(a.value, ":")
			if _, err := strconv.ParseUint(port, 10, 16); !ok || host == "" || err != nil || strings.ContainsAny(host, "/@ ") {
				return nil, uriError(s, "endpoint %q is not host:port", a.value)
			}
			u.Endpoint = a.value
		default:
			return nil, uriError(s, "unknown attribute %q (want endpoint)", a.name)
		}
	}
	return u, nil
}

// Scheme implements KeyURI.
func (u *GCPKMSURI) Scheme() string { return "gcpkms" }

// Key implements KeyURI: the CryptoKey or CryptoKeyVersion, or "" for a key
// ring.
func (u *GCPKMSURI) Key() string {
	if GCPResourceKind(u.Resource) == "keyRing" {
		return ""
	}
	return u.Resource
}

// KeyRing returns the key ring part of the resource.
func (u *GCPKMSURI) KeyRing() string {
	if i := strings.Index(u.Resource, "/cryptoKeys/"); i >= 0 {
		return u.Resource[:i]
	}
	return u.Resource
}

// BackendURI implements KeyURI. The backend is the key ring plus endpoint.
func (u *GCPKMSURI) BackendURI() string {
	return joinAttrs("gcpkms", u.KeyRing(), []attr{{"endpoint", u.Endpoint}}, ";")
}

// String implements KeyURI.
func (u *GCPKMSURI) String() string {
	return joinAttrs("gcpkms", u.Resource, []attr{{"endpoint", u.Endpoint}}, ";")
}

// ---- softkms ----

// SoftKMSURI names a software keystore or one of its keys, for example
//
//	softkms:root-1
//	softkms:root-1;path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek
//	softkms:path=/var/lib/keybroker/softkms.json;passphrase-source=/etc/keybroker/passphrase
//
// The leading bare element is the key name. Attributes: path (the keystore
// file), kek-source (a file holding a 32-byte key-encryption key, raw or hex)
// and passphrase-source (a file holding a passphrase the KEK is derived from);
// at most one of the two sources.
type SoftKMSURI struct {
	Name             string
	Path             string
	KEKSource        string
	PassphraseSource string
}

var softNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$`)

// ValidSoftKMSName reports whether name can name a softkms key.
func ValidSoftKMSName(name string) bool { return softNameRe.MatchString(name) }

// ParseSoftKMSURI parses s strictly.
func ParseSoftKMSURI(s string) (*SoftKMSURI, error) {
	if len(s) > maxURI {
		return nil, uriError(s, "longer than %d bytes", maxURI)
	}
	rest, ok := strings.CutPrefix(s, "softkms:")
	if !ok {
		return nil, uriError(s, "scheme is not softkms")
	}
	u := &SoftKMSURI{}
	first, tail, _ := strings.Cut(rest, ";")
	if first != "" && !strings.Contains(first, "=") {
		if !ValidSoftKMSName(first) {
			return nil, uriError(s, "key name %q must be 1-128 letters, digits, '.', '_' or '-'", first)
		}
		u.Name = first
		rest = tail
	}
	attrs, err := splitAttrs(s, rest, ';')
	if err != nil {
		return nil, err
	}
	for _, a := range attrs {
		if err := checkPrintable(s, a.name, a.value); err != nil {
			return nil, err
		}
		switch a.name {
		case "path", "kek-source", "passphrase-source":
			if !filepath.IsAbs(a.value) {
				return nil, uriError(s, "%s %q is not an absolute path", a.name, a.value)
			}
		default:
			return nil, uriError(s, "unknown attribute %q (want path, kek-source, passphrase-source)", a.name)
		}
		switch a.name {
		case "path":
			u.Path = a.value
		case "kek-source":
			u.KEKSource = a.value
		case "passphrase-source":
			u.PassphraseSource = a.value
		}
	}
	if u.KEKSource != "" && u.PassphraseSource != "" {
		return nil, uriError(s, "give kek-source or passphrase-source, not both")
	}
	return u, nil
}

// Scheme implements KeyURI.
func (u *SoftKMSURI) Scheme() string { return "softkms" }

// Key implements KeyURI.
func (u *SoftKMSURI) Key() string { return u.Name }

func (u *SoftKMSURI) attrs() []attr {
	return []attr{{"path", u.Path}, {"kek-source", u.KEKSource}, {"passphrase-source", u.PassphraseSource}}
}

// BackendURI implements KeyURI.
func (u *SoftKMSURI) BackendURI() string { return joinAttrs("softkms", "", u.attrs(), ";") }

// String implements KeyURI.
func (u *SoftKMSURI) String() string { return joinAttrs("softkms", u.Name, u.attrs(), ";") }

// Holds reports whether the backend named by backend holds the key named by
// key: the schemes match and every connection attribute the key URI gives
// (token, module-path, region, endpoint, keystore path, key ring...) equals
// the backend's. A key URI with no connection attributes (softkms:root-1,
// pkcs11:token=kb;object=root-1 against a configured
// pkcs11:token=kb?module-path=…&pin-source=…) is held by any backend of its
// scheme that agrees on what it does give; callers refuse a key that more
// than one configured backend could hold.
func Holds(backend, key KeyURI) bool {
	if backend.Scheme() != key.Scheme() {
		return false
	}
	have := connectionAttrs(backend.BackendURI())
	for a := range connectionAttrs(key.BackendURI()) {
		if !have[a] {
			return false
		}
	}
	return true
}

// connectionAttrs splits a canonical backend URI into its elements
// ("token=kb", "module-path=/x", a GCP key ring). Values are escaped in the
// canonical form, so the separators are unambiguous.
func connectionAttrs(backendURI string) map[string]bool {
	_, rest, _ := strings.Cut(backendURI, ":")
	path, query, _ := strings.Cut(rest, "?")
	out := map[string]bool{}
	for _, e := range strings.Split(path, ";") {
		if e != "" {
			out[e] = true
		}
	}
	for _, e := range strings.Split(query, "&") {
		if e != "" {
			out["?"+e] = true
		}
	}
	return out
}
