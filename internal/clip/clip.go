// Package clip bounds the caller-supplied text that error messages quote
// back: a key id, an address, a flag value. An id of 10 KB echoed whole
// fills a terminal and a log line with nothing the reader needs; its first
// bytes and its length say what was wrong just as well.
package clip

import (
	"strconv"
	"unicode/utf8"
)

// Max is how many bytes of a caller's text a message quotes.
const Max = 64

// Quote is s quoted as %q quotes it when s is at most Max bytes long;
// longer, it is the quoted first Max bytes (cut at a character boundary),
// an ellipsis and the length: "aaaa…" (10240 bytes).
func Quote(s string) string {
	if len(s) <= Max {
		return strconv.Quote(s)
	}
	cut := Max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "… (" + strconv.Itoa(len(s)) + " bytes)"
}
