package kmsplugin_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsv2 "k8s.io/kms/apis/v2"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/keybrokertest"
	"github.com/keybroker/keybroker/kmsplugin"
)

// waitFor bounds every poll: far above what a loaded machine needs.
const waitFor = 60 * time.Second

// plugin is a Service served on a unix socket, and a real gRPC client of
// it, as the apiserver dials it.
type plugin struct {
	svc  *kmsplugin.Service
	kms  kmsv2.KeyManagementServiceClient
	sock string
}

// startPlugin serves a Service for key through kms on a fresh socket
// until the test ends.
func startPlugin(t testing.TB, kms kmsplugin.KMS, cfg kmsplugin.Config) *plugin {
	t.Helper()
	svc, err := kmsplugin.New(kms, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// A short directory: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "kmsp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "kms.sock")
	ln, err := kmsplugin.Listen(sock, kmsplugin.SocketOptions{})
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &plugin{svc: svc, kms: kmsv2.NewKeyManagementServiceClient(cc), sock: sock}
}

func status2(t testing.TB, p *plugin) *kmsv2.StatusResponse {
	t.Helper()
	st, err := p.kms.Status(t.Context(), &kmsv2.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return st
}

// waitStatus polls Status until ok says it is what the test waits for.
func waitStatus(t testing.TB, p *plugin, what string, ok func(*kmsv2.StatusResponse) bool) *kmsv2.StatusResponse {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		st := status2(t, p)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("Status after %s: %+v; waited for %s", waitFor, st, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func seed(t testing.TB) []byte {
	b := make([]byte, 32)
	rand.Read(b)
	return b
}

func uid() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "uid-" + strings.ToLower(strings.TrimRight(string(bytesHex(b)), "="))
}

func bytesHex(b []byte) []byte {
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, hex[c>>4], hex[c&15])
	}
	return out
}

func encrypt(t testing.TB, p *plugin, pt []byte) *kmsv2.EncryptResponse {
	t.Helper()
	r, err := p.kms.Encrypt(t.Context(), &kmsv2.EncryptRequest{Plaintext: pt, Uid: uid()})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return r
}

func decrypt(t testing.TB, p *plugin, r *kmsv2.EncryptResponse) []byte {
	t.Helper()
	d, err := p.kms.Decrypt(t.Context(), &kmsv2.DecryptRequest{Ciphertext: r.Ciphertext, KeyId: r.KeyId, Annotations: r.Annotations, Uid: uid()})
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	return d.Plaintext
}

// TestPlugin runs the plugin against an in-process keybroker cluster (a
// central node and two prefetching edges, real gRPC over mutual TLS),
// each subtest on a key of its own.
func TestPlugin(t *testing.T) {
	kb := keybrokertest.Start(t, keybrokertest.WithKeys("k8s-ops", "k8s-rotate", "k8s-disable", "k8s-nodes", "k8s-bad", "k8s-other", "k8s-audit"))
	adminAPI, err := kb.AdminClient(t).Admin()
	if err != nil {
		t.Fatal(err)
	}
	admin := func() kbv1.KeyAdminClient { return adminAPI }
	edgeClient := func(t *testing.T, addrs ...string) *client.Client {
		return kb.Client(t, keybrokertest.At(addrs...))
	}

	t.Run("EveryOp", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		p := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-ops", Registerer: reg})
		st := status2(t, p)
		if st.Version != "v2" || st.Healthz != "ok" || st.KeyId == "" {
			t.Fatalf("Status = %+v, want version v2, healthz ok and a key_id", st)
		}
		pt := seed(t)
		r := encrypt(t, p, pt)
		if r.KeyId != st.KeyId {
			t.Errorf("Encrypt key_id = %q, want Status's %q", r.KeyId, st.KeyId)
		}
		if n := len(r.Ciphertext); n == 0 || n > kmsplugin.MaxCiphertext {
			t.Errorf("ciphertext of %d bytes, want 1 to %d", n, kmsplugin.MaxCiphertext)
		}
		if want := 128 + len("k8s-ops"); len(r.Ciphertext) != want {
			t.Errorf("ciphertext of a 32-byte seed is %d bytes, want %d", len(r.Ciphertext), want)
		}
		if got := string(r.Annotations[kmsplugin.FormatAnnotation]); got != kmsplugin.FormatVersion || len(r.Annotations) != 1 {
			t.Errorf("annotations = %q, want only %s=%s", r.Annotations, kmsplugin.FormatAnnotation, kmsplugin.FormatVersion)
		}
		if got := decrypt(t, p, r); !bytes.Equal(got, pt) {
			t.Errorf("Decrypt = %x, want %x", got, pt)
		}
		if r2 := encrypt(t, p, pt); bytes.Equal(r2.Ciphertext, r.Ciphertext) {
			t.Error("two Encrypts of one seed gave one ciphertext")
		}
		if got := testutil.ToFloat64(mustCounter(t, reg, "encrypt", st.KeyId, "OK")); got != 2 {
			t.Errorf("requests_total{op=encrypt,code=OK} = %v, want 2", got)
		}
		if got := testutil.ToFloat64(mustCounter(t, reg, "decrypt", st.KeyId, "OK")); got != 1 {
			t.Errorf("requests_total{op=decrypt,code=OK} = %v, want 1", got)
		}
		// The latency histogram's exemplars carry the apiserver's uids.
		if _, err := p.kms.Encrypt(t.Context(), &kmsv2.EncryptRequest{Plaintext: pt, Uid: "uid-exemplar-1"}); err != nil {
			t.Fatal(err)
		}
		if !hasExemplar(t, reg, "uid-exemplar-1") {
			t.Error("no exemplar of keybroker_kmsplugin_request_duration_seconds carries uid uid-exemplar-1")
		}
	})

	t.Run("StatusCostsNoBackendCall", func(t *testing.T) {
		p := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-ops"})
		status2(t, p) // the client's connections made, the key read once
		roots := kb.Dev().Central.Service().Roots()
		calls := func() uint64 {
			var n uint64
			for _, c := range roots.Calls() {
				n += c
			}
			return n
		}
		before := calls()
		for range 50 {
			if st := status2(t, p); st.Healthz != "ok" {
				t.Fatalf("Status = %+v", st)
			}
		}
		if after := calls(); after != before {
			t.Errorf("50 Status calls made %d calls to the roots of trust, want none", after-before)
		}
	})

	t.Run("Rotation", func(t *testing.T) {
		p := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-rotate"})
		before := status2(t, p)
		pt1 := seed(t)
		r1 := encrypt(t, p, pt1)
		seen := map[string]bool{before.KeyId: true}
		prev := before.KeyId
		for i := range 2 {
			if _, err := admin().RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: "k8s-rotate"}); err != nil {
				t.Fatalf("RotateKey: %v", err)
			}
			after := waitStatus(t, p, "a new key_id", func(s *kmsv2.StatusResponse) bool { return s.KeyId != prev })
			if after.Healthz != "ok" {
				t.Errorf("Status after rotation %d = %+v, want ok", i+1, after)
			}
			if seen[after.KeyId] {
				t.Errorf("rotation %d: key_id %q repeats an earlier one", i+1, after.KeyId)
			}
			seen[after.KeyId] = true
			prev = after.KeyId
			r := encrypt(t, p, seed(t))
			if r.KeyId != after.KeyId {
				t.Errorf("Encrypt after rotation %d: key_id %q, want Status's %q", i+1, r.KeyId, after.KeyId)
			}
		}
		// Data sealed before both rotations opens, under its own key_id.
		if got := decrypt(t, p, r1); !bytes.Equal(got, pt1) {
			t.Errorf("Decrypt of pre-rotation data = %x, want %x", got, pt1)
		}
		// A restarted plugin (fresh Service, no memory) gives the same
		// key_id and opens the old data.
		p2 := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-rotate"})
		if got, want := status2(t, p2).KeyId, status2(t, p).KeyId; got != want {
			t.Errorf("restarted plugin's key_id = %q, want %q", got, want)
		}
		if got := decrypt(t, p2, r1); !bytes.Equal(got, pt1) {
			t.Errorf("restarted plugin's Decrypt = %x, want %x", got, pt1)
		}
	})

	t.Run("SameKeyIDOnEveryNode", func(t *testing.T) {
		pus := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-nodes"})
		peu := startPlugin(t, edgeClient(t, kb.EdgeAddr("eu")), kmsplugin.Config{Key: "k8s-nodes"})
		pc := startPlugin(t, edgeClient(t, kb.CentralAddr()), kmsplugin.Config{Key: "k8s-nodes"})
		want := status2(t, pus).KeyId
		for name, p := range map[string]*plugin{"edge-eu": peu, "central": pc} {
			if got := status2(t, p).KeyId; got != want {
				t.Errorf("key_id through %s = %q, through edge-us %q", name, got, want)
			}
		}
		pt := seed(t)
		r := encrypt(t, pus, pt)
		if got := decrypt(t, peu, r); !bytes.Equal(got, pt) {
			t.Errorf("edge-eu's plugin opened edge-us's ciphertext as %x, want %x", got, pt)
		}
	})

	t.Run("Disabled", func(t *testing.T) {
		p := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-disable"})
		r := encrypt(t, p, seed(t))
		if _, err := admin().DisableKey(t.Context(), &kbv1.KeyRequest{KeyId: "k8s-disable"}); err != nil {
			t.Fatalf("DisableKey: %v", err)
		}
		st := waitStatus(t, p, "unhealthy", func(s *kmsv2.StatusResponse) bool { return s.Healthz != "ok" })
		if !strings.Contains(st.Healthz, "disabled") {
			t.Errorf("healthz = %q, want it to say the key is disabled", st.Healthz)
		}
		if st.KeyId == "" {
			t.Error("unhealthy Status has no key_id")
		}
		_, err := p.kms.Encrypt(t.Context(), &kmsv2.EncryptRequest{Plaintext: seed(t), Uid: uid()})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "disabled") {
			t.Errorf("Encrypt with a disabled key = %v, want FailedPrecondition saying disabled", err)
		}
		_, err = p.kms.Decrypt(t.Context(), &kmsv2.DecryptRequest{Ciphertext: r.Ciphertext, KeyId: r.KeyId, Annotations: r.Annotations, Uid: uid()})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("Decrypt with a disabled key = %v, want FailedPrecondition", err)
		}
		if _, err := admin().EnableKey(t.Context(), &kbv1.KeyRequest{KeyId: "k8s-disable"}); err != nil {
			t.Fatalf("EnableKey: %v", err)
		}
		waitStatus(t, p, "healthy again", func(s *kmsv2.StatusResponse) bool { return s.Healthz == "ok" })
		decrypt(t, p, r)
	})

	t.Run("BadInput", func(t *testing.T) {
		p := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-bad"})
		good := encrypt(t, p, seed(t))
		// A ciphertext of another key, sealed with the plugin's context.
		other := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-other"})
		otherCT := encrypt(t, other, seed(t))
		// The same key, another cluster's context.
		elsewhere := startPlugin(t, edgeClient(t, kb.EdgeAddr("us")), kmsplugin.Config{Key: "k8s-bad", Cluster: "another"})
		ann := good.Annotations
		// The good ciphertext, its header naming version 99.
		future := bytes.Clone(good.Ciphertext)
		copy(future[2+len("k8s-bad"):], []byte{0, 0, 0, 99})
		tests := []struct {
			name string
			req  *kmsv2.DecryptRequest
			want codes.Code
			say  string
		}{
			{"oversized ciphertext", &kmsv2.DecryptRequest{Ciphertext: make([]byte, 1025), KeyId: good.KeyId, Annotations: ann}, codes.InvalidArgument, "1025 bytes"},
			{"empty ciphertext", &kmsv2.DecryptRequest{KeyId: good.KeyId, Annotations: ann}, codes.InvalidArgument, "ciphertext of 0 bytes"},
			{"garbage ciphertext", &kmsv2.DecryptRequest{Ciphertext: []byte("k8s:enc:garbage"), KeyId: good.KeyId, Annotations: ann}, codes.InvalidArgument, "ciphertext"},
			{"unknown key_id", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: "not-a-key-id", Annotations: ann}, codes.InvalidArgument, "is not the key_id"},
			{"empty key_id", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, Annotations: ann}, codes.InvalidArgument, "key_id of 0 bytes"},
			{"oversized key_id", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: strings.Repeat("k", 1025), Annotations: ann}, codes.InvalidArgument, "key_id of 1025 bytes"},
			{"annotation key not a domain", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId, Annotations: map[string][]byte{"format": []byte("1")}}, codes.InvalidArgument, "fully qualified domain name"},
			{"unknown annotation", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId, Annotations: map[string][]byte{kmsplugin.FormatAnnotation: []byte("1"), "iv.example.com": []byte("x")}}, codes.InvalidArgument, "not one this plugin writes"},
			{"wrong format", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId, Annotations: map[string][]byte{kmsplugin.FormatAnnotation: []byte("2")}}, codes.InvalidArgument, "reads format 1"},
			{"no annotations", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId}, codes.InvalidArgument, "missing"},
			{"annotations too large", &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId, Annotations: map[string][]byte{kmsplugin.FormatAnnotation: []byte("1"), "big.example.com": make([]byte, 33<<10)}}, codes.InvalidArgument, "annotations of"},
			{"unknown version", &kmsv2.DecryptRequest{Ciphertext: future, KeyId: good.KeyId, Annotations: ann}, codes.InvalidArgument, "has no version 99"},
			{"another key's ciphertext", &kmsv2.DecryptRequest{Ciphertext: otherCT.Ciphertext, KeyId: otherCT.KeyId, Annotations: ann}, codes.InvalidArgument, "sealed under key k8s-other"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tt.req.Uid = uid()
				_, err := p.kms.Decrypt(t.Context(), tt.req)
				if status.Code(err) != tt.want || !strings.Contains(status.Convert(err).Message(), tt.say) {
					t.Errorf("Decrypt = %v, want %s saying %q", err, tt.want, tt.say)
				}
			})
		}
		t.Run("another cluster", func(t *testing.T) {
			_, err := elsewhere.kms.Decrypt(t.Context(), &kmsv2.DecryptRequest{Ciphertext: good.Ciphertext, KeyId: good.KeyId, Annotations: ann, Uid: uid()})
			if status.Code(err) == codes.OK {
				t.Error("a plugin of another cluster opened the ciphertext")
			}
		})
		for _, n := range []int{0, kmsplugin.MaxPlaintext + 1} {
			_, err := p.kms.Encrypt(t.Context(), &kmsv2.EncryptRequest{Plaintext: make([]byte, n), Uid: uid()})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "plaintext of") {
				t.Errorf("Encrypt of %d bytes = %v, want InvalidArgument about the plaintext", n, err)
			}
		}
		// Past the socket's message bound the request is not even read.
		_, err := p.kms.Decrypt(t.Context(), &kmsv2.DecryptRequest{Ciphertext: make([]byte, 100<<10), KeyId: good.KeyId})
		if status.Code(err) != codes.ResourceExhausted {
			t.Errorf("Decrypt of a 100 KiB request = %v, want ResourceExhausted", err)
		}
		// The good ciphertext still opens: nothing above changed state.
		decrypt(t, p, good)
	})

	t.Run("UIDInAudit", func(t *testing.T) {
		p := startPlugin(t, edgeClient(t, kb.CentralAddr()), kmsplugin.Config{Key: "k8s-audit"})
		id := "0d4c8f2e-6b3a-4f1e-9a77-5e2b1c3d4e5f"
		if _, err := p.kms.Encrypt(t.Context(), &kmsv2.EncryptRequest{Plaintext: seed(t), Uid: id}); err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
		b, err := os.ReadFile(kb.AuditLog())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte(`"client_request_id":"`+id+`"`)) {
			t.Errorf("no audit line of the central node has client_request_id %s", id)
		}
	})
}

