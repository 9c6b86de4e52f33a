package e2e

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/tests/framework"
)

// deployPorts is how many ports the walk-through takes from KB_PORT:
// central, two edges, and their operations ports 10 above.
const deployPorts = 13

// freePortBase finds a base port with deployPorts free ports above it,
// below the ephemeral range so that outgoing connections do not take
// them meanwhile.
func freePortBase(t *testing.T) int {
	t.Helper()
	for range 50 {
		base := 20000 + rand.IntN(10000)
		var ls []net.Listener
		ok := true
		for i := range deployPorts {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+i))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("found no free range of ports for the walk-through")
	return 0
}

// TestDeployWalkthrough runs every shell block of docs/deploy.md's
// walk-through, in order, in one bash with -euo pipefail: a CA in a
// SoftHSM2 token, certificates, root keys in another token, a central node
// and two edges as real processes, the production policy, a key, and
// encryption through the edges; then checks the output says what the
// page says. The script's trap stops the nodes it started; the process
// group is killed besides, whatever happens.
func TestDeployWalkthrough(t *testing.T) {
	t.Parallel()
	softhsmtest.Require(t)
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("the walk-through needs bash")
	}
	module, _ := softhsmtest.Module()
	blocks := docShellBlocks(t, filepath.Join("..", "..", "docs", "deploy.md"), "## Walk-through")
	if len(blocks) < 10 {
		t.Fatalf("found %d shell blocks in docs/deploy.md's walk-through, want at least 10", len(blocks))
	}
	home := t.TempDir()
	script := "set -euo pipefail\n" + strings.Join(blocks, "\n")
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = home
	var env []string
	for _, kv := range framework.WithoutKeybrokerVars(framework.ProcessEnv()) {
		if !strings.HasPrefix(kv, "SOFTHSM2_CONF=") && !strings.HasPrefix(kv, "KB_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env,
		"PATH="+filepath.Dir(framework.Binary())+string(os.PathListSeparator)+os.Getenv("PATH"),
		"KB_HOME="+home, "KB_MODULE="+module, "KB_PORT="+strconv.Itoa(freePortBase(t)))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) })
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(5 * time.Minute):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = errors.Join(errors.New("the walk-through did not finish in 5 minutes"), <-done)
	}
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{"central.log", "edge-eu.log", "edge-us.log"} {
			data, _ := os.ReadFile(filepath.Join(home, f))
			fmt.Fprintf(&b, "--- %s\n%s", f, tail(string(data), 4000))
		}
		return b.String()
	}
	if err != nil {
		t.Fatalf("docs/deploy.md's walk-through failed: %v\n%s\n%s", err, out.String(), logs())
	}
	got := out.String()
	for _, want := range []string{
		"created the CA of trust domain kb.example in ca\n",
		"key          the root of trust: pkcs11:token=kb-ca;object=keybroker-ca?",
		"id       spiffe://kb.example/edge/edge-eu\n",
		"id       spiffe://kb.example/client/billing-api\n",
		"usages   clientAuth\n",
		"id           spiffe://kb.example/edge/edge-eu\n",
		"ok: usable by keybroker as its kind\n",
		"created hmac-256 root key root-prf\n",
		"created aes-256 root key root-aes\n",
		"invoice 2026-0042: 1200 EUR\n",
		"search-api refused: exit 3\n",
		"admin call through an edge refused: exit 3\n",
		"renewed certs/billing-api.crt with a new key",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the walk-through's output lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "invoice 2026-0042: 1200 EUR\n"); n != 2 {
		t.Errorf("the invoice decrypted %d times, want 2 (through the us edge, and after the renewal):\n%s", n, got)
	}
	// nodes, after the edges started, lists both enrolled and connected.
	last := got[strings.LastIndex(got, "NODE "):]
	for _, e := range []string{"edge-eu", "edge-us"} {
		line := ""
		for l := range strings.Lines(last) {
			if strings.HasPrefix(l, e+" ") {
				line = l
			}
		}
		if f := strings.Fields(line); len(f) < 6 || f[4] != "true" || f[5] != "true" {
			t.Errorf("nodes lists %s as %q, want enrolled and connected:\n%s", e, line, last)
		}
	}
	// Nothing in the CA directory but the certificate and ca.yaml: the key
	// is in the token.
	if _, err := os.Stat(filepath.Join(home, "ca", "ca.key")); err == nil {
		t.Error("the walk-through left a CA key file; the key belongs in the token")
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// TestDeployPolicy: the production policy of docs/deploy.md loads (the
// schema's strict validation) and decides as the page says: a team's
// client uses its team's keys only, an edge relays no admin call, admins
// administer.
func TestDeployPolicy(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "deploy.md"))
	must(t, "deploy.md", err)
	_, rest, ok := strings.Cut(string(data), "cat > policy/keybroker.cedar <<'EOF'\n")
	text, _, ok2 := strings.Cut(rest, "\nEOF\n")
	if !ok || !ok2 {
		t.Fatal("docs/deploy.md writes no policy/keybroker.cedar")
	}
	set, err := policy.Parse(map[string][]byte{"keybroker.cedar": []byte(text)})
	if err != nil {
		t.Fatalf("the policy of docs/deploy.md does not load: %v", err)
	}
	billingKey := policy.Key{Name: "invoices", Type: "aes-256-gcm", Mode: "derive", Labels: map[string]string{"team": "billing"}}
	for _, tc := range []struct {
		name string
		p    policy.Principal
		a    policy.Action
		k    policy.Key
		want bool
	}{
		{"billing encrypts its key", policy.Principal{Kind: policy.KindClient, Name: "billing-api", TrustDomain: "kb.example"}, policy.Encrypt, billingKey, true},
		{"search decrypts billing's key", policy.Principal{Kind: policy.KindClient, Name: "search-api", TrustDomain: "kb.example"}, policy.Decrypt, billingKey, false},
		{"billing creates a key", policy.Principal{Kind: policy.KindClient, Name: "billing-api", TrustDomain: "kb.example"}, policy.CreateKey, billingKey, false},
		{"admin creates a key", policy.Principal{Kind: policy.KindAdmin, Name: "ops", TrustDomain: "kb.example"}, policy.CreateKey, billingKey, true},
		{"edge holds material", policy.Principal{Kind: policy.KindEdge, Name: "edge-eu", TrustDomain: "kb.example", Region: "eu"}, policy.HoldMaterial, billingKey, true},
		{"edge holds central-only material", policy.Principal{Kind: policy.KindEdge, Name: "edge-eu", TrustDomain: "kb.example", Region: "eu"}, policy.HoldMaterial,
			policy.Key{Name: "k", Type: "aes-256-gcm", Mode: "derive", Labels: map[string]string{"central-only": "yes"}}, false},
	} {
		if d := set.AuthorizeKey(tc.p, tc.a, tc.k); d.Allowed != tc.want || len(d.Errors) > 0 {
			t.Errorf("%s: allowed = %v, want %v (%+v)", tc.name, d.Allowed, tc.want, d)
		}
	}
	edge := policy.Principal{Kind: policy.KindEdge, Name: "edge-eu", TrustDomain: "kb.example", Region: "eu"}
	if d := set.AuthorizeForward(edge, &billingKey, "Encrypt", false); !d.Allowed {
		t.Errorf("an edge may not relay a client's Encrypt: %+v", d)
	}
	if d := set.AuthorizeForward(edge, &billingKey, "CreateKey", true); d.Allowed {
		t.Errorf("an edge may relay an admin's CreateKey: %+v", d)
	}
}
