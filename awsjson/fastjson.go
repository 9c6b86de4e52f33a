package awsjson

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"unicode/utf8"
)

// The hot operations' requests (Encrypt, Decrypt, ReEncrypt) and answers
// are read and written here without reflection: encoding/json scans a body
// twice (checkValid, then the value), decodes a base64 blob through a
// growing buffer and matches names case-insensitively, which made JSON a
// third of an Encrypt's cost in awsjson itself (BenchmarkServeEncrypt).
//
// The fast reader accepts only the plain form the AWS SDKs send — one
// object; members named exactly as the operation's, each once; strings
// with no escapes and no control characters; blobs that are valid base64;
// maps of such strings — and reports anything else as not handled, which
// decode then gives to encoding/json from scratch. So every body decodes
// exactly as encoding/json decodes it, and every error (and its message)
// is encoding/json's (FuzzFastDecode compares the two).

// fastKind is the type of a member the fast reader fills.
type fastKind uint8

const (
	fastString fastKind = iota // a JSON string into *string
	fastBlob                   // a base64 JSON string into *[]byte
	fastMap                    // an object of strings into *map[string]string
	fastSkip                   // a string or an object of strings, read and dropped
)

// fastField is a member of a request: its exact name and where it goes.
type fastField struct {
	name string
	kind fastKind
	str  *string
	blob *[]byte
	m    *map[string]string
}

// fastDecoder is a request the fast reader can fill.
type fastDecoder interface {
	fastFields() []fastField
}

func (r *encryptRequest) fastFields() []fastField {
	return []fastField{
		{name: "KeyId", kind: fastString, str: &r.KeyID},
		{name: "Plaintext", kind: fastBlob, blob: &r.Plaintext},
		{name: "EncryptionContext", kind: fastMap, m: &r.EncryptionContext},
		{name: "EncryptionAlgorithm", kind: fastString, str: &r.EncryptionAlgorithm},
	}
}

func (r *decryptRequest) fastFields() []fastField {
	return []fastField{
		{name: "CiphertextBlob", kind: fastBlob, blob: &r.CiphertextBlob},
		{name: "EncryptionContext", kind: fastMap, m: &r.EncryptionContext},
		{name: "KeyId", kind: fastString, str: &r.KeyID},
		{name: "EncryptionAlgorithm", kind: fastString, str: &r.EncryptionAlgorithm},
	}
}

func (r *reEncryptRequest) fastFields() []fastField {
	return []fastField{
		{name: "CiphertextBlob", kind: fastBlob, blob: &r.CiphertextBlob},
		{name: "SourceEncryptionContext", kind: fastMap, m: &r.SourceEncryptionContext},
		{name: "SourceKeyId", kind: fastString, str: &r.SourceKeyID},
		{name: "DestinationKeyId", kind: fastString, str: &r.DestinationKeyID},
		{name: "DestinationEncryptionContext", kind: fastMap, m: &r.DestinationEncryptionContext},
		{name: "SourceEncryptionAlgorithm", kind: fastString, str: &r.SourceEncryptionAlgorithm},
		{name: "DestinationEncryptionAlgorithm", kind: fastString, str: &r.DestinationEncryptionAlgorithm},
	}
}

// fastDecode fills fields from body when body is in the plain form (see
// above) and reports whether it was; when it was not, the fields may be
// partly filled and the caller starts again with encoding/json.
func fastDecode(body []byte, fields []fastField) bool {
	d := fastReader{b: body}
	if !d.byte('{') {
		return false
	}
	var seen uint64 // fields given, by index (at most 64 fields)
	if len(fields) > 64 {
		return false
	}
	if !d.peek('}') {
		for {
			name, ok := d.string()
			if !ok || !d.byte(':') {
				return false
			}
			i := fieldIndex(fields, name)
			if i < 0 || seen&(1<<i) != 0 {
				return false // unknown (or differently cased) or repeated: encoding/json's rules apply
			}
			seen |= 1 << i
			f := &fields[i]
			switch f.kind {
			case fastString:
				v, ok := d.string()
				if !ok {
					return false
				}
				*f.str = string(v)
			case fastBlob:
				v, ok := d.string()
				if !ok {
					return false
				}
				b := make([]byte, base64.StdEncoding.DecodedLen(len(v)))
				n, err := base64.StdEncoding.Decode(b, v)
				if err != nil {
					return false
				}
				*f.blob = b[:n]
			case fastMap:
				m, ok := d.stringMap()
				if !ok {
					return false
				}
				*f.m = m
			case fastSkip:
				if d.peek('{') {
					if !d.skipStringMap() {
						return false
					}
				} else if _, ok := d.string(); !ok {
					return false
				}
			}
			if d.peek('}') {
				break
			}
			if !d.byte(',') {
				return false
			}
		}
	}
	d.byte('}')
	d.space()
	return d.i == len(d.b)
}

func fieldIndex(fields []fastField, name []byte) int {
	for i := range fields {
		if fields[i].name == string(name) {
			return i
		}
	}
	return -1
}

// fastReader reads the plain form of JSON from b.
type fastReader struct {
	b []byte
	i int
}

