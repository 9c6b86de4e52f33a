package main

// The newcomer traps of issue 14: each was met by a first-time operator
// with the command shown; each test runs that command and wants the
// answer a newcomer needs.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
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

// TestTrapRootCreateTwice: creating a root key that exists is invalid
// input (exit 6), not "any other error" (exit 1).
func TestTrapRootCreateTwice(t *testing.T) {
	t.Parallel()
	roots := softkmsRoots(t, t.TempDir())
	uri := roots.createURI("root-prf")
	wantCode(t, runCLI(t, nil, nil, "root", "create", uri, "--algorithm", "hmac-256"), 0)
	r := runCLI(t, nil, nil, "root", "create", uri, "--algorithm", "hmac-256")
	wantCode(t, r, exitInvalid)
	if !strings.Contains(r.stderr, "exists") {
		t.Errorf("stderr %q does not say the key exists", r.stderr)
	}
}

// TestTrapsAgainstDev runs the traps that need a real cluster against
// `keybroker dev`: its first line, a plain key create, key describe's minimum version, a
// 10 KB key id through an edge and at the central tier, and --addr at an
// ops port.
func TestTrapsAgainstDev(t *testing.T) {
	t.Parallel()
	p := startDev(t, filepath.Join(t.TempDir(), "kb"), "--port", "0")
	env := p.waitReady(t)
	stdout, stderr := p.output()
	nodes := devNodes(t, stdout)

	// The first line says the slow work has begun.
	if first, _, _ := strings.Cut(stderr, "\n"); !strings.Contains(first, "keybroker dev starting") {
		t.Errorf("keybroker dev's first line is %q, want it to say it is starting", first)
	}

	t.Run("plain key create", func(t *testing.T) {
		r := runCLI(t, env, nil, "key", "create", "plain", "--output", "json")
		wantCode(t, r, 0)
		var k keyJSON
		must(t, "decoding key create", json.Unmarshal([]byte(r.stdout), &k))
		if k.Type != "aes-256-gcm" || k.Mode != "derive" {
			t.Errorf("a plain key create made a %s key in mode %s, want aes-256-gcm, derive", k.Type, k.Mode)
		}
		wantCode(t, runCLI(t, env, []byte("x"), "encrypt", "--key", "plain", "--out", filepath.Join(t.TempDir(), "x.enc")), 0)
	})

	t.Run("min decryption version in words", func(t *testing.T) {
		r := runCLI(t, env, nil, "key", "describe", demoKeyID)
		wantCode(t, r, 0)
		if !regexp.MustCompile(`(?m)^Min decryption version: +none \(every version decrypts\)$`).MatchString(r.stdout) {
			t.Errorf("key describe does not say every version decrypts:\n%s", r.stdout)
		}
	})

	t.Run("10 KB key id", func(t *testing.T) {
		id := strings.Repeat("k", 10240)
		for _, tt := range []struct {
			name string
			env  map[string]string
			args []string
		}{
			{"describe at the edge", env, []string{"key", "describe", id}},
			{"encrypt at the edge", env, []string{"encrypt", "--key", id}},
			{"create, forwarded to central", env, []string{"key", "create", id}},
			{"rotate at central", withAddr(env, nodes["central"].grpc), []string{"key", "rotate", id}},
			{"datakey at central", withAddr(env, nodes["central"].grpc), []string{"datakey", "--key", id}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				r := runCLI(t, tt.env, []byte("x"), tt.args...)
				wantCode(t, r, exitInvalid)
				if len(r.stderr) > stderrBound {
					t.Errorf("stderr is %d bytes, want at most %d: %.300q…", len(r.stderr), stderrBound, r.stderr)
				}
				for _, want := range []string{`"kkkk`, "… (10240 bytes)", "must be 1-128"} {
					if !strings.Contains(r.stderr, want) {
						t.Errorf("stderr %.300q does not contain %q", r.stderr, want)
					}
				}
			})
		}
	})

	t.Run("addr at an ops port", func(t *testing.T) {
		ops := strings.TrimPrefix(nodes["edge-us"].ops, "https://")
		r := runCLI(t, withAddr(env, ops), nil, "key", "list")
		wantCode(t, r, exitUsage)
		want := fmt.Sprintf("keybroker: key list: %q is not a keybroker gRPC port (it answered without HTTP/2 — is it the ops/metrics port?)\n", ops)
		if !strings.HasPrefix(r.stderr, want) {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
		// A stream goes through the SDK, not the CLI's own connection: the
		// status text is all there is, and it is put in words too.
		r = runCLI(t, withAddr(env, ops), []byte("x"), "encrypt", "--stream", "--key", demoKeyID, "--out", filepath.Join(t.TempDir(), "x.enc"))
		wantCode(t, r, exitUsage)
		if !strings.Contains(r.stderr, "is it the ops/metrics port?") {
			t.Errorf("stderr %q does not ask whether it is the ops port", r.stderr)
		}
	})
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
