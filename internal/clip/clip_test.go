package clip

import (
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 10240)
	tests := []struct{ in, want string }{
		{"", `""`},
		{"payments", `"payments"`},
		{"a\"b\n", `"a\"b\n"`},
		{strings.Repeat("x", Max), `"` + strings.Repeat("x", Max) + `"`},
		{long, `"` + strings.Repeat("a", Max) + `"… (10240 bytes)`},
		// A cut never splits a character: é is two bytes, the 64th byte
		// would be the first half of the 32nd.
		{"a" + strings.Repeat("é", 40), `"a` + strings.Repeat("é", 31) + `"… (81 bytes)`},
	}
	for _, tt := range tests {
		if got := Quote(tt.in); got != tt.want {
			t.Errorf("Quote(%.20q…) = %s, want %s", tt.in, got, tt.want)
		}
	}
	if got := Quote(long); len(got) > 100 {
		t.Errorf("Quote of 10 KB is %d bytes long", len(got))
	}
}
