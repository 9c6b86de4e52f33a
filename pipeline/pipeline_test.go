package pipeline_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"go/build"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

const td = "kb.test"

func client(name, rid string) pipeline.Caller {
	return pipeline.Caller{Who: identity.Identity{TrustDomain: td, Kind: identity.Client, Name: name}, RequestID: rid}
}

const testPolicies = `
@id("app-payments")
permit (principal == Client::"app", action in [Action::"Encrypt", Action::"Decrypt", Action::"ReEncrypt",
	Action::"GenerateDataKey", Action::"DecryptDataKey", Action::"GenerateMac", Action::"VerifyMac", Action::"DescribeKey"], resource)
when { resource.hasTag("team") && resource.getTag("team") == "payments" };

@id("ops-encrypt")
permit (principal == Client::"ops", action == Action::"Encrypt", resource);
`

type staticPolicies struct{ s *policy.Set }

func (p staticPolicies) Current() *policy.Set { return p.s }

type swappablePolicies struct{ p atomic.Pointer[policy.Set] }

func (s *swappablePolicies) Current() *policy.Set { return s.p.Load() }

func parsePolicies(t *testing.T, text string) *policy.Set {
	t.Helper()
	s, err := policy.Parse(map[string][]byte{"p.cedar": []byte(text)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openAudit(t *testing.T) (*audit.Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	log, err := audit.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = log.Close() })
	return log, path
}

// auditLines reads the audit log's records.
func auditLines(t *testing.T, path string) []audit.Record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []audit.Record
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// centralPerformer is the central tier's performer without gRPC: a real
// broker.Service and the two methods only a server knows.
type centralPerformer struct{ *broker.Service }

func (centralPerformer) LookupKey(context.Context, *managed.Key, policy.Action, map[string]string) ([]placement.Candidate, error) {
	return nil, nil
}

func (p centralPerformer) Served(k *managed.Key, _ policy.Action) string {
	if pv := k.PrimaryVersion(); pv != nil {
		if _, name, _, err := p.Roots().Resolve(pv.RootKey); err == nil {
			return name
		}
	}
	return ""
}

// newService is a broker.Service on softkms holding the keys "payments"
// (aes-256-gcm, derive), "tags" (hmac-sha256, derive), both labelled team
// payments, and "secret" (aes-256-gcm, labelled team security).
func newService(t *testing.T) *broker.Service {
	t.Helper()
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("33", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	ks := filepath.Join(dir, "softkms.json")
	sb, err := softkms.New(t.Context(), softkms.Config{Path: ks, KEKFile: kek})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.CreateKey(t.Context(), "prf", backends.HMAC256); err != nil {
		t.Fatal(err)
	}
	roots, err := broker.NewRoots(map[string]backends.Backend{"soft": sb}, map[string]string{"soft": "softkms:path=" + ks + ";kek-source=" + kek})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { roots.Close() })
	if err := roots.Declare([]broker.RootKey{{URI: "softkms:prf", Role: managed.RoleDerive}}); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "registry.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := broker.NewService(broker.ServiceConfig{Registry: broker.NewRegistry(st, nil), Roots: roots,
		Materials: broker.NewMaterials(roots, 100, time.Hour, nil), DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []broker.CreateParams{
		{ID: "payments", Type: managed.AES256GCM, Mode: managed.ModeDerive, Labels: map[string]string{"team": "payments"}},
		{ID: "tags", Type: managed.HMACSHA256, Mode: managed.ModeDerive, Labels: map[string]string{"team": "payments"}},
		{ID: "secret", Type: managed.AES256GCM, Mode: managed.ModeDerive, Labels: map[string]string{"team": "security"}},
	} {
		if _, err := svc.CreateKey(t.Context(), k); err != nil {
			t.Fatalf("CreateKey(%s): %v", k.ID, err)
		}
	}
	return svc
}

func newPipeline(t *testing.T, perf pipeline.Performer, pols pipeline.Policies) (*pipeline.Pipeline, string) {
	t.Helper()
	log, path := openAudit(t)
	p, err := pipeline.New(pipeline.Config{Performer: perf, Policy: pols, Audit: log, NodeID: "central-1"})
	if err != nil {
		t.Fatal(err)
	}
	return p, path
}

// TestPipelineWithoutAFrontEnd drives the pipeline as a front-end other
// than gRPC would: its own Caller, a real broker.Service on softkms. The
// decision, the audit line and the result are the pipeline's alone.
func TestPipelineWithoutAFrontEnd(t *testing.T) {
	svc := newService(t)
	p, path := newPipeline(t, centralPerformer{svc}, staticPolicies{parsePolicies(t, testPolicies)})
	ctx := t.Context()

	app := client("app", "rid-enc")
	app.ClientRequestID = "my-correlation"
	enc, err := p.Encrypt(ctx, app, pipeline.EncryptInput{KeyID: "payments", Plaintext: []byte("card 4111"), Context: map[string]string{"order": "7"}})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	if enc.Key.ID != "payments" || enc.Version != 1 || len(enc.Ciphertext) == 0 {
		t.Fatalf("Encrypt = key %s v%d, %d bytes", enc.Key.ID, enc.Version, len(enc.Ciphertext))
	}
	dec, err := p.Decrypt(ctx, client("app", "rid-dec"), pipeline.DecryptInput{Ciphertext: enc.Ciphertext, Context: map[string]string{"order": "7"}})
	if err != nil {
		t.Fatalf("Decrypt: %v", err)
	}
	if string(dec.Plaintext) != "card 4111" || dec.Key.ID != "payments" || dec.Version != 1 {
		t.Fatalf("Decrypt = %q key %s v%d", dec.Plaintext, dec.Key.ID, dec.Version)
	}
	// A caller the policy does not name is refused, and told nothing of
	// the key; a key that does not exist is refused alike.
	if _, err := p.Encrypt(ctx, client("stranger", "rid-deny"), pipeline.EncryptInput{KeyID: "payments", Plaintext: []byte("x")}); !errors.Is(err, managed.ErrPermissionDenied) {
		t.Fatalf("stranger Encrypt = %v, want PermissionDenied", err)
	}
	if _, err := p.Encrypt(ctx, client("stranger", "rid-ghost"), pipeline.EncryptInput{KeyID: "ghost", Plaintext: []byte("x")}); !errors.Is(err, managed.ErrPermissionDenied) {
		t.Fatalf("stranger Encrypt on a missing key = %v, want PermissionDenied (existence is not leaked)", err)
	}
	if _, err := p.Encrypt(ctx, client("ops", "rid-missing"), pipeline.EncryptInput{KeyID: "ghost", Plaintext: []byte("x")}); !errors.Is(err, managed.ErrNotFound) {
		t.Fatalf("ops Encrypt on a missing key = %v, want NotFound", err)
	}
	// ReEncrypt: two keys, two lines under one request id.
	re, err := p.ReEncrypt(ctx, client("app", "rid-re"), pipeline.ReEncryptInput{Ciphertext: enc.Ciphertext, SourceContext: map[string]string{"order": "7"}})
	if err != nil {
		t.Fatalf("ReEncrypt: %v", err)
	}
	if re.Source.Key.ID != "payments" || re.Destination.Key.ID != "payments" || re.Source.Plaintext != nil {
		t.Fatalf("ReEncrypt = %+v", re)
	}
	if _, err := p.ReEncrypt(ctx, client("app", "rid-re-deny"), pipeline.ReEncryptInput{Ciphertext: enc.Ciphertext,
		SourceContext: map[string]string{"order": "7"}, DestinationKeyID: "secret"}); !errors.Is(err, managed.ErrPermissionDenied) {
		t.Fatalf("ReEncrypt to a key of another team = %v, want PermissionDenied", err)
	}
	mac, err := p.GenerateMac(ctx, client("app", "rid-mac"), pipeline.GenerateMacInput{KeyID: "tags", Message: []byte("m")})
	if err != nil {
		t.Fatalf("GenerateMac: %v", err)
	}
	ver, err := p.VerifyMac(ctx, client("app", "rid-vmac"), pipeline.VerifyMacInput{KeyID: "tags", Message: []byte("m"), Mac: mac.Tag})
	if err != nil || !ver.Valid {
		t.Fatalf("VerifyMac = %+v, %v", ver, err)
	}
	// Bad input never reaches the performer, and is audited.
	if _, err := p.Decrypt(ctx, client("app", "rid-garbage"), pipeline.DecryptInput{Ciphertext: []byte("not a ciphertext")}); !errors.Is(err, managed.ErrInvalidArgument) {
		t.Fatalf("Decrypt of garbage = %v, want InvalidArgument", err)
	}

	type line struct {
		rid, op, key string
		version      uint32
		decision     audit.Decision
		policyID     string
		outcome      string
	}
	want := []line{
		{"rid-enc", "Encrypt", "payments", 1, audit.Allow, "app-payments", "ok"},
		{"rid-dec", "Decrypt", "payments", 1, audit.Allow, "app-payments", "ok"},
		{"rid-deny", "Encrypt", "payments", 0, audit.Deny, "default-deny", "error"},
		{"rid-ghost", "Encrypt", "ghost", 0, audit.Deny, "default-deny", "error"},
		{"rid-missing", "Encrypt", "ghost", 0, audit.Allow, "ops-encrypt", "error"},
		{"rid-re", "ReEncrypt", "payments", 1, audit.Allow, "app-payments", "ok"},
		{"rid-re", "ReEncrypt", "payments", 1, audit.Allow, "app-payments", "ok"},
		{"rid-re-deny", "ReEncrypt", "payments", 1, audit.Allow, "app-payments", "ok"},
		{"rid-re-deny", "ReEncrypt", "secret", 0, audit.Deny, "default-deny", "error"},
		{"rid-mac", "GenerateMac", "tags", 1, audit.Allow, "app-payments", "ok"},
		{"rid-vmac", "VerifyMac", "tags", 1, audit.Allow, "app-payments", "ok"},
		{"rid-garbage", "Decrypt", "", 0, "", "", "error"},
	}
	got := auditLines(t, path)
	if len(got) != len(want) {
		t.Fatalf("%d audit lines, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.RequestID != w.rid || string(g.Operation) != w.op || g.Key != w.key || g.Version != w.version ||
			g.Decision != w.decision || g.PolicyID != w.policyID || g.Outcome != w.outcome || g.Node != "central-1" {
			t.Errorf("audit line %d = %+v, want %+v", i, g, w)
		}
	}
	if first := got[0]; first.Principal != "spiffe://kb.test/client/app" || first.ClientRequestID != "my-correlation" || first.Backend != "soft" {
		t.Errorf("Encrypt line names principal %q, client request id %q, backend %q", first.Principal, first.ClientRequestID, first.Backend)
	}
	if d := got[2].Detail; !strings.Contains(d, "may not Encrypt key payments") {
		t.Errorf("denial detail = %q", d)
	}
}

// TestPipelineImportsNoFrontEnd: the pipeline is what every front-end
// calls, so it depends on none of them — not gRPC, not the gRPC
// front-end, not the wire types.
func TestPipelineImportsNoFrontEnd(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "google.golang.org/grpc") || strings.HasPrefix(imp, "google.golang.org/protobuf") ||
			strings.HasSuffix(imp, "keybroker/rpc") || strings.Contains(imp, "keybroker/api/") || strings.HasSuffix(imp, "internal/wire") {
			t.Errorf("package pipeline imports %s", imp)
		}
	}
}

