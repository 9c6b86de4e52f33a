package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// policyMatrix checks that each decision gives the right gRPC code and an
// audit line naming the request, the principal, the decision, the deciding
// policy and the outcome.
func (m *matrix) policyMatrix(t *testing.T) {
	m.createKey(t, keySpec{id: "policy-rotate", typ: typeAES, mode: modeDerive}, ownerLabels)
	billing, intern, loose := m.app, m.as(t, "intern"), m.as(t, "loose")
	encrypt := func(who *framework.Conn, key string) func(context.Context, grpc.CallOption) error {
		return func(ctx context.Context, opt grpc.CallOption) error {
			_, err := who.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: []byte("x")}, opt)
			return err
		}
	}
	rotate := func(who *framework.Conn, key string) func(context.Context, grpc.CallOption) error {
		return func(ctx context.Context, opt grpc.CallOption) error {
			_, err := who.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: key}, opt)
			return err
		}
	}
	for _, tc := range []struct {
		name     string
		who      *framework.Conn
		op, key  string
		call     func(context.Context, grpc.CallOption) error
		code     codes.Code
		decision string
		policyID string
	}{
		{"client on its domain's key", billing, "Encrypt", "aes-derive", encrypt(billing, "aes-derive"),
			codes.OK, "allow", "app-keys"},
		{"client on a key it does not own", billing, "Encrypt", unownedKey, encrypt(billing, unownedKey),
			codes.PermissionDenied, "deny", "default-deny"},
		{"client on an unknown key is denied, not told it is missing", billing, "Encrypt", "no-such-key", encrypt(billing, "no-such-key"),
			codes.PermissionDenied, "deny", "default-deny"},
		{"a forbid wins over a permit", intern, "Sign", "ec-derive", func(ctx context.Context, opt grpc.CallOption) error {
			_, err := intern.KB.Sign(ctx, &kbv1.SignRequest{KeyId: "ec-derive", Input: &kbv1.SignRequest_Message{Message: []byte("x")}}, opt)
			return err
		}, codes.PermissionDenied, "deny", "no-sign-for-interns"},
		{"the forbid leaves the rest allowed", intern, "Encrypt", "aes-derive", encrypt(intern, "aes-derive"),
			codes.OK, "allow", "app-keys"},
		{"a loose policy grants a client a key it does not own", loose, "Encrypt", unownedKey, encrypt(loose, unownedKey),
			codes.OK, "allow", "loose"},
		{"a loose policy cannot grant a client RotateKey", loose, "RotateKey", "policy-rotate", rotate(loose, "policy-rotate"),
			codes.PermissionDenied, "deny", "schema"},
		{"a loose policy cannot grant a client CreateKey", loose, "CreateKey", "loose-made", func(ctx context.Context, opt grpc.CallOption) error {
			_, err := loose.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "loose-made", Type: typeAES, Mode: modeDerive}, opt)
			return err
		}, codes.PermissionDenied, "deny", "schema"},
		{"a client may not list nodes", billing, "ListNodes", "", func(ctx context.Context, opt grpc.CallOption) error {
			_, err := billing.Admin.ListNodes(ctx, &kbv1.ListNodesRequest{}, opt)
			return err
		}, codes.PermissionDenied, "deny", "schema"},
		{"client on a service action", billing, "GenerateRandom", "", func(ctx context.Context, opt grpc.CallOption) error {
			_, err := billing.KB.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 16}, opt)
			return err
		}, codes.OK, "allow", "client-service"},
		{"admin action", m.admin, "RotateKey", "policy-rotate", rotate(m.admin, "policy-rotate"),
			codes.OK, "allow", "admins"},
		{"admin on an unknown key", m.admin, "DescribeKey", "no-such-key", func(ctx context.Context, opt grpc.CallOption) error {
			_, err := m.admin.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "no-such-key"}, opt)
			return err
		}, codes.NotFound, "allow", "admins"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rctx, rid := framework.WithRequestID(t)
			var header metadata.MD
			err := tc.call(rctx, grpc.Header(&header))
			wantStatus(t, tc.op, err, tc.code)
			// The client's id is echoed but is not the audit's request id.
			if got := header.Get("x-client-request-id"); len(got) != 1 || got[0] != rid {
				t.Errorf("response x-client-request-id = %q, want %q", got, rid)
			}
			wantOutcome := "ok"
			if tc.code != codes.OK {
				wantOutcome = tc.code.String()
			}
			lines := m.c.AuditLines(t, rid)
			if len(lines) != 1 {
				t.Fatalf("%d audit lines for request %s, want 1: %+v", len(lines), rid, lines)
			}
			r := lines[0]
			if got := header.Get("x-request-id"); len(got) != 1 || got[0] != r.RequestID || r.RequestID == rid || r.ClientRequestID != rid {
				t.Errorf("response x-request-id %q, audit request id %q, client request id %q; want the node's own id, and the client's %q apart", got, r.RequestID, r.ClientRequestID, rid)
			}
			if r.Principal != tc.who.ID || r.Node != "central-1" || string(r.Operation) != tc.op || r.Key != tc.key ||
				string(r.Decision) != tc.decision || r.PolicyID != tc.policyID || r.Outcome != wantOutcome {
				t.Errorf("audit line %+v\nwant principal %s, node central-1, operation %s, key %q, decision %s, policy_id %s, outcome %s",
					r, tc.who.ID, tc.op, tc.key, tc.decision, tc.policyID, wantOutcome)
			}
		})
	}
}

