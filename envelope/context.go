package envelope

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Encryption-context limits.
const (
	MaxContextPairs = 64
	MaxContextKey   = 256
	MaxContextValue = 1024
	MaxContextBytes = 8 << 10
)

// CanonicalContext encodes an encryption context: u16 pair count, then for
// each pair in byte order of keys, u16 key length, key, u16 value length,
// value. A nil or empty context encodes as two zero bytes. Keys are 1..256
// bytes and values at most 1024 bytes of UTF-8; at most 64 pairs and 8 KiB.
func CanonicalContext(ctx map[string]string) ([]byte, error) {
	return AppendCanonicalContext(nil, ctx)
}

// AppendCanonicalContext appends the encoding of CanonicalContext to dst
// (nothing when it returns an error). A caller that seals or opens one
// message at a time can encode into a buffer on its stack, so that the
// context costs no allocation.
func AppendCanonicalContext(dst []byte, ctx map[string]string) ([]byte, error) {
	switch len(ctx) {
	case 0:
		return append(dst, 0, 0), nil
	case 1:
		// The common case: one pair, nothing to sort.
		for k, v := range ctx {
			if err := checkPair(k, v); err != nil {
				return nil, err
			}
			out := slices.Grow(dst, 2+4+len(k)+len(v))
			return appendPair(append(out, 0, 1), k, v), nil
		}
	}
	if len(ctx) > MaxContextPairs {
		return nil, fmt.Errorf("%w: %d pairs, limit %d", ErrContext, len(ctx), MaxContextPairs)
	}
	type pair struct{ k, v string }
	var small [8]pair // most contexts have a few pairs: no allocation
	pairs := small[:0]
	size := 2
	for k, v := range ctx {
		if err := checkPair(k, v); err != nil {
			return nil, err
		}
		pairs = append(pairs, pair{k, v})
		size += 4 + len(k) + len(v)
	}
	if size > MaxContextBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrContext, size, MaxContextBytes)
	}
	slices.SortFunc(pairs, func(a, b pair) int { return strings.Compare(a.k, b.k) })
	out := slices.Grow(dst, size)
	out = binary.BigEndian.AppendUint16(out, uint16(len(pairs)))
	for _, p := range pairs {
		out = appendPair(out, p.k, p.v)
	}
	return out, nil
}

// checkPair checks one pair of an encryption context. (One pair alone is
// at most 2 + 4 + 256 + 1024 bytes, within MaxContextBytes.)
func checkPair(k, v string) error {
	switch {
	case k == "" || len(k) > MaxContextKey:
		return fmt.Errorf("%w: key length %d out of 1..%d", ErrContext, len(k), MaxContextKey)
	case len(v) > MaxContextValue:
		return fmt.Errorf("%w: value of %q is %d bytes, limit %d", ErrContext, k, len(v), MaxContextValue)
	case !validUTF8(k) || !validUTF8(v):
		return fmt.Errorf("%w: not UTF-8", ErrContext)
	}
	return nil
}

// validUTF8 is utf8.ValidString after a plain byte loop over the ASCII
// prefix: most contexts' keys and values are a few bytes of ASCII, for
// which the loop is cheaper than ValidString's word-at-a-time path.
func validUTF8(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return utf8.ValidString(s[i:])
		}
	}
	return true
}

func appendPair(out []byte, k, v string) []byte {
	out = binary.BigEndian.AppendUint16(out, uint16(len(k)))
	out = append(out, k...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(v)))
	return append(out, v...)
}
