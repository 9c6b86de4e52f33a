// Package secret holds key material in a type that is hard to leak.
//
// A [Bytes] value never prints its contents: every fmt verb, slog, JSON and
// text marshalling show "[REDACTED]". Code that needs the raw bytes calls
// [Bytes.Reveal], which is easy to grep for. [Bytes.Destroy] zeroes the
// memory; owners call it when the value is evicted or no longer needed.
//
// Nothing zeroes a value when it is garbage-collected: a runtime cleanup on
// the Bytes would run once the Bytes is unreachable, while a slice Reveal
// returned may still be in use (s.Reveal() passed to a call as s's last use),
// and zeroing under it would make a call seal, encrypt or persist zeros as
// if they were the key. Correct results come first; values handed to callers
// whose lifetime no one owns (the caches' data keys) are left to the
// collector.
//
// # Ownership
//
// [New] takes ownership of the slice it is given: the caller must not keep or
// reuse it. [Copy] copies. A destroyed value has length zero and reveals nil.
// Bytes is safe for concurrent reads; Destroy must not race with readers.
package secret

import (
	"crypto/subtle"
	"fmt"
	"log/slog"
)

const redacted = "[REDACTED]"

// Bytes is secret byte material. The zero value and nil are empty secrets.
type Bytes struct {
	b []byte
}

// New wraps b without copying; the caller gives up b.
func New(b []byte) *Bytes {
	return &Bytes{b: b}
}

// Copy returns a secret holding a copy of b. The caller still owns b and
// should clear it when done.
func Copy(b []byte) *Bytes {
	return New(append([]byte(nil), b...))
}

// Reveal returns the underlying bytes. The slice aliases the secret: it is
// zeroed by Destroy and must not be retained, logged or written to disk.
func (s *Bytes) Reveal() []byte {
	if s == nil {
		return nil
	}
	return s.b
}

// Len reports the length of the secret.
func (s *Bytes) Len() int {
	if s == nil {
		return 0
	}
	return len(s.b)
}

// Equal compares two secrets in constant time (for equal lengths).
func (s *Bytes) Equal(o *Bytes) bool {
	return subtle.ConstantTimeCompare(s.Reveal(), o.Reveal()) == 1
}

// Clone returns an independent copy.
func (s *Bytes) Clone() *Bytes {
	return Copy(s.Reveal())
}

// Destroy zeroes the secret and empties it. It is safe to call more than once
// and on nil.
func (s *Bytes) Destroy() {
	if s == nil {
		return
	}
	clear(s.b)
	s.b = nil
}

// String implements fmt.Stringer without revealing anything.
func (s *Bytes) String() string { return redacted }

// GoString implements fmt.GoStringer without revealing anything.
func (s *Bytes) GoString() string { return "secret.Bytes(" + redacted + ")" }

// Format implements fmt.Formatter so that no verb (%x, %v, %s, %q, %d...)
// prints the contents.
func (s *Bytes) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue implements slog.LogValuer.
func (s *Bytes) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText implements encoding.TextMarshaler (and so JSON) without
// revealing anything.
func (s *Bytes) MarshalText() ([]byte, error) { return []byte(redacted), nil }
