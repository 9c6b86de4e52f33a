package client

import (
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload/workloadtest"
)

// TestSPIFFESocket: Config.SPIFFESocket, or KEYBROKER_SPIFFE_SOCKET when
// no certificate file is configured, takes the client's identity from a
// Workload API agent, followed as it rotates, and Close closes the source
// the client opened; an agent and files together are refused, naming
// both.
func TestSPIFFESocket(t *testing.T) {
	agent := workloadtest.Start(t, workloadtest.Options{TrustDomain: "kb.test", TTL: time.Hour})
	app := agent.MustAddWorkload(t, "spiffe://kb.test/client/app")
	env := func(vars map[string]string) func(string) string { return func(k string) string { return vars[k] } }
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"config", Config{SPIFFESocket: app.Addr(), Getenv: env(nil)}},
		{"environment", Config{Getenv: env(map[string]string{EnvSPIFFESocket: app.Addr()})}},
		{"config beats cert environment", Config{SPIFFESocket: app.Addr(), Getenv: env(map[string]string{EnvCert: "c.crt"})}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Addrs = []string{"127.0.0.1:1"}
			c, err := New(t.Context(), tc.cfg)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if got, want := c.live.Current().ID, (identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "app"}); got != want {
				t.Errorf("identity %s, want %s", got, want)
			}
			before := c.live.Current().Certificate.Leaf.SerialNumber
			if err := agent.RotateSVIDs(); err != nil {
				t.Fatal(err)
			}
			// Polled: Live's own follower takes the source's change
			// notifications.
			for c.live.Current().Certificate.Leaf.SerialNumber.Cmp(before) == 0 {
				if t.Context().Err() != nil {
					t.Fatal("the client did not follow the agent's rotation")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	for _, tc := range []struct {
		name, want string
		cfg        Config
	}{
		{"socket and files", "Config.SPIFFESocket and Config.Source, Config.TLS or the certificate files are all given",
			Config{SPIFFESocket: app.Addr(), CertFile: "c.crt", Getenv: env(nil)}},
		{"both in the environment", "both KEYBROKER_SPIFFE_SOCKET and KEYBROKER_CA/KEYBROKER_CERT/KEYBROKER_KEY are set",
			Config{Getenv: env(map[string]string{EnvSPIFFESocket: app.Addr(), EnvKey: "c.key"})}},
		{"tcp socket", "only unix sockets are accepted", Config{SPIFFESocket: "tcp://127.0.0.1:8081", Getenv: env(nil)}},
		{"nothing", "or SPIFFESocket, KEYBROKER_SPIFFE_SOCKET", Config{Getenv: env(nil)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Addrs = []string{"127.0.0.1:1"}
			c, err := New(t.Context(), tc.cfg)
			if err == nil {
				c.Close()
				t.Fatal("New accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want %q", err, tc.want)
			}
		})
	}
}