// authentication checks the callers that have no identity here: a
// certificate of another trust domain from the same CA reaches the node and
// is refused and audited; a certificate from another CA, or none, does not
// get past the TLS handshake.
func (m *matrix) authentication(t *testing.T) {
	encrypt := func(r *framework.Conn) (string, error) {
		rctx, rid := framework.WithRequestID(t)
		_, err := r.KB.Encrypt(rctx, &kbv1.EncryptRequest{KeyId: "aes-derive", Plaintext: []byte("x"), EncryptionContext: opsContext("aes-derive")})
		return rid, err
	}
	t.Run("another trust domain, same CA", func(t *testing.T) {
		other := *m.c.CA
		other.TrustDomain = "other.test"
		id := identity.Identity{TrustDomain: "other.test", Kind: identity.Client, Name: "billing"}
		certPEM, keyPEM, err := other.Issue(id, nil, time.Hour)
		must(t, "Issue", err)
		rid, err := encrypt(m.c.DialWith(t, m.p.Addr, id.String(), certPEM, keyPEM))
		wantStatus(t, "Encrypt", err, codes.Unauthenticated, `trust domain "other.test" is not "kb.test"`)
		lines := m.c.AuditLines(t, rid)
		if len(lines) != 1 {
			t.Fatalf("%d audit lines for request %s, want 1", len(lines), rid)
		}
		if r := lines[0]; r.Principal != "" || r.Operation != "Encrypt" || r.Decision != "deny" || r.Outcome != "Unauthenticated" ||
			!strings.Contains(r.Detail, "other.test") {
			t.Errorf("audit line %+v, want no principal, Encrypt, deny, Unauthenticated, a detail naming other.test", r)
		}
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		ca, err := identity.NewCA(framework.TrustDomain, time.Hour)
		must(t, "NewCA", err)
		id := identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "billing"}
		certPEM, keyPEM, err := ca.Issue(id, nil, time.Hour)
		must(t, "Issue", err)
		rid, err := encrypt(m.c.DialWith(t, m.p.Addr, id.String(), certPEM, keyPEM))
		wantStatus(t, "Encrypt", err, codes.Unavailable)
		if lines := m.c.AuditLines(t, rid); len(lines) != 0 {
			t.Errorf("a call refused in the handshake left audit lines: %+v", lines)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		rid, err := encrypt(m.c.DialWith(t, m.p.Addr, "", nil, nil))
		wantStatus(t, "Encrypt", err, codes.Unavailable)
		if lines := m.c.AuditLines(t, rid); len(lines) != 0 {
			t.Errorf("a call refused in the handshake left audit lines: %+v", lines)
		}
	})
}

const hotRule = `
@id("hot-reload")
forbid (principal == Client::"hot", action == Action::"Encrypt", resource);
`

// brokenRule parses but names an action the schema does not have.
const brokenRule = `
@id("broken")
permit (principal is Client, action == Action::"Explode", resource);
`

