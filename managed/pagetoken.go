package managed

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/envelope"
)

// Page tokens are the cursor ListKeys hands out: opaque to clients, the
// same at every node (a client that moves to another central or an edge
// mid-listing goes on where it was), and stateless — a node keeps nothing
// per listing. A token names the last key of the page it ended (one the
// caller was shown, never a key it may not see) and the label selector it
// was made for: the next page starts after that id, so keys created or
// deleted between pages never make a listing repeat or skip a key that
// existed throughout, and a token presented with another selector, or
// altered, is refused rather than read as some other position.
//
// Layout: "k1." then base64url (no padding) of an 8-byte check, then the
// id; the check is the first 8 bytes of SHA-256 over the selector (sorted
// name=value pairs, each ended by NUL), a NUL, and the id. The check is
// no secret — a token is a position, and any position is one a caller
// may list from — it catches a token altered or used with another
// selector.
const pageTokenPrefix = "k1."

// tokenCheck is a token's check of its selector and id.
func tokenCheck(selector map[string]string, id string) []byte {
	names := make([]string, 0, len(selector))
	for n := range selector {
		names = append(names, n)
	}
	slices.Sort(names)
	h := sha256.New()
	for _, n := range names {
		h.Write([]byte(n))
		h.Write([]byte{'='})
		h.Write([]byte(selector[n]))
		h.Write([]byte{0})
	}
	h.Write([]byte{0})
	h.Write([]byte(id))
	return h.Sum(nil)[:8]
}

// PageToken is the token of a page that ended at key lastID, listed with
// selector.
func PageToken(selector map[string]string, lastID string) string {
	return pageTokenPrefix + base64.RawURLEncoding.EncodeToString(append(tokenCheck(selector, lastID), lastID...))
}

// PageAfter is the id a page token says the next page starts after ("" for
// no token): ErrInvalidArgument when the token is not one a node made for
// this selector.
func PageAfter(token string, selector map[string]string) (string, error) {
	if token == "" {
		return "", nil
	}
	raw, ok := strings.CutPrefix(token, pageTokenPrefix)
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if !ok || err != nil || len(b) <= 8 || !envelope.ValidKeyID(string(b[8:])) || !bytes.Equal(b[:8], tokenCheck(selector, string(b[8:]))) {
		return "", Errorf(ErrInvalidArgument, "page token is not one ListKeys returned for this label selector: pass next_page_token unchanged with the same selector, or none to start")
	}
	return string(b[8:]), nil
}

// Matches says whether k's labels include every selector pair (a pair
// with an empty value also matches a key without the label).
func (k *Key) Matches(selector map[string]string) bool {
	for lk, lv := range selector {
		if k.Labels[lk] != lv {
			return false
		}
	}
	return true
}
