package sigv4

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/aws/smithy-go/encoding/httpbinding"
)

// FuzzParseAuthorization: the Authorization parser without a map reads
// every header exactly as the map-based one it replaced (parseReference),
// refusals and their messages included.
func FuzzParseAuthorization(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=KBAKTESTKEY000000001/20261207/eu-west-1/kms/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=" + strings.Repeat("ab", 32))
	f.Add("AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=B;a, Signature=" + strings.Repeat("AB", 32) + ",")
	f.Add("AWS4-HMAC-SHA256 Credential=a//c/d/aws4_request/, SignedHeaders=a;a, Signature=x, Other=y")
	f.Add("AWS4-HMAC-SHA256 ,,,==")
	f.Add("AWS4-HMAC-SHA256 Credential=x, Credential=y")
	f.Add("AWS4-HMAC-SHA256 ")
	f.Fuzz(func(t *testing.T, h string) {
		got, gerr := parseAuthorization(h)
		want, werr := parseReference(h)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gerr, werr) {
			t.Fatalf("parseAuthorization(%q) = %+v, %v; the reference reads %+v, %v", h, got, gerr, want, werr)
		}
	})
}

// parseReference is the map-based parser parseAuthorization replaced.
func parseReference(h string) (*authorization, *Error) {
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

// FuzzCanonicalRequest: the canonical request built into one buffer is the
// one the strings.Builder version it replaced (canonicalReference) built.
func FuzzCanonicalRequest(f *testing.F) {
	f.Add("/", "", "kms.example", "  a  b ", "TrentService.Encrypt", []byte("{}"))
	f.Add("/a b/%2F", "b=2&a=1&a=0", "", "\tx", "", []byte{})
	f.Fuzz(func(t *testing.T, path, query, host, date, target string, body []byte) {
		r := &http.Request{Method: http.MethodPost, URL: &url.URL{Path: path, RawQuery: query}, Host: host, Header: http.Header{}, ContentLength: int64(len(body))}
		r.Header.Set("X-Amz-Date", date)
		if target != "" {
			r.Header.Add("X-Amz-Target", target)
			r.Header.Add("X-Amz-Target", date)
		}
		signed := []string{"content-length", "host", "x-amz-date", "x-amz-target"}
		got, gerr := appendCanonicalRequest(nil, r, signed, body)
		want, werr := canonicalReference(r, signed, body)
		if !reflect.DeepEqual(gerr, werr) || gerr == nil && string(got) != want {
			t.Fatalf("appendCanonicalRequest = %q, %v; the reference builds %q, %v", got, gerr, want, werr)
		}
	})
}

// canonicalReference is the canonical request as it was built before.
func canonicalReference(r *http.Request, signed []string, body []byte) (string, *Error) {
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
			b.WriteString(strings.TrimSpace(collapseReference(v)))
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

func collapseReference(s string) string {
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