// hotReload replaces the policy file and sends SIGHUP: a new rule takes
// effect, a broken policy is refused with a log line saying why and the
// previous policy stays.
func (m *matrix) hotReload(t *testing.T) {
	hot := m.as(t, "hot")
	encrypt := func(want codes.Code, wantPolicy string) {
		t.Helper()
		rctx, rid := framework.WithRequestID(t)
		_, err := hot.KB.Encrypt(rctx, &kbv1.EncryptRequest{KeyId: "aes-derive", Plaintext: []byte("x")})
		wantStatus(t, "Encrypt", err, want)
		if lines := m.c.AuditLines(t, rid); len(lines) != 1 || lines[0].PolicyID != wantPolicy {
			t.Errorf("audit lines %+v, want one with policy_id %s", lines, wantPolicy)
		}
	}
	reload := func(text, wantMsg string) map[string]any {
		t.Helper()
		m.c.WritePolicy(t, text)
		mark := m.p.Mark()
		must(t, "SIGHUP", m.p.Cmd.Process.Signal(syscall.SIGHUP))
		return m.p.WaitLog(t, mark, wantMsg)
	}
	encrypt(codes.OK, "app-keys")

	rec := reload(framework.Policy+hotRule, "policy reloaded")
	newHash, _ := rec["policy"].(string)
	encrypt(codes.PermissionDenied, "hot-reload")

	rec = reload(framework.Policy+brokenRule, "policy reload failed; the previous policy stays in force")
	// The broken policy starts on the line after e2ePolicy's last.
	where := m.c.PolicyFile + ":" + strconv.Itoa(strings.Count(framework.Policy, "\n")+2)
	if msg, _ := rec["err"].(string); rec["level"] != "ERROR" || !strings.Contains(msg, where) || !strings.Contains(msg, "Explode") {
		t.Errorf("reload failure logged as %v; want level ERROR and an err naming %s and the action Explode", rec, where)
	}
	encrypt(codes.PermissionDenied, "hot-reload")
	code, body := m.opsGet(t, "/readyz")
	if code != 200 || !bytes.Contains(body, []byte(`"policy":"`+newHash+`"`)) || !bytes.Contains(body, []byte(`"policy_reload":`)) {
		t.Errorf("/readyz after a failed reload = %d %s; want 200 with policy %s and the reload error", code, body, newHash)
	}

	reload(framework.Policy, "policy reloaded")
	encrypt(codes.OK, "app-keys")
}

// auditTamper checks `keybroker audit verify` on copies of the stopped
// node's audit log: the log as written verifies (exit 0); an edited line,
// a dropped middle line, two swapped lines and a dropped last line do not
// (exit 7).
func (m *matrix) auditTamper(t *testing.T) {
	data, err := os.ReadFile(m.c.AuditLog)
	must(t, "reading the audit log", err)
	head, err := os.ReadFile(m.c.AuditLog + ".head")
	must(t, "reading the audit head", err)
	lines := bytes.SplitAfter(data, []byte("\n"))
	lines = lines[:len(lines)-1] // after the final newline
	if len(lines) < 20 {
		t.Fatalf("the audit log has %d lines; the matrix should have left hundreds", len(lines))
	}
	denied := -1
	for i, l := range lines {
		if bytes.Contains(l, []byte(`"outcome":"PermissionDenied"`)) {
			denied = i
			break
		}
	}
	if denied < 0 {
		t.Fatal("no PermissionDenied line in the audit log")
	}
	mid := len(lines) / 2
	edit := func(f func(l [][]byte) [][]byte) [][]byte {
		return f(append([][]byte(nil), lines...))
	}
	for _, tc := range []struct {
		name  string
		lines [][]byte
		want  int
		out   string
	}{
		{"untouched", lines, 0, "head file matched"},
		{"a denial rewritten as allowed", edit(func(l [][]byte) [][]byte {
			l[denied] = bytes.Replace(bytes.Replace(l[denied], []byte(`"decision":"deny"`), []byte(`"decision":"allow"`), 1),
				[]byte(`"outcome":"PermissionDenied"`), []byte(`"outcome":"ok"`), 1)
			return l
		}), 7, "does not verify"},
		{"a middle line dropped", edit(func(l [][]byte) [][]byte { return append(l[:mid], l[mid+1:]...) }), 7, "does not verify"},
		{"two lines swapped", edit(func(l [][]byte) [][]byte { l[mid], l[mid+1] = l[mid+1], l[mid]; return l }), 7, "does not verify"},
		{"the last line dropped", edit(func(l [][]byte) [][]byte { return l[:len(l)-1] }), 7, "does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			must(t, "writing the log", os.WriteFile(path, bytes.Join(tc.lines, nil), 0o600))
			must(t, "writing the head", os.WriteFile(path+".head", head, 0o600))
			cmd := exec.CommandContext(t.Context(), framework.Binary(), "audit", "verify", path)
			cmd.Env = framework.ProcessEnv()
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := errors.AsType[*exec.ExitError](err); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.want || !strings.Contains(string(out), tc.out) {
				t.Errorf("keybroker audit verify: exit %d, %q; want exit %d and %q", code, out, tc.want, tc.out)
			}
		})
	}
}
