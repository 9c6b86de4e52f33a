// Package sigv4 verifies AWS Signature Version 4 on incoming HTTP requests,
// for keybroker's AWS-compatible front-ends (the AWS KMS JSON API, service
// "kms", and the External Key Store proxy API, service "kms-xks-proxy").
//
// The AWS SDKs sign; none verifies. Verify rebuilds the canonical request
// from exactly the headers the client lists in SignedHeaders (clients
// differ: aws-sdk-go-v2 signs its invocation headers and content-length,
// the AWS CLI does not), computes the signature with the signing key for
// the credential scope, and compares in constant time. It refuses, with
// the exception names AWS answers with:
//
//   - no Authorization header: MissingAuthenticationTokenException;
//   - an Authorization header that is not AWS4-HMAC-SHA256 with Credential,
//     SignedHeaders and Signature, a scope that is not
//     date/region/service/aws4_request, a signed header the request does
//     not carry, or a required header (host, x-amz-date, and what the
//     front-end adds) left unsigned: IncompleteSignatureException;
//   - an access key id the front-end does not know: UnrecognizedClientException;
//   - a scope for another service or region, a date outside ±MaxSkew of
//     now, a scope date that is not the request's, or a signature that does
//     not match: InvalidSignatureException.
//
// Session tokens (X-Amz-Security-Token) are not issued by keybroker and are
// refused. A signature may be replayed within the skew window, as with AWS;
// what a replay can do is bounded by the front-end (a signed body and
// operation, the caller's own permissions).
package sigv4

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aws/smithy-go/encoding/httpbinding"
)

// Algorithm is the only signing algorithm accepted.
const Algorithm = "AWS4-HMAC-SHA256"

// DefaultMaxSkew is AWS's bound on the difference between a request's
// date and the server's clock.
const DefaultMaxSkew = 5 * time.Minute

// The names of AWS's authentication errors.
const (
	MissingAuthenticationToken = "MissingAuthenticationTokenException"
	IncompleteSignature        = "IncompleteSignatureException"
	UnrecognizedClient         = "UnrecognizedClientException"
	InvalidSignature           = "InvalidSignatureException"
)

// Error is a refused request: Code is AWS's exception name, Message says
// why without echoing secrets.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func refuse(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrUnknownKey is what a SigningKey function returns for an access key id
// it does not know.
var ErrUnknownKey = errors.New("sigv4: unknown access key id")

// ErrElsewhere is what a SigningKey function returns for an access key
// this node does not verify but relays (an edge, for a key not scoped to
// it): Verify returns it as it is, and the front-end relays the request.
var ErrElsewhere = errors.New("sigv4: the access key is verified elsewhere")

// Verifier checks requests for one service in one region.
type Verifier struct {
	// Service is the credential scope's service ("kms", "kms-xks-proxy").
	Service string
	// Region is the credential scope's region the endpoint serves.
	Region string
	// SigningKey returns the signing key of accessKeyID for the scope's
	// date (YYYYMMDD), region and service — DeriveSigningKey of its secret
	// — or ErrUnknownKey. It is called once per request, after the
	// request's shape is checked.
	SigningKey func(ctx context.Context, accessKeyID, date, region, service string) ([]byte, error)
	// Required lists headers, besides host and x-amz-date, that must be
	// signed (lower case): e.g. x-amz-target, which names the operation.
	Required []string
	// MaxSkew bounds |request date − now| (DefaultMaxSkew when zero).
	MaxSkew time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Verified is what a verified request proves.
type Verified struct {
	AccessKeyID string
	Date        time.Time
	// Signature is the request's signature (32 bytes): what a relayed
	// request is claimed by, so that it runs once.
	Signature []byte
}

// DeriveSigningKey is SigV4's signing key: HMAC-SHA256 chained over
// "AWS4"+secret, the date, the region, the service and "aws4_request".
func DeriveSigningKey(secret []byte, date, region, service string) []byte {
	k := mac(append([]byte("AWS4"), secret...), date)
	k = mac(k, region)
	k = mac(k, service)
	return mac(k, "aws4_request")
}

func mac(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}

// authorization is a parsed Authorization header.
type authorization struct {
	accessKeyID, date, region, service string
	signedHeaders                      []string
	signature                          []byte
}

// MaxAuthorization bounds the Authorization header read.
const MaxAuthorization = 4096

// parseAuthorization reads
// "AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex".
func parseAuthorization(h string) (*authorization, *Error) {
	if len(h) > MaxAuthorization {
		return nil, refuse(IncompleteSignature, "the Authorization header is longer than %d bytes", MaxAuthorization)
	}
	alg, rest, ok := strings.Cut(h, " ")
	if !ok || alg != Algorithm {
		return nil, refuse(IncompleteSignature, "the Authorization header must start with %s", Algorithm)
	}
	// The fields, in the order given; a request has three (a few more
	// are read only to be refused), so a small array and a linear search
	// do without a map.
	var store [4]field
	fields := store[:0]
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, refuse(IncompleteSignature, "Authorization field %q is not name=value", clip(part))
		}
		if lookup(fields, k) != nil {
			return nil, refuse(IncompleteSignature, "Authorization field %s is given twice", clip(k))
		}
		fields = append(fields, field{k, v})
	}
	var credential, signedHeaders, signature string
	for _, name := range []string{"Credential", "SignedHeaders", "Signature"} {
		f := lookup(fields, name)
		if f == nil || f.value == "" {
			return nil, refuse(IncompleteSignature, "the Authorization header has no %s", name)
		}
		switch name {
		case "Credential":
			credential = f.value
		case "SignedHeaders":
			signedHeaders = f.value
		default:
			signature = f.value
		}
	}
	if len(fields) != 3 {
		return nil, refuse(IncompleteSignature, "the Authorization header has fields other than Credential, SignedHeaders and Signature")
	}
	var scope [5]string
	if strings.Count(credential, "/") != 4 {
		return nil, refuse(IncompleteSignature, "Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request")
	}
	for i := range 4 {
		scope[i], credential, _ = strings.Cut(credential, "/")
	}
	scope[4] = credential
	if scope[4] != "aws4_request" || scope[0] == "" {
		return nil, refuse(IncompleteSignature, "Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request")
	}
	a := &authorization{accessKeyID: scope[0], date: scope[1], region: scope[2], service: scope[3]}
	a.signedHeaders = strings.Split(signedHeaders, ";")
	for i, name := range a.signedHeaders {
		if name == "" || !lower(name) || i > 0 && a.signedHeaders[i-1] >= name {
			return nil, refuse(IncompleteSignature, "SignedHeaders must list lower-case header names once each, sorted")
		}
	}
	a.signature = make([]byte, sha256.Size)
	if len(signature) != 2*sha256.Size {
		return nil, refuse(IncompleteSignature, "Signature must be 64 hexadecimal digits")
	}
	if _, err := hex.Decode(a.signature, []byte(signature)); err != nil {
		return nil, refuse(IncompleteSignature, "Signature must be 64 hexadecimal digits")
	}
	return a, nil
}

