package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// opsMonitor is the admin identity the tests read the ops endpoints as.
var opsMonitor = identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Admin, Name: "monitor"}

// opsClient is an HTTPS client of the ops endpoints, presenting a
// certificate from the cluster's CA when withCert is set.
func (m *matrix) opsClient(t *testing.T, withCert bool) *http.Client {
	t.Helper()
	if !withCert {
		return m.opsClientAs(t, nil)
	}
	return m.opsClientAs(t, &opsMonitor)
}

// opsClientAs is an HTTPS client of the ops endpoints presenting a
// certificate for who (none when nil) from the cluster's CA.
func (m *matrix) opsClientAs(t *testing.T, who *identity.Identity) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(m.c.CA.Cert)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
	if who != nil {
		certPEM, keyPEM, err := m.c.CA.Issue(*who, nil, time.Hour)
		must(t, "Issue", err)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		must(t, "X509KeyPair", err)
		cfg.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// opsGet GETs path on the node's ops listener with a client certificate.
func (m *matrix) opsGet(t *testing.T, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+m.p.OpsAddr+path, nil)
	must(t, "NewRequest", err)
	resp, err := m.opsClient(t, true).Do(req)
	must(t, "GET "+path, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, "reading "+path, err)
	return resp.StatusCode, body
}

// opsEndpoints checks /healthz, /readyz and /metrics over mutual TLS on
// ops_listen, and that a client without a certificate gets no further than
// the TLS handshake.
func (m *matrix) opsEndpoints(t *testing.T) {
	t.Run("healthz", func(t *testing.T) {
		if code, body := m.opsGet(t, "/healthz"); code != http.StatusOK || string(body) != "ok\n" {
			t.Errorf("/healthz = %d %q, want 200 \"ok\\n\"", code, body)
		}
	})
	t.Run("readyz", func(t *testing.T) {
		code, body := m.opsGet(t, "/readyz")
		var got struct {
			Ready  bool              `json:"ready"`
			Checks map[string]string `json:"checks"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("/readyz body %q: %v", body, err)
		}
		backend := "backend:" + m.c.Roots.Name
		if code != http.StatusOK || !got.Ready || got.Checks[backend] != "ok" || len(got.Checks["policy"]) != 12 {
			t.Errorf("/readyz = %d %s; want 200, ready, %s ok and the policy hash", code, body, backend)
		}
		if e, ok := got.Checks["policy_reload"]; ok {
			t.Errorf("/readyz reports a reload error %q after the last reload succeeded", e)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		code, body := m.opsGet(t, "/metrics")
		for _, want := range []string{
			"# TYPE keybroker_grpc_requests_total counter",
			`keybroker_grpc_requests_total{code="OK",method="/keybroker.v1.KeyBroker/Encrypt"}`,
			`keybroker_grpc_requests_total{code="PermissionDenied",method="/keybroker.v1.KeyBroker/Encrypt"}`,
			`keybroker_grpc_requests_total{code="InvalidArgument",method="/keybroker.v1.KeyBroker/Decrypt"}`,
		} {
			if code != http.StatusOK || !bytes.Contains(body, []byte(want)) {
				t.Errorf("/metrics (status %d) has no %s", code, want)
			}
		}
	})
	// Only admins (ops.allow's default) are let in: a client or an edge of
	// the same CA and trust domain gets 403 and nothing else.
	t.Run("not an admin", func(t *testing.T) {
		for _, who := range []identity.Identity{
			{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "app"},
			{TrustDomain: framework.TrustDomain, Kind: identity.Edge, Name: "edge-rogue"},
		} {
			cl := m.opsClientAs(t, &who)
			for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
				req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+m.p.OpsAddr+path, nil)
				must(t, "NewRequest", err)
				resp, err := cl.Do(req)
				must(t, "GET "+path, err)
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				must(t, "reading "+path, err)
				if resp.StatusCode != http.StatusForbidden || len(body) != 0 {
					t.Errorf("GET %s as %s = %d %q, want 403 and an empty body", path, who, resp.StatusCode, body)
				}
			}
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+m.p.OpsAddr+"/healthz", nil)
		must(t, "NewRequest", err)
		resp, err := m.opsClient(t, false).Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("GET /healthz without a client certificate: %s, want a TLS handshake failure", resp.Status)
		}
		// TLS 1.3 finishes the client's side of the handshake before the
		// server checks the client's certificate; the server's refusal
		// arrives as an alert on the first read.
		if op, ok := errors.AsType[*net.OpError](err); !ok || op.Op != "remote error" || !strings.Contains(op.Err.Error(), "certificate required") {
			t.Errorf("GET /healthz without a client certificate: %v, want the server's certificate required alert", err)
		}
	})
}

// TestCentralBadConfig runs `keybroker central` on a configuration with an
// unknown field: it exits 2, names the file, the field and the line, and
// starts nothing.
func TestCentralBadConfig(t *testing.T) {
	c := framework.NewSetupOn(t, framework.SoftkmsRoots, nil)
	good, err := os.ReadFile(c.Config)
	must(t, "reading the config", err)
	lines := strings.Count(string(good), "\n")
	bad := string(good) + "material_cache:\n  size: 100\n  tll: 5m\n"
	must(t, "writing the config", os.WriteFile(c.Config, []byte(bad), 0o600))

	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), framework.Binary(), "central", "--config", c.Config)
	cmd.Env = framework.ProcessEnv()
	cmd.Stderr = &stderr
	err = cmd.Run()
	ee, ok := errors.AsType[*exec.ExitError](err)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("keybroker central with a bad config: %v, want exit status 2\n%s", err, &stderr)
	}
	want := c.Config + ": material_cache.tll: unknown field; did you mean ttl? (line " + strconv.Itoa(lines+3) + ")"
	if !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr %q\nwant it to contain %q", &stderr, want)
	}
	if strings.Contains(stderr.String(), "central ready") {
		t.Errorf("the node started:\n%s", &stderr)
	}
	for _, path := range []string{filepath.Join(c.Dir, "data"), c.AuditLog} {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a refused start (stat: %v)", path, err)
		}
	}
}
