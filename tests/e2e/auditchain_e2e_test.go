package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestCentralAuditChainInBackground runs a central process whose audit log
// was edited in its middle between runs. The central checks only the log's
// end at start, so it starts and serves; the background pass over the
// whole chain then finds the edit and reports it: an error log line,
// keybroker_audit_chain_broken 1, /readyz's audit_chain detail (the node
// stays ready), and a VerifyAuditChain line of its own. An intact log is
// reported verified the same ways, and `audit verify` names the edited line.
func TestCentralAuditChainInBackground(t *testing.T) {
	c := framework.NewSetup(t)
	p := c.StartCentral(t)
	for _, k := range []string{"payments", "refunds", "ledger"} {
		if out, code := c.CLIAs(t, p.Addr, identity.Admin, "ops", nil, "key", "create", k, "--type", "aes-256-gcm", "--mode", "derive"); code != 0 {
			t.Fatalf("key create %s: exit %d: %s", k, code, out)
		}
	}
	p.Stop(t)

	readyz := func(t *testing.T, opsAddr string) (int, map[string]any) {
		t.Helper()
		certPEM, keyPEM, err := c.CA.Issue(opsMonitor, nil, time.Hour)
		must(t, "Issue", err)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		must(t, "X509KeyPair", err)
		pool := x509.NewCertPool()
		pool.AddCert(c.CA.Cert)
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+opsAddr+"/readyz", nil)
		must(t, "NewRequest", err)
		resp, err := cl.Do(req)
		must(t, "GET /readyz", err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		must(t, "reading /readyz", err)
		var got struct {
			Checks map[string]any `json:"checks"`
		}
		must(t, "decoding /readyz", json.Unmarshal(body, &got))
		return resp.StatusCode, got.Checks
	}
	chainLines := func(outcome string) int {
		return len(c.AuditRecords(t, func(r audit.Record) bool { return r.Operation == "VerifyAuditChain" && r.Outcome == outcome }))
	}

	t.Run("intact", func(t *testing.T) {
		p := c.StartCentral(t)
		p.WaitLog(t, 0, "audit chain verified")
		if v, b := c.MetricAt(t, p.OpsAddr, "keybroker_audit_chain_verified", ""), c.MetricAt(t, p.OpsAddr, "keybroker_audit_chain_broken", ""); v != 1 || b != 0 {
			t.Errorf("keybroker_audit_chain_verified %v, _broken %v; want 1 and 0", v, b)
		}
		if code, checks := readyz(t, p.OpsAddr); code != http.StatusOK || !strings.HasPrefix(checks["audit_chain"].(string), "verified") {
			t.Errorf("/readyz = %d %v, want 200 and audit_chain verified", code, checks)
		}
		p.Stop(t)
		if n := chainLines("ok"); n != 1 {
			t.Errorf("%d VerifyAuditChain ok lines, want 1", n)
		}
	})

	t.Run("edited in the middle", func(t *testing.T) {
		data, err := os.ReadFile(c.AuditLog)
		must(t, "reading the audit log", err)
		lines := bytes.SplitAfter(data, []byte("\n")) // the last is empty
		if len(lines) < 4 || !bytes.Contains(lines[0], []byte(`"CreateKey"`)) {
			t.Fatalf("the audit log has %d lines, the first %s; want at least 4, a CreateKey first", len(lines), lines[0])
		}
		lines[0] = bytes.Replace(lines[0], []byte(`"payments"`), []byte(`"pavments"`), 1)
		must(t, "editing the audit log", os.WriteFile(c.AuditLog, bytes.Join(lines, nil), 0o600))

		p := c.StartCentral(t)
		p.WaitLog(t, 0, "audit chain BROKEN: the log was altered before this start; the node goes on appending to it")
		if v, b := c.MetricAt(t, p.OpsAddr, "keybroker_audit_chain_verified", ""), c.MetricAt(t, p.OpsAddr, "keybroker_audit_chain_broken", ""); v != 0 || b != 1 {
			t.Errorf("keybroker_audit_chain_verified %v, _broken %v; want 0 and 1", v, b)
		}
		if code, checks := readyz(t, p.OpsAddr); code != http.StatusOK || !strings.Contains(checks["audit_chain"].(string), "BROKEN: line 1: hash mismatch") {
			t.Errorf("/readyz = %d %v, want 200 (ready) and audit_chain BROKEN at line 1", code, checks)
		}
		if out, code := c.CLIAs(t, p.Addr, identity.Admin, "ops", nil, "key", "create", "after", "--type", "aes-256-gcm", "--mode", "derive"); code != 0 {
			t.Errorf("key create after the break: exit %d: %s", code, out)
		}
		p.Stop(t)
		if n := chainLines("broken"); n != 1 {
			t.Errorf("%d VerifyAuditChain broken lines, want 1", n)
		}
		cmd := exec.CommandContext(t.Context(), framework.Binary(), "audit", "verify", c.AuditLog)
		cmd.Env = framework.ProcessEnv()
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != exitVerifyFailed || !strings.Contains(string(out), "line 1: hash mismatch") {
			t.Errorf("audit verify of the edited log: exit %d: %s; want exit %d naming line 1", code, out, exitVerifyFailed)
		}
	})
}
