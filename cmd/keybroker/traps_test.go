package main

// The newcomer traps of issue 14: each was met by a first-time operator
// with the command shown; each test runs that command and wants the
// answer a newcomer needs.

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/backends"
)

// stderrBound is how much stderr any refusal may print: enough to say
// what is wrong, never the caller's 10 KB input.
const stderrBound = 1024

// TestTrapAddresses: an address without a port, or with a bad one, is a
// usage error naming what is wrong before anything is dialled (grpc-go
// dialled a bare host at port 443); a bracketed IPv6 address is an
// address.
func TestTrapAddresses(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	long := strings.Repeat("h", 10240)
	tests := []struct{ addr, want string }{
		{"127.0.0.1", `--addr: address "127.0.0.1" has no port: give host:port, e.g. 127.0.0.1:7700`},
		{"::1", "write an IPv6 address in brackets, e.g. [::1]:7700"},
		{"127.0.0.1:0", `port "0" is not a number from 1 to 65535`},
		{"127.0.0.1:65536", `port "65536" is not a number from 1 to 65535`},
		{"127.0.0.1:https", `port "https" is not a number from 1 to 65535`},
		{long, `"… (10240 bytes) has no port`},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%.20s", tt.addr), func(t *testing.T) {
			before := len(b.fake.recorded())
			r := runCLI(t, with(b.env(), envAddr, tt.addr), nil, "random", "--length", "8")
			wantCode(t, r, exitUsage)
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.want)
			}
			if len(r.stderr) > stderrBound {
				t.Errorf("stderr is %d bytes, want at most %d", len(r.stderr), stderrBound)
			}
			if n := len(b.fake.recorded()) - before; n != 0 {
				t.Errorf("%d calls reached the broker", n)
			}
		})
	}
	t.Run("IPv6 in brackets", func(t *testing.T) {
		// Nothing listens there (or the host has no IPv6): the address is
		// taken and dialled, so the failure is the connection's, not usage.
		r := runCLI(t, with(b.env(), envAddr, "[::1]:"+portOf(t, deadAddr(t))), nil, "random", "--length", "8")
		wantCode(t, r, exitUnavailable)
		if !strings.Contains(r.stderr, `"[::1]:`) {
			t.Errorf("stderr %q does not name the address", r.stderr)
		}
	})
	t.Run("connect timeout not positive", func(t *testing.T) {
		r := b.run(t, nil, "random", "--length", "8", "--connect-timeout", "0s")
		wantCode(t, r, exitUsage)
		if !strings.Contains(r.stderr, "--connect-timeout must be positive") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	must(t, "split "+addr, err)
	return port
}

// TestTrapSilentPeer: a peer that accepts and never speaks stops the
// command after --connect-timeout (not grpc-go's 20 s) with words naming
// the address and the time limit.
func TestTrapSilentPeer(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	t.Cleanup(func() { lis.Close() })
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { <-done; c.Close() }()
		}
	}()
	r := runCLI(t, with(b.env(), envAddr, lis.Addr().String()), nil, "random", "--length", "8", "--connect-timeout", "200ms")
	wantCode(t, r, exitUnavailable)
	want := fmt.Sprintf("keybroker: random: unavailable: no answer from %q within 200ms (--connect-timeout)\n", lis.Addr().String())
	if r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
}

// TestTrapForeignClientCertificate: a client certificate the broker's CA
// did not sign is refused with words pointing at --cert. In TLS 1.3 the
// client may learn of the refusal from the broker's alert (a TLS failure,
// exit 8) or only from a closed connection (unavailable, exit 5).
func TestTrapForeignClientCertificate(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	other := startBroker(t, brokerConfig{})
	env := with(with(b.env(), envCert, other.tls.Cert), envKey, other.tls.Key)
	r := runCLI(t, env, nil, "random", "--length", "8")
	if r.code != exitTLS && r.code != exitUnavailable {
		t.Errorf("exit code %d, want %d or %d; stderr %s", r.code, exitTLS, exitUnavailable, r.stderr)
	}
	if !strings.Contains(r.stderr, "refused") || !strings.Contains(r.stderr, "--cert") {
		t.Errorf("stderr %q does not say the broker may have refused --cert", r.stderr)
	}
}

// TestTrapUnresolvableHost: a host name that does not resolve is named,
// and said not to resolve.
func TestTrapUnresolvableHost(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	r := runCLI(t, with(b.env(), envAddr, "nosuch.invalid:7700"), nil, "random", "--length", "8")
	wantCode(t, r, exitUnavailable)
	if !regexp.MustCompile(`keybroker: random: unavailable: (host "nosuch.invalid" does not resolve|cannot resolve host "nosuch.invalid")`).MatchString(r.stderr) {
		t.Errorf("stderr %q does not say that nosuch.invalid does not resolve", r.stderr)
	}
}

// TestTrapCommandSuggestions: a misspelt subcommand of any group gets
// cobra's suggestion, not only the root's, and exits 2.
func TestTrapCommandSuggestions(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"key", "craete", "payments"}, `unknown command "craete" for "keybroker key"; did you mean create?`},
		{[]string{"key", "rotat"}, `did you mean rotate?`},
		{[]string{"node", "enrol", "edge-1"}, `did you mean enroll?`},
		{[]string{"audit", "verfy"}, `did you mean verify?`},
		{[]string{"root", "craete", "x"}, `unknown command "craete" for "keybroker root"; did you mean create?`},
	} {
		r := runCLI(t, nil, nil, tt.args...)
		wantCode(t, r, exitUsage)
		if !strings.Contains(r.stderr, tt.want) {
			t.Errorf("%v: stderr %q does not contain %q", tt.args, r.stderr, tt.want)
		}
	}
}

// TestTrapExitCodes: an existing key is invalid input (6) wherever it is
// met, and a failed TLS handshake is TLS (8), not unavailable (5), also
// when only the status text says so (the SDK's streams).
func TestTrapExitCodes(t *testing.T) {
	t.Parallel()
	rpc := func(c codes.Code, msg string) error { return &rpcError{op: "x", st: status.New(c, msg)} }
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"AlreadyExists", rpc(codes.AlreadyExists, `key "k" already exists`), exitInvalid},
		{"a backend's existing key", backendError(fmt.Errorf("create: %w", backends.ErrInvalidArgument)), exitInvalid},
		{"a backend unavailable", backendError(fmt.Errorf("create: %w", backends.ErrUnavailable)), exitUnavailable},
		{"a backend's other error", backendError(errors.New("create: boom")), exitFailure},
		{"unknown CA", rpc(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`), exitTLS},
		{"client certificate refused", rpc(codes.Unavailable, `connection error: desc = "error reading server preface: remote error: tls: unknown certificate authority"`), exitTLS},
		{"ops port", rpc(codes.Unavailable, `connection error: desc = "transport: authentication handshake failed: credentials: cannot check peer: missing selected ALPN property"`), exitUsage},
		{"plain unavailable", rpc(codes.Unavailable, "the central tier is down"), exitUnavailable},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err, true); got != tt.want {
			t.Errorf("%s: exitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
