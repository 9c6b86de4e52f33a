package keybrokertest_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/softhsm"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
	"github.com/keybroker/keybroker/keybrokertest"
)

// roundTrip encrypts at the edge of region and decrypts at the central
// node, each client pinned to its node, and returns the key's metadata.
func roundTrip(t *testing.T, kb *keybrokertest.Cluster, region string) *kbv1.KeyMetadata {
	t.Helper()
	edge := kb.EdgeAddr(region)
	if edge == "" {
		t.Fatalf("no edge in %s among %v", region, kb.EdgeAddrs())
	}
	ectx := map[string]string{"order": "7"}
	ct, err := kb.Client(t, keybrokertest.At(edge)).Encrypt(t.Context(), "payments", []byte("card 4111"), ectx)
	if err != nil {
		t.Fatalf("Encrypt at %s: %v", edge, err)
	}
	central := kb.Client(t, keybrokertest.At(kb.CentralAddr()))
	pt, err := central.Decrypt(t.Context(), ct.Ciphertext, ectx)
	if err != nil || string(pt.Plaintext) != "card 4111" {
		t.Fatalf("Decrypt at central = %q, %v, want card 4111", text(pt), err)
	}
	if _, err := central.Decrypt(t.Context(), ct.Ciphertext, map[string]string{"order": "8"}); err == nil {
		t.Fatal("Decrypt under another encryption context succeeded")
	}
	// Clients are not told which root key a key is on; admins are.
	k, err := kb.AdminClient(t).DescribeKey(t.Context(), "payments")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSoftKMSCluster: the default cluster (softkms, edge-us and edge-eu)
// with a key made up front; a ciphertext sealed at an edge opens at the
// central node, the SDK routing by LookupKey from the first edge works,
// and the policy in force is the default one.
func TestSoftKMSCluster(t *testing.T) {
	t.Parallel()
	kb := keybrokertest.Start(t, keybrokertest.WithKeys("payments"))
	if got := len(kb.EdgeAddrs()); got != 2 {
		t.Fatalf("%d edges, want 2", got)
	}
	k := roundTrip(t, kb, "us")
	if !strings.HasPrefix(k.GetRootKey(), "softkms:") {
		t.Errorf("root key %q, want a softkms one", k.GetRootKey())
	}
	if !strings.HasPrefix(kb.Backend(), "softkms:") {
		t.Errorf("Backend() = %q, want softkms", kb.Backend())
	}
	if kb.Policy() != devcluster.DefaultPolicy {
		t.Errorf("Policy() = %q, want devcluster.DefaultPolicy", kb.Policy())
	}
	// Routed: the default client starts at edge-us and asks LookupKey.
	app := kb.Client(t, keybrokertest.InRegion("eu"))
	ct, err := app.Encrypt(t.Context(), "payments", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := app.Decrypt(t.Context(), ct.Ciphertext, nil); err != nil || string(pt.Plaintext) != "x" {
		t.Errorf("routed Decrypt = %q, %v", text(pt), err)
	}
}

// TestSoftHSMCluster: the same on a SoftHSM2 token made in the test's
// directory; the key's root is on the token. SoftHSM2 is installed here,
// so this runs (make test sets KEYBROKER_REQUIRE_SOFTHSM=1 to make sure).
func TestSoftHSMCluster(t *testing.T) {
	kb := keybrokertest.Start(t, keybrokertest.WithSoftHSM(), keybrokertest.WithRegions("eu"), keybrokertest.WithKeys("payments"))
	k := roundTrip(t, kb, "eu")
	if want := "pkcs11:token=" + keybrokertest.TokenLabel + ";object=root-prf"; k.GetRootKey() != want {
		t.Errorf("root key %q, want %q", k.GetRootKey(), want)
	}
	if conf := os.Getenv(softhsm.ConfEnv); !strings.HasPrefix(conf, filepath.Dir(kb.Dev().Dir())) {
		t.Errorf("%s = %q, not the cluster's token", softhsm.ConfEnv, conf)
	}
}

// TestSoftHSMClustersOneAfterAnother: a second SoftHSM2 cluster in the
// same process, on its own token, works after the first has stopped
// (the module is initialised afresh on the new SOFTHSM2_CONF).
func TestSoftHSMClustersOneAfterAnother(t *testing.T) {
	for i := range 2 {
		// Unnamed: the subtests' directories hold '#' (#00, #01), which
		// softhsm2.conf cannot name; the token goes elsewhere.
		t.Run("", func(t *testing.T) {
			kb := keybrokertest.Start(t, keybrokertest.WithSoftHSM(), keybrokertest.WithEdges(), keybrokertest.WithKeys("payments"))
			ct, err := kb.Client(t).Encrypt(t.Context(), "payments", []byte("hi"), nil)
			if err != nil {
				t.Fatalf("cluster %d: Encrypt: %v", i, err)
			}
			if pt, err := kb.Client(t).Decrypt(t.Context(), ct.Ciphertext, nil); err != nil || string(pt.Plaintext) != "hi" {
				t.Fatalf("cluster %d: Decrypt = %q, %v", i, text(pt), err)
			}
		})
	}
}

// TestOneSoftHSMClusterAtATime: a second SoftHSM2 cluster while one runs
// is refused (its root keys would land on the first one's token, which
// the process-wide module already reads); once the first is closed, it
// starts and the environment New set is restored.
func TestOneSoftHSMClusterAtATime(t *testing.T) {
	softhsmtest.Require(t)
	t.Setenv(softhsm.ConfEnv, "/before")
	first, err := keybrokertest.New(context.Background(), keybrokertest.WithSoftHSM(), keybrokertest.WithEdges())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keybrokertest.New(context.Background(), keybrokertest.WithSoftHSM(), keybrokertest.WithEdges()); err == nil || !strings.Contains(err.Error(), "another SoftHSM2 cluster is running") {
		t.Errorf("a second SoftHSM2 cluster while one runs: %v, want refused", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if got := os.Getenv(softhsm.ConfEnv); got != "/before" {
		t.Errorf("after Close %s = %q, want it restored to /before", softhsm.ConfEnv, got)
	}
	second, err := keybrokertest.New(context.Background(), keybrokertest.WithSoftHSM(), keybrokertest.WithEdges(), keybrokertest.WithKeys("k"))
	if err != nil {
		t.Fatalf("a SoftHSM2 cluster after the first closed: %v", err)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestMissingSoftHSM: without SoftHSM2, Start skips the test saying what
// to install, KEYBROKER_REQUIRE_SOFTHSM=1 makes that a failure (not
// exercised: it would fail this test), and New returns ErrNoSoftHSM with
// the same advice.
func TestMissingSoftHSM(t *testing.T) {
	t.Setenv(softhsm.ModuleEnv, filepath.Join(t.TempDir(), "libsofthsm2.so"))
	t.Setenv(keybrokertest.RequireSoftHSMEnv, "")
	ran := false
	t.Run("Start", func(t *testing.T) {
		keybrokertest.Start(t, keybrokertest.WithSoftHSM())
		ran = true
	})
	if ran {
		t.Error("Start WithSoftHSM went on without SoftHSM2; want the test skipped")
	}
	_, err := keybrokertest.New(t.Context(), keybrokertest.WithSoftHSM())
	if !errors.Is(err, keybrokertest.ErrNoSoftHSM) || !strings.Contains(err.Error(), "apt-get install softhsm2") {
		t.Errorf("New WithSoftHSM without SoftHSM2: %v, want ErrNoSoftHSM naming softhsm2", err)
	}
}

// TestClientsAndPolicy: a policy of the test's own is the one enforced.
// Only alice may use the key; mallory, a client of the same cluster, is
// refused; the app client cannot administer; a certificate from another
// cluster's CA is refused at the handshake.
func TestClientsAndPolicy(t *testing.T) {
	t.Parallel()
	const policy = `
@id("admins")
permit (principal is Admin, action, resource);

@id("alice")
permit (principal == Client::"alice", action in [Action::"Encrypt", Action::"Decrypt"], resource == Key::"payments");
`
	kb := keybrokertest.Start(t, keybrokertest.WithPolicy(policy), keybrokertest.WithEdges(), keybrokertest.WithKeys("payments"))
	if kb.Policy() != policy {
		t.Errorf("Policy() = %q, want the test's", kb.Policy())
	}
	ctx := t.Context()
	alice := kb.Client(t, keybrokertest.As("alice"))
	ct, err := alice.Encrypt(ctx, "payments", []byte("hi"), nil)
	if err != nil {
		t.Fatalf("alice Encrypt: %v", err)
	}
	mallory := kb.Client(t, keybrokertest.As("mallory"))
	if _, err := mallory.Decrypt(ctx, ct.Ciphertext, nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("mallory Decrypt: %v, want PermissionDenied", err)
	}
	ka, err := alice.Admin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ka.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "mine", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("alice CreateKey: %v, want PermissionDenied", err)
	}
	admin, err := kb.AdminClient(t).Admin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "theirs", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
		t.Errorf("admin CreateKey: %v", err)
	}

	// Files for a tool: alice's, as the SDK reads them.
	files := kb.TLSFiles(t, identity.Client, "alice")
	fromFiles, err := client.New(ctx, client.Config{Addrs: []string{kb.CentralAddr()}, Direct: true,
		CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key})
	if err != nil {
		t.Fatal(err)
	}
	defer fromFiles.Close()
	if pt, err := fromFiles.Decrypt(ctx, ct.Ciphertext, nil); err != nil || string(pt.Plaintext) != "hi" {
		t.Errorf("Decrypt with alice's files = %q, %v", text(pt), err)
	}

	// Another cluster's alice is a stranger here.
	other := keybrokertest.Start(t, keybrokertest.WithEdges())
	conn, err := grpc.NewClient(kb.CentralAddr(), grpc.WithTransportCredentials(credentials.NewTLS(other.TLSConfig(t, identity.Client, "alice"))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := kbv1.NewKeyBrokerClient(conn).Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ct.Ciphertext}); status.Code(err) != codes.Unavailable {
		t.Errorf("Decrypt with another cluster's certificate: %v, want the handshake refused (Unavailable)", err)
	}
}

// TestStoppedWithTheTest: when the test that started a cluster ends,
// every node has stopped and the directory is gone.
func TestStoppedWithTheTest(t *testing.T) {
	t.Parallel()
	var kb *keybrokertest.Cluster
	t.Run("", func(t *testing.T) {
		kb = keybrokertest.Start(t, keybrokertest.WithRegions("us"))
		kb.Client(t) // closed first
	})
	if kb == nil {
		t.Fatal("the cluster did not start")
	}
	dev := kb.Dev()
	for name, done := range map[string]<-chan error{"central": dev.Central.Done(), "edge-us": dev.Edges[0].Done()} {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s stopped with %v", name, err)
			}
		default:
			t.Errorf("%s still serving after its test ended", name)
		}
	}
	if _, err := os.Stat(dev.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after its test ended (%v)", dev.Dir(), err)
	}
	if err := kb.Close(); err != nil {
		t.Errorf("Close after the test: %v, want nil", err)
	}
}

// TestNewAndClose: without a testing.TB, New starts a cluster in a
// directory of its own and Close removes it.
func TestNewAndClose(t *testing.T) {
	t.Parallel()
	kb, err := keybrokertest.New(context.Background(), keybrokertest.WithEdges(), keybrokertest.WithKeys("k"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := kb.NewClient(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Encrypt(t.Context(), "k", []byte("x"), nil); err != nil {
		t.Error(err)
	}
	c.Close()
	dir := filepath.Dir(kb.Dev().Dir())
	if err := kb.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Close (%v)", dir, err)
	}
}

// text is a Decrypt result's plaintext, "" for none.
func text(pt *client.Plaintext) string {
	if pt == nil {
		return ""
	}
	return string(pt.Plaintext)
}

// TestSetPolicyAndAuditLog: a policy set during the test decides the very
// next call, and the audit log shows each decision with the rule that made
// it; a policy that does not check is refused and the one in force stays.
func TestSetPolicyAndAuditLog(t *testing.T) {
	t.Parallel()
	kb := keybrokertest.Start(t, keybrokertest.WithEdges(), keybrokertest.WithKeys("payments"))
	ctx := t.Context()
	app := kb.Client(t)
	if _, err := app.Encrypt(ctx, "payments", []byte("hi"), nil); err != nil {
		t.Fatalf("Encrypt under the default policy: %v", err)
	}
	stricter := devcluster.DefaultPolicy + `
@id("no-payments")
forbid (principal == Client::"app", action == Action::"Encrypt", resource == Key::"payments");
`
	if err := kb.SetPolicy(stricter); err != nil {
		t.Fatalf("SetPolicy: %v", err)
	}
	if kb.Policy() != stricter {
		t.Errorf("Policy() after SetPolicy is not the new policy")
	}
	if _, err := app.Encrypt(ctx, "payments", []byte("hi"), nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("Encrypt after SetPolicy: %v, want PermissionDenied", err)
	}
	if err := kb.SetPolicy(`permit (principal, action == Action::"Explode", resource);`); err == nil {
		t.Error("SetPolicy of a policy naming an unknown action succeeded")
	}
	if kb.Policy() != stricter {
		t.Errorf("a refused SetPolicy replaced Policy()")
	}
	if _, err := app.Encrypt(ctx, "payments", []byte("hi"), nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("Encrypt after a refused SetPolicy: %v, want PermissionDenied still", err)
	}

	data, err := os.ReadFile(kb.AuditLog())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if r.Operation == "Encrypt" && r.Key == "payments" {
			got = append(got, string(r.Decision)+"/"+r.PolicyID)
		}
	}
	if want := []string{"allow/clients", "deny/no-payments", "deny/no-payments"}; !slices.Equal(got, want) {
		t.Errorf("audited Encrypt decisions = %v, want %v", got, want)
	}
}