func mustCounter(t testing.TB, reg *prometheus.Registry, op, keyID, code string) prometheus.Collector {
	t.Helper()
	return counterAt{reg: reg, labels: map[string]string{"op": op, "key_id": keyID, "code": code}}
}

// counterAt collects one series of keybroker_kmsplugin_requests_total.
type counterAt struct {
	reg    *prometheus.Registry
	labels map[string]string
}

func (c counterAt) Describe(ch chan<- *prometheus.Desc) {}

func (c counterAt) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := c.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "keybroker_kmsplugin_requests_total" {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if c.labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("x", "x", nil, nil), prometheus.CounterValue, m.GetCounter().GetValue())
		}
	}
}

// flaky is a KMS whose DescribeKey can be made to fail with Unavailable.
type flaky struct {
	kmsplugin.KMS
	mu   sync.Mutex
	down bool
}

func (f *flaky) set(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }

func (f *flaky) DescribeKey(ctx context.Context, key string) (*kbv1.KeyMetadata, error) {
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down {
		return nil, status.Error(codes.Unavailable, "no node answered")
	}
	return f.KMS.DescribeKey(ctx, key)
}

// TestTransientMiss checks that Status rides out nodes that do not
// answer for up to Grace, then fails; time is an injected clock.
func TestTransientMiss(t *testing.T) {
	kb := keybrokertest.Start(t, keybrokertest.WithKeys("k8s"), keybrokertest.WithEdges())
	f := &flaky{KMS: kb.Client(t)}
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	p := startPlugin(t, f, kmsplugin.Config{Key: "k8s", Grace: 2 * time.Minute, Now: clock})

	good := status2(t, p)
	if good.Healthz != "ok" {
		t.Fatalf("Status = %+v, want ok", good)
	}
	f.set(true)
	advance(time.Minute)
	if st := status2(t, p); st.Healthz != "ok" || st.KeyId != good.KeyId {
		t.Errorf("Status 1 min into an outage = %+v, want ok with key_id %q", st, good.KeyId)
	}
	advance(90 * time.Second)
	st := status2(t, p)
	if st.Healthz == "ok" || !strings.Contains(st.Healthz, "no keybroker node has answered") {
		t.Errorf("Status 2.5 min into an outage = %+v, want unhealthy saying no node answered", st)
	}
	if st.KeyId != good.KeyId {
		t.Errorf("unhealthy Status key_id = %q, want the last known %q", st.KeyId, good.KeyId)
	}
	f.set(false)
	if st := status2(t, p); st.Healthz != "ok" {
		t.Errorf("Status once a node answers = %+v, want ok", st)
	}

	// A plugin that has never had an answer is unhealthy at once.
	f.set(true)
	p2 := startPlugin(t, f, kmsplugin.Config{Key: "k8s", Now: clock})
	if st := status2(t, p2); st.Healthz == "ok" {
		t.Errorf("Status with no answer ever = %+v, want unhealthy", st)
	}
}