// field is a name=value field of the Authorization header.
type field struct{ name, value string }

func lookup(fields []field, name string) *field {
	for i := range fields {
		if fields[i].name == name {
			return &fields[i]
		}
	}
	return nil
}

// lower reports whether s is unchanged by strings.ToLower.
func lower(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= utf8.RuneSelf {
			return s == strings.ToLower(s)
		} else if 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// Verify checks r, whose body (already read, bounded by the front-end) is
// body.
func (v *Verifier) Verify(ctx context.Context, r *http.Request, body []byte) (Verified, error) {
	h := r.Header.Values("Authorization")
	switch {
	case len(h) == 0:
		return Verified{}, refuse(MissingAuthenticationToken, "the request is not signed: it needs an Authorization header (AWS Signature Version 4)")
	case len(h) > 1:
		return Verified{}, refuse(IncompleteSignature, "the request has more than one Authorization header")
	}
	a, rerr := parseAuthorization(h[0])
	if rerr != nil {
		return Verified{}, rerr
	}
	if r.Header.Get("X-Amz-Security-Token") != "" {
		return Verified{}, refuse(UnrecognizedClient, "session tokens are not accepted here: sign with an access key issued by keybroker access-key create")
	}
	for _, required := range [][]string{{"host", "x-amz-date"}, v.Required} {
		for _, name := range required {
			if !slices.Contains(a.signedHeaders, name) {
				return Verified{}, refuse(IncompleteSignature, "the header %s must be signed (listed in SignedHeaders)", name)
			}
		}
	}
	if a.service != v.Service || a.region != v.Region {
		return Verified{}, refuse(InvalidSignature, "the credential is scoped to service %q in region %q; this endpoint is %q in %q",
			clip(a.service), clip(a.region), v.Service, v.Region)
	}
	amzDate := r.Header.Get("X-Amz-Date")
	date, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return Verified{}, refuse(IncompleteSignature, "X-Amz-Date %q is not YYYYMMDD'T'HHMMSS'Z'", clip(amzDate))
	}
	if a.date != amzDate[:8] {
		return Verified{}, refuse(InvalidSignature, "the credential's date %s is not the request's (%s)", clip(a.date), amzDate[:8])
	}
	now, skew := time.Now(), v.MaxSkew
	if v.Now != nil {
		now = v.Now()
	}
	if skew <= 0 {
		skew = DefaultMaxSkew
	}
	if d := now.Sub(date); d > skew || d < -skew {
		return Verified{}, refuse(InvalidSignature, "Signature expired or not yet valid: %s is more than %s from the server's time %s",
			amzDate, skew, now.UTC().Format("20060102T150405Z"))
	}
	buf := buffers.Get().(*[]byte)
	defer buffers.Put(buf)
	canonical, rerr := appendCanonicalRequest((*buf)[:0], r, a.signedHeaders, body)
	*buf = canonical[:0]
	if rerr != nil {
		return Verified{}, rerr
	}
	key, err := v.SigningKey(ctx, a.accessKeyID, a.date, a.region, a.service)
	if errors.Is(err, ErrUnknownKey) {
		return Verified{}, refuse(UnrecognizedClient, "the security token included in the request is invalid (unknown access key id)")
	}
	if err != nil {
		return Verified{}, err
	}
	sum := sha256.Sum256(canonical)
	toSign := append(canonical[len(canonical):], Algorithm+"\n"...)
	toSign = append(toSign, amzDate...)
	toSign = append(toSign, '\n')
	toSign = append(toSign, a.date...)
	toSign = append(toSign, '/')
	toSign = append(toSign, a.region...)
	toSign = append(toSign, '/')
	toSign = append(toSign, a.service...)
	toSign = append(toSign, "/aws4_request\n"...)
	toSign = hex.AppendEncode(toSign, sum[:])
	m := hmac.New(sha256.New, key)
	m.Write(toSign)
	var got [sha256.Size]byte
	if !hmac.Equal(m.Sum(got[:0]), a.signature) {
		return Verified{}, refuse(InvalidSignature, "the request signature we calculated does not match the signature you provided: check your secret access key and signing method")
	}
	return Verified{AccessKeyID: a.accessKeyID, Date: date, Signature: a.signature}, nil
}

