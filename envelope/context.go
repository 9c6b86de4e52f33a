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
	if len(ctx) > MaxContextPairs {
		return nil, fmt.Errorf("%w: %d pairs, limit %d", ErrContext, len(ctx), MaxContextPairs)
	}
	type pair struct{ k, v string }
	var small [8]pair // most contexts have a few pairs: no allocation
	pairs := small[:0]
	size := 2
	for k, v := range ctx {
		switch {
		case k == "" || len(k) > MaxContextKey:
			return nil, fmt.Errorf("%w: key length %d out of 1..%d", ErrContext, len(k), MaxContextKey)
		case len(v) > MaxContextValue:
			return nil, fmt.Errorf("%w: value of %q is %d bytes, limit %d", ErrContext, k, len(v), MaxContextValue)
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return nil, fmt.Errorf("%w: not UTF-8", ErrContext)
		}
		pairs = append(pairs, pair{k, v})
		size += 4 + len(k) + len(v)
	}
	if size > MaxContextBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrContext, size, MaxContextBytes)
	}
	if len(pairs) > 1 {
		slices.SortFunc(pairs, func(a, b pair) int { return strings.Compare(a.k, b.k) })
	}
	out := make([]byte, 0, size)
	out = binary.BigEndian.AppendUint16(out, uint16(len(pairs)))
	for _, p := range pairs {
		out = binary.BigEndian.AppendUint16(out, uint16(len(p.k)))
		out = append(out, p.k...)
		out = binary.BigEndian.AppendUint16(out, uint16(len(p.v)))
		out = append(out, p.v...)
	}
	return out, nil
}
