// Package kubernetes tests `keybroker kms-plugin` with the Kubernetes
// apiserver's own envelope code: k8s.io/apiserver's
// encryptionconfig.LoadEncryptionConfig reads an EncryptionConfiguration
// naming the plugin's socket and returns the transformers the apiserver
// stores secrets through — its Status probe, seed generation, KDF and
// key_id bookkeeping, unchanged. The plugin and the keybroker cluster
// behind it are real processes (tests/framework): a central node and two
// edges over mutual TLS with their state on disk.
//
// It is a module of its own so that k8s.io/apiserver and its dependencies
// never enter keybroker's go.mod; `make test-kubernetes` (part of `make
// test`) runs it.
package kubernetes

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	kmsv2 "k8s.io/kms/apis/v2"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/tests/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }

const (
	keyName  = "k8s-secrets"
	provider = "keybroker"
	// prefix is what the apiserver writes before a KMS v2 envelope.
	prefix = "k8s:enc:kms:v2:" + provider + ":"
	// probeWait bounds waiting for the apiserver's probe to see a change:
	// it re-asks Status 20 s after a good answer (3 s after a bad one).
	probeWait = 90 * time.Second
)

var secrets = schema.GroupResource{Resource: "secrets"}

// plugin is a `keybroker kms-plugin` process.
type plugin struct {
	name, sock, cfg string
	proc            *framework.Proc
}