// buffers hold canonical requests and strings to sign while they are
// hashed, so that a request's verification does not grow one each time.
var buffers = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// appendCanonicalRequest appends SigV4's canonical request for r over the
// signed headers to dst.
func appendCanonicalRequest(dst []byte, r *http.Request, signed []string, body []byte) ([]byte, *Error) {
	b := append(dst, r.Method...)
	b = append(b, '\n')
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	if path == "/" {
		b = append(b, '/') // what EscapePath makes of it, without its allocation
	} else {
		b = append(b, httpbinding.EscapePath(path, false)...)
	}
	b = append(b, '\n')
	if r.URL.RawQuery != "" {
		b = append(b, canonicalQuery(r)...)
	}
	b = append(b, '\n')
	for _, name := range signed {
		var values []string
		switch name {
		case "host":
			if r.Host != "" {
				values = []string{r.Host}
			}
		case "content-length":
			values = r.Header.Values("Content-Length")
			if len(values) == 0 && r.ContentLength >= 0 {
				values = []string{strconv.FormatInt(r.ContentLength, 10)}
			}
		default:
			values = headerValues(r.Header, name)
		}
		if len(values) == 0 {
			return b, refuse(IncompleteSignature, "the signed header %s is not in the request", clip(name))
		}
		b = append(b, name...)
		b = append(b, ':')
		for i, v := range values {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendCollapsed(b, strings.TrimSpace(v))
		}
		b = append(b, '\n')
	}
	b = append(b, '\n')
	for i, name := range signed {
		if i > 0 {
			b = append(b, ';')
		}
		b = append(b, name...)
	}
	b = append(b, '\n')
	sum := sha256.Sum256(body)
	return hex.AppendEncode(b, sum[:]), nil
}

// canonicalKeys are the canonical forms of the header names the SDKs sign,
// so that their values are found without canonicalizing the name each time.
var canonicalKeys = map[string]string{
	"x-amz-date": "X-Amz-Date", "x-amz-target": "X-Amz-Target", "content-type": "Content-Type",
	"amz-sdk-invocation-id": "Amz-Sdk-Invocation-Id", "amz-sdk-request": "Amz-Sdk-Request",
	"x-amz-content-sha256": "X-Amz-Content-Sha256", "x-amz-user-agent": "X-Amz-User-Agent", "user-agent": "User-Agent",
}

// headerValues is h.Values(name) for a lower-case name.
func headerValues(h http.Header, name string) []string {
	if key, ok := canonicalKeys[name]; ok {
		return h[key]
	}
	return h.Values(name)
}

// canonicalQuery sorts the query's parameters by name, then value, each
// escaped as RFC 3986 asks.
func canonicalQuery(r *http.Request) string {
	q := r.URL.Query()
	if len(q) == 0 {
		return ""
	}
	escaped := make(map[string][]string, len(q))
	for k, vs := range q {
		ek := httpbinding.EscapePath(k, true)
		for _, v := range vs {
			escaped[ek] = append(escaped[ek], httpbinding.EscapePath(v, true))
		}
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(escaped)) {
		vs := escaped[k]
		slices.Sort(vs)
		for _, v := range vs {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(k + "=" + v)
		}
	}
	return b.String()
}

// appendCollapsed appends s with each run of spaces made one, as SigV4's
// canonical header values have them.
func appendCollapsed(dst []byte, s string) []byte {
	if !strings.Contains(s, "  ") {
		return append(dst, s...)
	}
	space := false
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' {
			if space {
				continue
			}
			space = true
		} else {
			space = false
		}
		dst = append(dst, s[i])
	}
	return dst
}

// clip bounds what an error repeats of the request.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