// countingPerformer hands out a new *managed.Key on every Get — as a
// registry would if the key changed between two lookups — and records the
// keys the operations were performed with.
type countingPerformer struct {
	pipeline.Performer
	mu   sync.Mutex
	gets []*managed.Key
	used []*managed.Key
}

func (c *countingPerformer) Get(ctx context.Context, id string) (*managed.Key, error) {
	k, err := c.Performer.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	k = k.Clone()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gets = append(c.gets, k)
	return k, nil
}

func (c *countingPerformer) use(k *managed.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.used = append(c.used, k)
}

func (c *countingPerformer) Encrypt(ctx context.Context, k *managed.Key, pt []byte, ectx map[string]string) (managed.Encrypted, error) {
	c.use(k)
	return c.Performer.Encrypt(ctx, k, pt, ectx)
}

func (c *countingPerformer) Decrypt(ctx context.Context, k *managed.Key, h *envelope.Header, body []byte, ectx map[string]string) (managed.Decrypted, error) {
	c.use(k)
	return c.Performer.Decrypt(ctx, k, h, body, ectx)
}

func (c *countingPerformer) GenerateDataKey(ctx context.Context, k *managed.Key, ectx map[string]string, wrapped bool) (*managed.DataKey, error) {
	c.use(k)
	return c.Performer.GenerateDataKey(ctx, k, ectx, wrapped)
}

