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
	"time"

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
	fields := map[string]string{}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, refuse(IncompleteSignature, "Authorization field %q is not name=value", clip(part))
		}
		if _, dup := fields[k]; dup {
			return nil, refuse(IncompleteSignature, "Authorization field %s is given twice", clip(k))
		}
		fields[k] = v
	}
	for _, name := range []string{"Credential", "SignedHeaders", "Signature"} {
		if fields[name] == "" {
			return nil, refuse(IncompleteSignature, "the Authorization header has no %s", name)
		}
	}
	if len(fields) != 3 {
		return nil, refuse(IncompleteSignature, "the Authorization header has fields other than Credential, SignedHeaders and Signature")
	}
	scope := strings.Split(fields["Credential"], "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || scope[0] == "" {
		return nil, refuse(IncompleteSignature, "Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request")
	}
	a := &authorization{accessKeyID: scope[0], date: scope[1], region: scope[2], service: scope[3]}
	a.signedHeaders = strings.Split(fields["SignedHeaders"], ";")
	for i, name := range a.signedHeaders {
		if name == "" || name != strings.ToLower(name) || i > 0 && a.signedHeaders[i-1] >= name {
			return nil, refuse(IncompleteSignature, "SignedHeaders must list lower-case header names once each, sorted")
		}
	}
	sig, err := hex.DecodeString(fields["Signature"])
	if err != nil || len(sig) != sha256.Size {
		return nil, refuse(IncompleteSignature, "Signature must be 64 hexadecimal digits")
	}
	a.signature = sig
	return a, nil
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
	for _, name := range append([]string{"host", "x-amz-date"}, v.Required...) {
		if !slices.Contains(a.signedHeaders, name) {
			return Verified{}, refuse(IncompleteSignature, "the header %s must be signed (listed in SignedHeaders)", name)
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
	canonical, rerr := canonicalRequest(r, a.signedHeaders, body)
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
	sum := sha256.Sum256([]byte(canonical))
	toSign := Algorithm + "\n" + amzDate + "\n" + a.date + "/" + a.region + "/" + a.service + "/aws4_request\n" + hex.EncodeToString(sum[:])
	if !hmac.Equal(mac(key, toSign), a.signature) {
		return Verified{}, refuse(InvalidSignature, "the request signature we calculated does not match the signature you provided: check your secret access key and signing method")
	}
	return Verified{AccessKeyID: a.accessKeyID, Date: date, Signature: a.signature}, nil
}

// canonicalRequest is SigV4's canonical request for r over the signed
// headers.
func canonicalRequest(r *http.Request, signed []string, body []byte) (string, *Error) {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	b.WriteString(httpbinding.EscapePath(path, false))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r))
	b.WriteByte('\n')
	for _, name := range signed {
		var values []string
		switch name {
		case "host":
			values = []string{r.Host}
		case "content-length":
			values = r.Header.Values("Content-Length")
			if len(values) == 0 && r.ContentLength >= 0 {
				values = []string{strconv.FormatInt(r.ContentLength, 10)}
			}
		default:
			values = r.Header.Values(name)
		}
		if len(values) == 0 || name == "host" && values[0] == "" {
			return "", refuse(IncompleteSignature, "the signed header %s is not in the request", clip(name))
		}
		b.WriteString(name)
		b.WriteByte(':')
		for i, v := range values {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strings.TrimSpace(collapseSpaces(v)))
		}
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signed, ";"))
	b.WriteByte('\n')
	sum := sha256.Sum256(body)
	b.WriteString(hex.EncodeToString(sum[:]))
	return b.String(), nil
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

// collapseSpaces turns each run of spaces into one, as SigV4's canonical
// header values have them.
func collapseSpaces(s string) string {
	if !strings.Contains(s, "  ") {
		return s
	}
	var b strings.Builder
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
		b.WriteByte(s[i])
	}
	return b.String()
}

// clip bounds what an error repeats of the request.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