func (d *fastReader) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// byte consumes c after any space.
func (d *fastReader) byte(c byte) bool {
	d.space()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// peek reports, after any space, whether c is next, consuming nothing.
func (d *fastReader) peek(c byte) bool {
	d.space()
	return d.i < len(d.b) && d.b[d.i] == c
}

// string reads a string with no escapes and no control characters; one
// with bytes beyond ASCII must be valid UTF-8 (encoding/json replaces
// invalid sequences, which this reader leaves to it).
func (d *fastReader) string() ([]byte, bool) {
	if !d.byte('"') {
		return nil, false
	}
	// The closing quote is found with IndexByte and what it closes checked
	// eight bytes at a time; a string with anything but printable ASCII
	// (or a backslash, whose quote may be escaped) is read byte by byte.
	n := bytes.IndexByte(d.b[d.i:], '"')
	if n < 0 {
		return nil, false
	}
	v := d.b[d.i : d.i+n]
	if !plainASCII(v) {
		return d.slowString()
	}
	d.i += n + 1
	return v, true
}

// slowString is string's reading of a string with bytes beyond printable
// ASCII, from just after its opening quote.
func (d *fastReader) slowString() ([]byte, bool) {
	start, ascii := d.i, true
	for ; d.i < len(d.b); d.i++ {
		switch c := d.b[d.i]; {
		case c == '"':
			v := d.b[start:d.i]
			d.i++
			return v, ascii || utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

// plainASCII reports whether every byte of v is printable ASCII (0x20 to
// 0x7f) other than a backslash.
func plainASCII(v []byte) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for len(v) >= 8 {
		x := binary.LittleEndian.Uint64(v)
		bs := x ^ ('\\' * ones) // a zero byte where v has a backslash
		// Bytes all below 0x80: x - 0x20 per byte sets a high bit only
		// under a byte below 0x20, and borrows only from such a byte.
		if x&highs != 0 || (x-0x20*ones)&highs != 0 || (bs-ones)&^bs&highs != 0 {
			return false
		}
		v = v[8:]
	}
	for _, c := range v {
		if c < 0x20 || c >= utf8.RuneSelf || c == '\\' {
			return false
		}
	}
	return true
}

// stringMap reads an object of strings, each name once.
func (d *fastReader) stringMap() (map[string]string, bool) {
	if !d.byte('{') {
		return nil, false
	}
	m := map[string]string{}
	if d.peek('}') {
		d.i++
		return m, true
	}
	for {
		k, ok := d.string()
		if !ok || !d.byte(':') {
			return nil, false
		}
		v, ok := d.string()
		if !ok {
			return nil, false
		}
		if _, dup := m[string(k)]; dup {
			return nil, false
		}
		m[string(k)] = string(v)
		if d.byte('}') {
			return m, true
		}
		if !d.byte(',') {
			return nil, false
		}
	}
}

// skipStringMap reads an object of strings and keeps nothing.
func (d *fastReader) skipStringMap() bool {
	if !d.byte('{') {
		return false
	}
	if d.peek('}') {
		d.i++
		return true
	}
	for {
		if _, ok := d.string(); !ok || !d.byte(':') {
			return false
		}
		if _, ok := d.string(); !ok {
			return false
		}
		if d.byte('}') {
			return true
		}
		if !d.byte(',') {
			return false
		}
	}
}

// fastEncoder is an answer that writes its own JSON, exactly as
// json.Marshal would.
type fastEncoder interface {
	appendJSON(dst []byte) []byte
}

func (r encryptResponse) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"CiphertextBlob":`...)
	dst = appendBlob(dst, r.CiphertextBlob)
	dst = append(dst, `,"KeyId":`...)
	dst = appendString(dst, r.KeyID)
	dst = append(dst, `,"EncryptionAlgorithm":`...)
	dst = appendString(dst, r.EncryptionAlgorithm)
	return append(dst, '}')
}

func (r decryptResponse) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"Plaintext":`...)
	dst = appendBlob(dst, r.Plaintext)
	dst = append(dst, `,"KeyId":`...)
	dst = appendString(dst, r.KeyID)
	dst = append(dst, `,"EncryptionAlgorithm":`...)
	dst = appendString(dst, r.EncryptionAlgorithm)
	return append(dst, '}')
}

func (r reEncryptResponse) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"CiphertextBlob":`...)
	dst = appendBlob(dst, r.CiphertextBlob)
	dst = append(dst, `,"SourceKeyId":`...)
	dst = appendString(dst, r.SourceKeyID)
	dst = append(dst, `,"KeyId":`...)
	dst = appendString(dst, r.KeyID)
	dst = append(dst, `,"SourceEncryptionAlgorithm":`...)
	dst = appendString(dst, r.SourceEncryptionAlgorithm)
	dst = append(dst, `,"DestinationEncryptionAlgorithm":`...)
	dst = appendString(dst, r.DestinationEncryptionAlgorithm)
	return append(dst, '}')
}

// appendBlob is json.Marshal of a []byte: null when nil, else base64.
func appendBlob(dst, b []byte) []byte {
	if b == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, b)
	return append(dst, '"')
}

// appendString is json.Marshal of s: as it is when it is printable ASCII
// that needs no escape (ids, ARNs, algorithm names), else encoding/json's.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20, c >= utf8.RuneSelf, c == '"', c == '\\', c == '<', c == '>', c == '&':
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
