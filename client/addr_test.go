package client_test

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/client"
)

// TestNewRefusesBadAddresses checks New refuses, before dialling, the
// addresses grpc-go would otherwise dial somewhere unexpected (a bare host
// at port 443), and says what is wrong; a bracketed IPv6 address works.
func TestNewRefusesBadAddresses(t *testing.T) {
	t.Parallel()
	// New needs a client certificate to exist, not to be valid: it dials
	// nothing.
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{{0}}}}}
	tests := []struct{ addr, want string }{
		{"127.0.0.1", `client: address "127.0.0.1" has no port: give host:port, e.g. 127.0.0.1:7700`},
		{"::1", "write an IPv6 address in brackets"},
		{"localhost:0", `port "0" is not a number from 1 to 65535`},
		{"localhost:70000", `port "70000" is not a number from 1 to 65535`},
		{strings.Repeat("x", 10240), "(10240 bytes) has no port"},
	}
	for _, tt := range tests {
		_, err := client.New(t.Context(), client.Config{Addrs: []string{"127.0.0.1:7700", tt.addr}, TLS: tlsCfg})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New with address %.20q: %v, want an error containing %q", tt.addr, err, tt.want)
		}
		if err != nil && len(err.Error()) > 256 {
			t.Errorf("New with address %.20q: a %d-byte error", tt.addr, len(err.Error()))
		}
	}
	for _, addr := range []string{"[::1]:7700", "127.0.0.1:1", "localhost:65535"} {
		c, err := client.New(t.Context(), client.Config{Addrs: []string{addr}, TLS: tlsCfg})
		if err != nil {
			t.Errorf("New with address %q: %v", addr, err)
			continue
		}
		_ = c.Close()
	}
}

// TestErrorQuotesLongKeyBounded checks an operation's error quotes at most
// 64 bytes of a key id a caller got wrong, with its length, not 10 KB.
func TestErrorQuotesLongKeyBounded(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("k", 10240)
	e := &client.Error{Op: "Encrypt", Key: long, Node: "127.0.0.1:7700", Message: "key_id is not valid"}
	got := e.Error()
	if len(got) > 200 || !strings.Contains(got, "(10240 bytes)") {
		t.Errorf("Error() = %.300q (%d bytes), want at most 200 bytes naming the length", got, len(got))
	}
	e.Key = "payments"
	if got, want := e.Error(), "keybroker: Encrypt payments at 127.0.0.1:7700: key_id is not valid"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}