func (c *countingPerformer) DecryptDataKey(ctx context.Context, k *managed.Key, v uint32, wrapped []byte, ectx map[string]string) (managed.UnwrappedDataKey, error) {
	c.use(k)
	return c.Performer.DecryptDataKey(ctx, k, v, wrapped, ectx)
}

func (c *countingPerformer) GenerateMac(ctx context.Context, k *managed.Key, msg []byte) (managed.MAC, error) {
	c.use(k)
	return c.Performer.GenerateMac(ctx, k, msg)
}

func (c *countingPerformer) VerifyMac(ctx context.Context, k *managed.Key, v uint32, msg, tag []byte) (managed.Verification, error) {
	c.use(k)
	return c.Performer.VerifyMac(ctx, k, v, msg, tag)
}

// take returns and forgets what was recorded.
func (c *countingPerformer) take() (gets, used []*managed.Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	gets, used = c.gets, c.used
	c.gets, c.used = nil, nil
	return gets, used
}

// TestKeyAuthorizedIsKeyUsed: each operation resolves its key once, and
// performs with the very *managed.Key it authorized — not a second lookup
// that may have changed in between.
func TestKeyAuthorizedIsKeyUsed(t *testing.T) {
	perf := &countingPerformer{Performer: centralPerformer{newService(t)}}
	p, _ := newPipeline(t, perf, staticPolicies{parsePolicies(t, testPolicies)})
	ctx := t.Context()
	app := client("app", "rid")

	var ct []byte
	var dk *managed.DataKey
	var tag []byte
	for _, tc := range []struct {
		name string
		keys int // keys the operation resolves
		run  func() error
	}{
		{"Encrypt", 1, func() error {
			out, err := p.Encrypt(ctx, app, pipeline.EncryptInput{KeyID: "payments", Plaintext: []byte("p")})
			ct = out.Ciphertext
			return err
		}},
		{"Decrypt", 1, func() error {
			_, err := p.Decrypt(ctx, app, pipeline.DecryptInput{Ciphertext: ct})
			return err
		}},
		{"ReEncrypt", 2, func() error {
			_, err := p.ReEncrypt(ctx, app, pipeline.ReEncryptInput{Ciphertext: ct})
			return err
		}},
		{"GenerateDataKey", 1, func() error {
			var err error
			dk, err = p.GenerateDataKey(ctx, app, pipeline.GenerateDataKeyInput{KeyID: "payments", WithPlaintext: true})
			return err
		}},
		{"DecryptDataKey", 1, func() error {
			out, err := p.DecryptDataKey(ctx, app, pipeline.DecryptDataKeyInput{KeyID: "payments", Version: dk.Version, Wrapped: dk.Wrapped})
			if err == nil {
				out.Plaintext.Destroy()
			}
			return err
		}},
		{"GenerateMac", 1, func() error {
			out, err := p.GenerateMac(ctx, app, pipeline.GenerateMacInput{KeyID: "tags", Message: []byte("m")})
			tag = out.Tag
			return err
		}},
		{"VerifyMac", 1, func() error {
			_, err := p.VerifyMac(ctx, app, pipeline.VerifyMacInput{KeyID: "tags", Message: []byte("m"), Mac: tag})
			return err
		}},
	} {
		if err := tc.run(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		gets, used := perf.take()
		if len(gets) != tc.keys || len(used) != tc.keys {
			t.Errorf("%s resolved %d keys and performed %d times, want %d and %d", tc.name, len(gets), len(used), tc.keys, tc.keys)
			continue
		}
		for i := range gets {
			if used[i] != gets[i] {
				t.Errorf("%s performed with a key other than the one it resolved and authorized", tc.name)
			}
		}
	}
	dk.Plaintext.Destroy()
}

// TestDecisionsFollowChanges: remembered decisions never outlive what
// they were made on — a key replaced by a changed one, a reloaded policy
// set, another caller or another action is decided afresh; the same
// question on the same key is answered from memory.
func TestDecisionsFollowChanges(t *testing.T) {
	permissive := parsePolicies(t, testPolicies)
	strict := parsePolicies(t, `@id("nothing") forbid (principal, action, resource);`)
	pols := &swappablePolicies{}
	pols.p.Store(permissive)
	node := &mapPerformer{keys: map[string]*managed.Key{
		"payments": {ID: "payments", Type: managed.AES256GCM, Mode: managed.ModeDerive, State: managed.StateEnabled,
			Labels: map[string]string{"team": "payments"}, Primary: 1, Versions: []managed.Version{{Version: 1, RootKey: "softkms:root-1"}}},
	}}
	p, _ := newPipeline(t, node, pols)
	check := func(step, caller string, op policy.Action, want error, evaluated bool) {
		t.Helper()
		before := p.KeyDecisionsMade()
		ctx, c := p.Begin(t.Context(), client(caller, "rid-"+step), op, "payments")
		_, err := c.AuthorizeKey(ctx, op)
		err = c.End(ctx, err)
		if want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Errorf("%s: %s %s on payments = %v, want %v", step, caller, op, err, want)
		}
		if made := p.KeyDecisionsMade() - before; (made == 1) != evaluated {
			t.Errorf("%s: %d policy evaluations, want evaluated=%v", step, made, evaluated)
		}
	}
	check("first", "app", policy.Encrypt, nil, true)
	check("again", "app", policy.Encrypt, nil, false)
	check("another caller", "stranger", policy.Encrypt, managed.ErrPermissionDenied, true)
	check("another action", "app", policy.Sign, managed.ErrPermissionDenied, true)

	relabelled := node.keys["payments"].Clone()
	relabelled.Labels["team"] = "security"
	node.set("payments", relabelled)
	check("key relabelled", "app", policy.Encrypt, managed.ErrPermissionDenied, true)
	back := relabelled.Clone()
	back.Labels["team"] = "payments"
	node.set("payments", back)
	check("label restored", "app", policy.Encrypt, nil, true)

	pols.p.Store(strict)
	check("policy reloaded", "app", policy.Encrypt, managed.ErrPermissionDenied, true)
	pols.p.Store(permissive)
	check("policy back", "app", policy.Encrypt, nil, false)

	node.set("payments", nil)
	check("key gone", "ops", policy.Encrypt, managed.ErrNotFound, false)
}

// mapPerformer is a Performer whose registry is a map. Only Get and Served
// are implemented; the embedded nil Performer makes any other call panic,
// so a test notices if the code under test performs an operation.
type mapPerformer struct {
	pipeline.Performer
	mu   sync.Mutex
	keys map[string]*managed.Key
}

func (m *mapPerformer) Get(_ context.Context, id string) (*managed.Key, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.keys[id]; ok {
		return k, nil
	}
	return nil, managed.Errorf(managed.ErrNotFound, "key %q", id)
}

func (m *mapPerformer) set(id string, k *managed.Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k == nil {
		delete(m.keys, id)
		return
	}
	m.keys[id] = k
}

func (*mapPerformer) Served(*managed.Key, policy.Action) string { return "softkms" }
