package workload_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/identity/workload"
)

// FuzzParseSocket checks the parser of the agent's socket as written in a
// configuration or SPIFFE_ENDPOINT_SOCKET: no panic; an accepted socket
// is an absolute unix:/// address with no host, query or fragment, which
// parses back to itself.
func FuzzParseSocket(f *testing.F) {
	for _, s := range []string{
		"unix:///run/spire/agent.sock",
		"/run/spire/agent.sock",
		"agent.sock",
		"../x/../agent.sock",
		"unix:agent.sock",
		"unix://host/agent.sock",
		"unix:///a.sock?x=1",
		"unix:///a.sock#f",
		"unix:///a%20b.sock",
		"tcp://127.0.0.1:8081",
		"UNIX:///a.sock",
		"//host/a.sock",
		"\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" {
			return // the environment's socket; not this parser's input
		}
		got, err := workload.ParseSocket(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "workload: ") {
				t.Fatalf("ParseSocket(%q) error %q does not name the package", s, err)
			}
			return
		}
		u, err := url.Parse(got)
		if err != nil || u.Scheme != "unix" || u.Host != "" || u.RawQuery != "" || u.Fragment != "" || !strings.HasPrefix(u.Path, "/") {
			t.Fatalf("ParseSocket(%q) = %q, not an absolute unix:/// address (%v)", s, got, err)
		}
		again, err := workload.ParseSocket(got)
		if err != nil || again != got {
			t.Fatalf("ParseSocket(%q) = %q, which parses again as %q, %v", s, got, again, err)
		}
	})
}