// startPlugin writes a kms-plugin configuration and starts the process,
// talking to addrs in order as the App principal.
func startPlugin(t *testing.T, c *framework.Processes, name string, addrs ...string) *plugin {
	t.Helper()
	files := c.TLSFiles(t, framework.App)
	dir, err := os.MkdirTemp("", "kmsit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &plugin{name: name, sock: filepath.Join(dir, "kms.sock"), cfg: filepath.Join(dir, name+".yaml")}
	y := fmt.Sprintf(`listen: %s
key: %s
cluster: integration
addrs: [%s]
ca: %s
cert: %s
tls_key: %s
metrics: 127.0.0.1:0
log: {level: info, format: json}
`, p.sock, keyName, strings.Join(addrs, ", "), files.CA, files.Cert, files.Key)
	if err := os.WriteFile(p.cfg, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	p.start(t)
	return p
}

func (p *plugin) start(t *testing.T) {
	t.Helper()
	p.proc = framework.StartNode(t, "kms-plugin", p.cfg)
}

// status asks the plugin's Status over its socket, as the apiserver does.
func (p *plugin) status(t *testing.T) *kmsv2.StatusResponse {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+p.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	st, err := kmsv2.NewKeyManagementServiceClient(cc).Status(ctx, &kmsv2.StatusRequest{})
	if err != nil {
		t.Fatalf("%s: Status: %v", p.name, err)
	}
	return st
}

// metric sums the plugin's samples of name whose labels contain match.
func (p *plugin) metric(t *testing.T, name, match string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.proc.OpsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || !strings.Contains(line, match) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// apiserver is the apiserver's encryption of secrets, loaded from an
// EncryptionConfiguration naming a plugin's socket: what a (re)started
// apiserver builds.
type apiserver struct {
	tr     value.Transformer
	health func() error
}

func loadAPIServer(t *testing.T, p *plugin, id string) *apiserver {
	t.Helper()
	file := filepath.Join(t.TempDir(), "encryption.yaml")
	y := fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v2
          name: %s
          endpoint: unix://%s
          timeout: 3s
      - identity: {}
`, provider, p.sock)
	if err := os.WriteFile(file, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	// The probe's goroutines live as long as this context.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ec, err := encryptionconfig.LoadEncryptionConfig(ctx, file, false, id)
	if err != nil {
		t.Fatalf("LoadEncryptionConfig: %v", err)
	}
	tr := ec.Transformers[secrets]
	if tr == nil {
		t.Fatalf("no transformer for secrets in %v", ec.Transformers)
	}
	return &apiserver{tr: tr, health: func() error {
		req := httptest.NewRequest(http.MethodGet, "/healthz/kms-providers", nil)
		var errs []error
		for _, h := range ec.HealthChecks {
			if err := h.Check(req); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%v", errs)
		}
		return nil
	}}
}

func path(i int) value.DefaultContext {
	return value.DefaultContext("/registry/secrets/default/secret-" + strconv.Itoa(i))
}

func secret(i int) []byte {
	return []byte(fmt.Sprintf(`{"kind":"Secret","data":{"password":"p-%d"}}`, i))
}

// write stores secret i and returns what etcd would hold.
func (a *apiserver) write(t *testing.T, i int) []byte {
	t.Helper()
	out, err := a.tr.TransformToStorage(t.Context(), secret(i), path(i))
	if err != nil {
		t.Fatalf("TransformToStorage(secret %d): %v", i, err)
	}
	if !bytes.HasPrefix(out, []byte(prefix)) {
		t.Fatalf("stored secret %d starts %q, want the KMS v2 prefix %q", i, out[:min(len(out), 32)], prefix)
	}
	return out
}

// read reads back what write stored and reports whether the apiserver
// would rewrite it (stale: stored under another key_id than its current).
func (a *apiserver) read(t *testing.T, i int, stored []byte) bool {
	t.Helper()
	got, stale, err := a.tr.TransformFromStorage(t.Context(), stored, path(i))
	if err != nil {
		t.Fatalf("TransformFromStorage(secret %d): %v", i, err)
	}
	if !bytes.Equal(got, secret(i)) {
		t.Fatalf("secret %d read back as %q, want %q", i, got, secret(i))
	}
	return stale
}

// keyIDOf is the key_id the apiserver stored with an object.
func keyIDOf(t *testing.T, stored []byte) string {
	t.Helper()
	var o kmstypes.EncryptedObject
	if err := proto.Unmarshal(bytes.TrimPrefix(stored, []byte(prefix)), &o); err != nil {
		t.Fatalf("stored object: %v", err)
	}
	return o.KeyID
}

func TestKMSv2(t *testing.T) {
	c := framework.StartProcesses(t, framework.Options{})
	// Processes started, stopped and dialled again in a step outlive it:
	// they belong to the whole test.
	top := t
	// The framework's policy, and edges may hold the material of the
	// clients' keys: an edge then serves the plugin on its own.
	c.SetPolicy(t, framework.Policy+`
@id("edges-hold-material")
permit (principal is Edge, action == Action::"HoldMaterial", resource is Key)
when { resource.hasTag("owner") };
`)
	admin, err := c.AdminClient(t).Admin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: keyName, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"owner": c.TrustDomain()}}); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	c.WaitSynced(t)

	// Control-plane node 1 talks to edge-eu, then central; node 2 to
	// edge-us, then central.
	p1 := startPlugin(t, c, "node-1", c.Addr("edge-eu"), c.Addr(framework.CentralNode))
	p2 := startPlugin(t, c, "node-2", c.Addr("edge-us"), c.Addr(framework.CentralNode))
	api1 := loadAPIServer(t, p1, "apiserver-1")

	stored := map[int][]byte{}
	keyID1 := p1.status(t).KeyId
	t.Run("StoreAndRead", func(t *testing.T) {
		for i := range 20 {
			stored[i] = api1.write(t, i)
			if got := keyIDOf(t, stored[i]); got != keyID1 {
				t.Errorf("secret %d stored under key_id %q, want Status's %q", i, got, keyID1)
			}
		}
		for i := range 20 {
			if api1.read(t, i, stored[i]) {
				t.Errorf("secret %d read as stale right after it was written", i)
			}
		}
		if err := api1.health(); err != nil {
			t.Errorf("kms-providers health: %v", err)
		}
	})

	t.Run("SecondNodeSameKeyID", func(t *testing.T) {
		if got := p2.status(t).KeyId; got != keyID1 {
			t.Errorf("node-2's key_id = %q, node-1's %q", got, keyID1)
		}
		api2 := loadAPIServer(t, p2, "apiserver-2")
		for i := range 20 {
			if api2.read(t, i, stored[i]) {
				t.Errorf("node-2 reads node-1's secret %d as stale: the key_ids differ", i)
			}
		}
		stored[100] = api2.write(t, 100)
		if api1.read(t, 100, stored[100]) {
			t.Error("node-1 reads node-2's secret as stale")
		}
	})

	var keyID2 string
	t.Run("Rotate", func(t *testing.T) {
		if _, err := admin.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: keyName}); err != nil {
			t.Fatalf("RotateKey: %v", err)
		}
		c.WaitSynced(t)
		keyID2 = p1.status(t).KeyId
		if keyID2 == keyID1 {
			t.Fatalf("key_id %q did not change with the rotation", keyID2)
		}
		if got := p2.status(t).KeyId; got != keyID2 {
			t.Errorf("after rotation node-2's key_id = %q, node-1's %q", got, keyID2)
		}
		// The running apiserver adopts the new key_id at its next probe:
		// no restart, no second plugin.
		framework.PollFor(t, "the apiserver writing under the new key_id", probeWait, func() (bool, string) {
			_ = api1.health()
			got := keyIDOf(t, api1.write(t, 200))
			return got == keyID2, "stored under " + got
		})
		stored[200] = api1.write(t, 200)
		if api1.read(t, 200, stored[200]) {
			t.Error("a secret written under the new key_id reads as stale")
		}
		for i := range 20 {
			if !api1.read(t, i, stored[i]) {
				t.Errorf("secret %d, stored before the rotation, is not marked stale for rewriting", i)
			}
		}
	})

	t.Run("RestartPlugin", func(t *testing.T) {
		// SIGKILL leaves the socket file behind: the new process removes it.
		p1.proc.Kill()
		if _, err := os.Lstat(p1.sock); err != nil {
			t.Fatalf("socket after SIGKILL: %v, want it left behind", err)
		}
		p1.start(top)
		if got := p1.status(t).KeyId; got != keyID2 {
			t.Errorf("restarted plugin's key_id = %q, want %q", got, keyID2)
		}
		// A restarted apiserver (fresh transformers, empty seed cache)
		// reads everything, old and new.
		fresh := loadAPIServer(t, p1, "apiserver-1b")
		for _, i := range []int{0, 19, 100, 200} {
			fresh.read(t, i, stored[i])
		}
		stored[201] = fresh.write(t, 201)
		api1.read(t, 201, stored[201])
	})

	t.Run("CentralDown", func(t *testing.T) {
		c.Stop(top, framework.CentralNode)
		defer c.Restart(top, framework.CentralNode)
		if st := p1.status(t); st.Healthz != "ok" || st.KeyId != keyID2 {
			t.Errorf("Status with the central tier down = %+v, want ok and %q", st, keyID2)
		}
		// A restarted apiserver during the outage: its probe, a new seed
		// sealed at the edge, and every read.
		fresh := loadAPIServer(t, p1, "apiserver-1c")
		for _, i := range []int{0, 19, 100, 200, 201} {
			fresh.read(t, i, stored[i])
		}
		stored[300] = fresh.write(t, 300)
		if got := keyIDOf(t, stored[300]); got != keyID2 {
			t.Errorf("written during the outage under %q, want %q", got, keyID2)
		}
		api1.read(t, 300, stored[300])
	})

	t.Run("Disable", func(t *testing.T) {
		if _, err := admin.DisableKey(t.Context(), &kbv1.KeyRequest{KeyId: keyName}); err != nil {
			t.Fatalf("DisableKey: %v", err)
		}
		// The edge learns of it through its replica.
		framework.PollFor(t, "the plugin reporting the key disabled", probeWait, func() (bool, string) {
			st := p1.status(t)
			return strings.Contains(st.Healthz, "disabled"), st.Healthz
		})
		framework.PollFor(t, "the apiserver's kms-providers check failing", probeWait, func() (bool, string) {
			err := api1.health()
			return err != nil && strings.Contains(err.Error(), "disabled"), fmt.Sprint(err)
		})
		// An apiserver that starts now cannot get a seed sealed: writes
		// are refused.
		fresh := loadAPIServer(t, p1, "apiserver-1d")
		if _, err := fresh.tr.TransformToStorage(t.Context(), secret(400), path(400)); err == nil {
			t.Error("a write succeeded with the key disabled")
		}
		if _, err := admin.EnableKey(t.Context(), &kbv1.KeyRequest{KeyId: keyName}); err != nil {
			t.Fatalf("EnableKey: %v", err)
		}
		framework.PollFor(t, "the apiserver's kms-providers check passing again", probeWait, func() (bool, string) {
			err := api1.health()
			return err == nil, fmt.Sprint(err)
		})
	})

	t.Run("Start10000", func(t *testing.T) {
		// 10,000 secrets written by two apiservers' lifetimes (before and
		// after a rotation), then read by an apiserver that starts cold:
		// the time and the calls it costs, logged, not asserted.
		const n = 10000
		writerA := loadAPIServer(t, p1, "apiserver-w1")
		many := make([][]byte, n)
		for i := range n / 2 {
			many[i] = writerA.write(t, 1000+i)
		}
		before := p1.status(t).KeyId
		if _, err := admin.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: keyName}); err != nil {
			t.Fatalf("RotateKey: %v", err)
		}
		framework.PollFor(t, "the plugin's key_id following the rotation", probeWait, func() (bool, string) {
			st := p1.status(t)
			return st.KeyId != before, st.KeyId
		})
		writerB := loadAPIServer(t, p1, "apiserver-w2")
		for i := n / 2; i < n; i++ {
			many[i] = writerB.write(t, 1000+i)
		}
		decrypts := p1.metric(t, "keybroker_kmsplugin_requests_total", `op="decrypt"`)
		backend := c.Metric(t, framework.CentralNode, "keybroker_backend_calls_total", "")
		start := time.Now()
		cold := loadAPIServer(t, p1, "apiserver-cold")
		loaded := time.Since(start)
		for i := range n {
			cold.read(t, 1000+i, many[i])
		}
		took := time.Since(start)
		calls := p1.metric(t, "keybroker_kmsplugin_requests_total", `op="decrypt"`) - decrypts
		backendCalls := c.Metric(t, framework.CentralNode, "keybroker_backend_calls_total", "") - backend
		t.Logf("cold apiserver reading %d secrets (2 seeds): %v in all (%v to load the configuration and probe); %v plugin Decrypt calls; %v root-of-trust calls at the central node (%v before, since it started)",
			n, took.Round(time.Millisecond), loaded.Round(time.Millisecond), calls, backendCalls, backend)
		if calls < 1 {
			t.Errorf("%v Decrypt calls reached the plugin, want at least one per seed", calls)
		}
	})
}
