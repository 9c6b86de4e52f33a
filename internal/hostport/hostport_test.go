package hostport

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"127.0.0.1:7700", "localhost:1", "[::1]:7700", "broker.example.com:65535", "[fe80::1%eth0]:443"} {
		if err := Check(ok); err != nil {
			t.Errorf("Check(%q) = %v, want nil", ok, err)
		}
	}
	tests := []struct{ addr, want string }{
		{"127.0.0.1", `address "127.0.0.1" has no port: give host:port, e.g. 127.0.0.1:7700`},
		{"", `address "" has no port`},
		{"::1", "write an IPv6 address in brackets, e.g. [::1]:7700"},
		{"::1:7700", "write an IPv6 address in brackets"},
		{":7700", `address ":7700" names no host`},
		{"host:0", `port "0" is not a number from 1 to 65535`},
		{"host:65536", `port "65536" is not a number from 1 to 65535`},
		{"host:-1", `port "-1" is not a number`},
		{"host:https", `port "https" is not a number`},
		{"host:", `port "" is not a number`},
		{"[::1]", `address "[::1]" is not host:port`},
		{strings.Repeat("h", 10000), "(10000 bytes) has no port: give host:port, e.g. broker.example.com:7700"},
	}
	for _, tt := range tests {
		err := Check(tt.addr)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Check(%.20q) = %v, want an error containing %q", tt.addr, err, tt.want)
		}
		if err != nil && len(err.Error()) > 200 {
			t.Errorf("Check(%.20q) error is %d bytes long", tt.addr, len(err.Error()))
		}
	}
}