// TestKeyChecks refuses keys whose ciphertexts could not fit or that
// cannot encrypt.
func TestKeyChecks(t *testing.T) {
	kb := keybrokertest.Start(t, keybrokertest.WithEdges(),
		keybrokertest.WithKey(&kbv1.CreateKeyRequest{KeyId: "hmac", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}),
		keybrokertest.WithKey(&kbv1.CreateKeyRequest{KeyId: "wrapped", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP}))
	c := kb.Client(t)
	for _, tt := range []struct {
		key, say string
	}{{"hmac", "not AES-256-GCM"}, {"wrapped", ""}, {"absent", "does not exist"}} {
		p := startPlugin(t, c, kmsplugin.Config{Key: tt.key})
		st := status2(t, p)
		if tt.say == "" {
			if st.Healthz != "ok" {
				t.Errorf("Status of %s = %+v, want ok", tt.key, st)
			}
			continue
		}
		if !strings.Contains(strings.ToLower(st.Healthz), strings.ToLower(tt.say)) {
			t.Errorf("Status of %s = %+v, want healthz saying %q", tt.key, st, tt.say)
		}
	}
	if _, err := kmsplugin.New(c, kmsplugin.Config{Key: "no spaces allowed"}); err == nil {
		t.Error("New accepted an invalid key id")
	}
}

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "kmsl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "p.sock")

	t.Run("StaleSocketRemoved", func(t *testing.T) {
		// A socket left by a plugin that died: bound, then closed without
		// unlinking.
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetUnlinkOnClose(false)
		l.Close()
		ln, err := kmsplugin.Listen(path, kmsplugin.SocketOptions{})
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("socket mode = %v, want a socket with 0600", fi.Mode())
		}
		// Live now: a second plugin is refused and the socket left alone.
		if _, err := kmsplugin.Listen(path, kmsplugin.SocketOptions{}); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Errorf("Listen over a live socket = %v, want an error saying it is in use", err)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Errorf("the live socket no longer accepts: %v", err)
		} else {
			c.Close()
		}
		ln.Close()
		if _, err := os.Lstat(path); !os.IsNotExist(err) {
			t.Errorf("socket after Close: %v, want it removed", err)
		}
	})

	t.Run("NotASocket", func(t *testing.T) {
		if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(path)
		if _, err := kmsplugin.Listen(path, kmsplugin.SocketOptions{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("Listen over a regular file = %v, want an error saying it is not a socket", err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
			t.Errorf("the file after Listen = %q, %v; want it untouched", b, err)
		}
	})

	t.Run("Group", func(t *testing.T) {
		ln, err := kmsplugin.Listen(path, kmsplugin.SocketOptions{Group: "0"})
		if err != nil {
			t.Fatalf("Listen with group 0: %v", err)
		}
		defer ln.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o660 {
			t.Errorf("socket mode with a group = %v, want 0660", fi.Mode().Perm())
		}
		if _, err := kmsplugin.Listen(filepath.Join(dir, "q.sock"), kmsplugin.SocketOptions{Group: "no-such-group-here"}); err == nil {
			t.Error("Listen with an unknown group succeeded")
		}
	})

	t.Run("RelativePath", func(t *testing.T) {
		if _, err := kmsplugin.Listen("kms.sock", kmsplugin.SocketOptions{}); err == nil {
			t.Error("Listen on a relative path succeeded")
		}
	})
}

// hasExemplar reports whether a bucket of the latency histogram has an
// exemplar labelled uid.
func hasExemplar(t testing.TB, reg *prometheus.Registry, uid string) bool {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keybroker_kmsplugin_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, b := range m.GetHistogram().GetBucket() {
				for _, l := range b.GetExemplar().GetLabel() {
					if l.GetName() == "uid" && l.GetValue() == uid {
						return true
					}
				}
			}
		}
	}
	return false
}
