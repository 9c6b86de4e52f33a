package e2e

// The process tests of the edge tier: one `keybroker central` on a SoftHSM2
// token and three `keybroker edge` processes in two regions, each a real
// process with its own data directory, talking gRPC over mutual TLS.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/tests/framework"
)

func code(err error) codes.Code { return status.Code(err) }

func TestEdgesEndToEnd(t *testing.T) {
	c := framework.NewProcesses(t,
		&framework.EdgeNode{Name: "edge-eu-1", Region: "eu", Prefetch: true, Staleness: time.Hour},
		&framework.EdgeNode{Name: "edge-eu-2", Region: "eu", Prefetch: false, Staleness: time.Hour},
		&framework.EdgeNode{Name: "edge-us-1", Region: "us", Prefetch: true, Staleness: 2 * time.Second},
	)
	ctx := t.Context()
	// Processes and connections that outlive the subtest that starts them
	// belong to the whole test, so its cleanups stop them.
	top := t
	owner := map[string]string{"owner": framework.TrustDomain}
	aes, derive, wrap, backend := kbv1.KeyType_KEY_TYPE_AES_256_GCM, kbv1.KeyMode_KEY_MODE_DERIVE, kbv1.KeyMode_KEY_MODE_WRAP, kbv1.KeyMode_KEY_MODE_BACKEND
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "shared", Type: aes, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "eu-data", Type: aes, Mode: wrap, Labels: owner, Placement: `principal.region == "eu"`},
		{KeyId: "hsm", Type: aes, Mode: backend, Labels: owner},
		{KeyId: "cold", Type: aes, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "tags", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "signer", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: wrap, Labels: owner, Placement: "true"},
	} {
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)

	// Clients of every node, as the same application.
	clients := map[string]*framework.Conn{"central-1": c.Dial(t, c.Central.Addr, identity.Client, "app")}
	nodes := []string{"central-1"}
	for _, name := range c.Order {
		clients[name] = c.Dial(t, c.Edges[name].Proc.Addr, identity.Client, "app")
		nodes = append(nodes, name)
	}
	ectx := map[string]string{"tenant": "7"}

	t.Run("encrypt anywhere, decrypt anywhere", func(t *testing.T) {
		for _, key := range []string{"shared", "eu-data", "hsm"} {
			for _, src := range nodes {
				pt := []byte("from " + src + " with " + key)
				enc, err := clients[src].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx})
				must(t, "Encrypt "+key+" at "+src, err)
				for _, dst := range nodes {
					dec, err := clients[dst].KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), EncryptionContext: ectx})
					if err != nil || !bytes.Equal(dec.GetPlaintext(), pt) {
						t.Errorf("%s: encrypted at %s, Decrypt at %s = %q, %v", key, src, dst, dec.GetPlaintext(), err)
					}
				}
			}
		}
		for _, src := range nodes {
			mac, err := clients[src].KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("m")})
			must(t, "GenerateMac at "+src, err)
			sig, err := clients[src].KB.Sign(ctx, &kbv1.SignRequest{KeyId: "signer", Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
			must(t, "Sign at "+src, err)
			for _, dst := range nodes {
				vm, err := clients[dst].KB.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "tags", Message: []byte("m"), Mac: mac.GetMac()})
				if err != nil || !vm.GetValid() {
					t.Errorf("MAC from %s verified at %s = %v, %v", src, dst, vm.GetValid(), err)
				}
				vs, err := clients[dst].KB.Verify(ctx, &kbv1.VerifyRequest{KeyId: "signer", Input: &kbv1.VerifyRequest_Message{Message: []byte("m")}, Signature: sig.GetSignature()})
				if err != nil || !vs.GetValid() {
					t.Errorf("signature from %s verified at %s = %v, %v", src, dst, vs.GetValid(), err)
				}
			}
		}
	})

	t.Run("every key type and mode, made anywhere, checked everywhere", func(t *testing.T) {
		types := []kbv1.KeyType{aes, kbv1.KeyType_KEY_TYPE_HMAC_SHA256, kbv1.KeyType_KEY_TYPE_ECDSA_P256, kbv1.KeyType_KEY_TYPE_ED25519}
		// Backend mode needs a root key of the type's own algorithm on the
		// token; SoftHSM2 keeps no Ed25519 keys for it.
		backendRoot := map[kbv1.KeyType]string{aes: c.Roots.Ref("root-hsm-aes"), kbv1.KeyType_KEY_TYPE_HMAC_SHA256: c.Roots.Ref("root-mac"),
			kbv1.KeyType_KEY_TYPE_ECDSA_P256: c.Roots.Ref("root-ec")}
		var rev uint64
		var ids []string
		kinds := map[string]kbv1.KeyType{}
		for _, typ := range types {
			for _, mode := range []kbv1.KeyMode{derive, wrap, backend} {
				req := &kbv1.CreateKeyRequest{KeyId: strings.ToLower(fmt.Sprintf("m-%s-%s", typ, mode)), Type: typ, Mode: mode, Labels: owner, Placement: "true"}
				if mode == backend {
					if req.RootKey = backendRoot[typ]; req.RootKey == "" {
						continue
					}
				}
				req.KeyId = strings.NewReplacer("_", "-").Replace(req.KeyId)
				m, err := c.Admin.Admin.CreateKey(ctx, req)
				must(t, "CreateKey "+req.KeyId, err)
				rev = max(rev, m.GetRevision())
				ids = append(ids, req.KeyId)
				kinds[req.KeyId] = typ
			}
		}
		c.WaitApplied(t, rev)
		msg := []byte("every node")
		for _, id := range ids {
			for _, src := range nodes {
				for _, dst := range nodes {
					var err error
					ok := true
					switch kinds[id] {
					case aes:
						var enc *kbv1.EncryptResponse
						if enc, err = clients[src].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: msg}); err == nil {
							var dec *kbv1.DecryptResponse
							dec, err = clients[dst].KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
							ok = bytes.Equal(dec.GetPlaintext(), msg)
						}
					case kbv1.KeyType_KEY_TYPE_HMAC_SHA256:
						var mac *kbv1.GenerateMacResponse
						if mac, err = clients[src].KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: id, Message: msg}); err == nil {
							var v *kbv1.VerifyMacResponse
							v, err = clients[dst].KB.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: id, Message: msg, Mac: mac.GetMac()})
							ok = v.GetValid()
						}
					default:
						var sig *kbv1.SignResponse
						if sig, err = clients[src].KB.Sign(ctx, &kbv1.SignRequest{KeyId: id, Input: &kbv1.SignRequest_Message{Message: msg}}); err == nil {
							var v *kbv1.VerifyResponse
							v, err = clients[dst].KB.Verify(ctx, &kbv1.VerifyRequest{KeyId: id, Input: &kbv1.VerifyRequest_Message{Message: msg}, Signature: sig.GetSignature()})
							ok = v.GetValid()
						}
					}
					if err != nil || !ok {
						t.Errorf("%s: made at %s, checked at %s: ok=%v, %v", id, src, dst, ok, err)
					}
				}
			}
		}
		if len(ids) != 11 {
			t.Errorf("%d type and mode combinations tried, want 11", len(ids))
		}
	})

	t.Run("placement: eu keys are served in eu and forwarded from us", func(t *testing.T) {
		for name, wantVia := range map[string]string{"edge-eu-1": "", "edge-eu-2": "", "edge-us-1": "edge-us-1"} {
			rctx, rid := framework.WithRequestID(t)
			if _, err := clients[name].KB.Encrypt(rctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("x")}); err != nil {
				t.Fatalf("Encrypt eu-data at %s: %v", name, err)
			}
			lines := c.AuditLines(t, rid)
			switch {
			case wantVia == "" && len(lines) != 0:
				t.Errorf("%s served eu-data locally, but central audited %+v", name, lines)
			case wantVia != "" && (len(lines) != 1 || lines[0].Via != wantVia || lines[0].Principal != clients[name].ID || lines[0].Outcome != "ok"):
				t.Errorf("%s forwarded eu-data: central audit lines %+v, want one ok line as %s via %s", name, lines, clients[name].ID, wantVia)
			}
		}
		// The us edge asking for the material itself is refused and audited.
		us := c.DialEdgeSync(t, "edge-us-1")
		rctx, rid := framework.WithRequestID(t)
		_, err := us.FetchMaterial(rctx, &kbv1.FetchMaterialRequest{KeyId: "eu-data"})
		if code(err) != codes.PermissionDenied {
			t.Errorf("FetchMaterial(eu-data) by edge-us-1 = %v, want PermissionDenied", err)
		}
		if lines := c.AuditLines(t, rid); len(lines) != 1 || lines[0].Decision != "deny" || lines[0].Operation != "HoldMaterial" {
			t.Errorf("the refusal's audit lines = %+v, want one HoldMaterial deny", lines)
		}
	})

	t.Run("LookupKey is the same from every node and following it works", func(t *testing.T) {
		for region, want := range map[string][]string{
			"eu": {"edge-eu-1/MATERIAL_HELD", "edge-eu-2/PLACEMENT_ALLOWS_FETCH", "central-1/ROOT_OF_TRUST"},
			"us": {"edge-eu-1/MATERIAL_HELD", "edge-eu-2/PLACEMENT_ALLOWS_FETCH", "edge-us-1/FORWARD_ONLY", "central-1/ROOT_OF_TRUST"},
		} {
			for _, from := range nodes {
				resp, err := clients[from].KB.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "eu-data", Operation: kbv1.Operation_OPERATION_ENCRYPT, ClientLabels: map[string]string{"region": region}})
				must(t, "LookupKey at "+from, err)
				var got []string
				for _, n := range resp.GetNodes() {
					got = append(got, n.GetNodeId()+"/"+strings.TrimPrefix(n.GetReason().String(), "LOOKUP_REASON_"))
				}
				if !slices.Equal(got, want) {
					t.Errorf("LookupKey(eu-data, encrypt, region=%s) at %s = %v, want %v", region, from, got, want)
				}
				first := c.Dial(t, resp.GetNodes()[0].GetAddress(), identity.Client, "app")
				if _, err := first.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("x")}); err != nil {
					t.Errorf("following LookupKey to %s: %v", resp.GetNodes()[0].GetNodeId(), err)
				}
			}
		}
		// The CLI asks the same question of an edge and prints the same answer.
		out, code := c.CLIAs(t, c.Edges["edge-us-1"].Proc.Addr, identity.Client, "app", nil,
			"lookup", "--key", "eu-data", "--op", "encrypt", "--label", "region=us", "--output", "json")
		var listed []struct {
			NodeID string `json:"node_id"`
			Reason string `json:"reason"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed) != 4 || listed[0].NodeID != "edge-eu-1" || listed[3].NodeID != "central-1" {
			t.Errorf("keybroker lookup at edge-us-1 = %d %s; want edge-eu-1 first, central-1 last", code, out)
		}
		out, code = c.CLIAs(t, c.Edges["edge-eu-2"].Proc.Addr, identity.Admin, "ops", nil, "nodes", "--output", "json")
		var nodesOut []struct {
			NodeID    string `json:"node_id"`
			Kind      string `json:"kind"`
			Connected bool   `json:"connected"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &nodesOut) != nil || len(nodesOut) != 4 {
			t.Errorf("keybroker nodes at edge-eu-2 = %d %s; want central and three edges", code, out)
		}
		for _, n := range nodesOut {
			if !n.Connected {
				t.Errorf("keybroker nodes: %s (%s) not connected", n.NodeID, n.Kind)
			}
		}
		if out, code := c.CLIAs(t, c.Central.Addr, identity.Client, "app", nil, "lookup", "--key", "eu-data", "--op", "teleport"); code != 2 || !strings.Contains(out, "--op must be one of") {
			t.Errorf("keybroker lookup --op teleport = %d %s; want a usage error", code, out)
		}
	})

	t.Run("1000 cold decrypts of one data key: one FetchMaterial, one backend call", func(t *testing.T) {
		enc, err := clients["central-1"].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "cold", Plaintext: []byte("cold")})
		must(t, "Encrypt cold", err)
		// The central material cache holds one version: using another key
		// evicts cold's, so the fetch below must ask the HSM again.
		_, err = clients["central-1"].KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("evict")})
		must(t, "GenerateMac tags", err)
		eu2 := c.Edges["edge-eu-2"]
		fetches := c.OpsMetric(t, eu2.Proc.OpsAddr, "keybroker_edge_fetches_total")
		hsm := c.OpsMetric(t, c.Central.OpsAddr, "keybroker_pkcs11_operations_total")
		var wg sync.WaitGroup
		var failed atomic.Int64
		rids := map[string]bool{}
		for range 1000 {
			rctx, rid := framework.WithRequestID(t)
			rids[rid] = true
			wg.Go(func() {
				dec, err := clients["edge-eu-2"].KB.Decrypt(rctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
				if err != nil || string(dec.GetPlaintext()) != "cold" {
					failed.Add(1)
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n != 0 {
			t.Fatalf("%d of 1000 decrypts failed", n)
		}
		if got := c.OpsMetric(t, eu2.Proc.OpsAddr, "keybroker_edge_fetches_total") - fetches; got != 1 {
			t.Errorf("FetchMaterial calls for 1000 cold decrypts = %v, want 1", got)
		}
		if got := c.OpsMetric(t, c.Central.OpsAddr, "keybroker_pkcs11_operations_total") - hsm; got != 1 {
			t.Errorf("HSM operations for 1000 cold decrypts = %v, want 1", got)
		}
		// The fetch is audited at central under the request id of the
		// decrypt that caused it, with the HSM call it cost.
		fetched := c.AuditRecords(t, func(r audit.Record) bool { return rids[r.ClientRequestID] })
		if len(fetched) != 1 || fetched[0].Operation != "HoldMaterial" || fetched[0].Principal != "spiffe://"+framework.TrustDomain+"/edge/edge-eu-2" ||
			!slices.Equal(fetched[0].BackendCalls, []string{"pkcs11:derive"}) {
			t.Errorf("central audit lines of the 1000 decrypts = %+v; want one HoldMaterial by edge-eu-2 with backend_calls [pkcs11:derive]", fetched)
		}
	})

	// Ciphertexts made before the changes below, for after them.
	euCT, err := clients["edge-eu-1"].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("kept")})
	must(t, "Encrypt eu-data", err)
	sharedCT, err := clients["edge-us-1"].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("shared")})
	must(t, "Encrypt shared", err)

	t.Run("disable and rotate reach every edge", func(t *testing.T) {
		rot, err := c.Admin.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "shared"})
		must(t, "RotateKey", err)
		dis, err := c.Admin.Admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "eu-data"})
		must(t, "DisableKey", err)
		c.WaitApplied(t, max(rot.GetRevision(), dis.GetRevision()))
		for _, name := range c.Order {
			if _, err := clients[name].KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: euCT.GetCiphertext()}); code(err) != codes.FailedPrecondition {
				t.Errorf("Decrypt of a disabled key at %s = %v, want FailedPrecondition", name, err)
			}
			enc, err := clients[name].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("v2")})
			if err != nil || enc.GetKeyVersion() != 2 {
				t.Errorf("Encrypt after rotation at %s = version %d, %v; want version 2", name, enc.GetKeyVersion(), err)
			}
		}
		en, err := c.Admin.Admin.EnableKey(ctx, &kbv1.KeyRequest{KeyId: "eu-data"})
		must(t, "EnableKey", err)
		c.WaitApplied(t, en.GetRevision())
	})

	t.Run("kill -9 central under load: placed keys keep working, misses fail fast", func(t *testing.T) {
		var errs atomic.Int64
		var done atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, name := range []string{"edge-eu-1", "edge-us-1"} {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := clients[name].KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: sharedCT.GetCiphertext()}); err != nil {
						errs.Add(1)
						t.Errorf("Decrypt at %s while central died: %v", name, err)
						return
					}
					done.Add(1)
				}
			})
		}
		for done.Load() < 200 {
			time.Sleep(time.Millisecond) // let the load start; not an assertion
		}
		c.Central.Kill()
		after := done.Load()
		for done.Load() < after+500 && errs.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		close(stop)
		wg.Wait()
		if n := errs.Load(); n != 0 {
			t.Fatalf("%d errors on placed keys after central died", n)
		}
		// A miss (a backend-mode key must be forwarded) fails fast.
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := clients["edge-eu-1"].KB.Encrypt(fctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
		if code(err) != codes.Unavailable || fctx.Err() != nil {
			t.Errorf("Encrypt(hsm) at an edge with central down = %v, want Unavailable at once", err)
		}
	})

	t.Run("past lease plus max_staleness an edge refuses", func(t *testing.T) {
		for {
			_, err := clients["edge-us-1"].KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: sharedCT.GetCiphertext()})
			if code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "max_staleness") {
				break
			}
			if err != nil {
				t.Fatalf("Decrypt at a stale edge = %v, want success, then Unavailable naming max_staleness", err)
			}
			select {
			case <-ctx.Done():
				t.Fatal("edge-us-1 never went stale")
			case <-time.After(50 * time.Millisecond):
			}
		}
		// The other edges' windows (1h) are open.
		if _, err := clients["edge-eu-1"].KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: sharedCT.GetCiphertext()}); err != nil {
			t.Errorf("edge-eu-1 within its window: %v", err)
		}
	})

	t.Run("an edge restarted without central serves from disk; no plaintext material on disk", func(t *testing.T) {
		eu1 := c.Edges["edge-eu-1"]
		dk, err := clients["edge-eu-1"].KB.GenerateDataKey(ctx, &kbv1.GenerateDataKeyRequest{KeyId: "shared"})
		must(t, "GenerateDataKey", err)
		eu1.Proc.Stop(t)
		secrets := materialOnDisk(t, eu1.Dir, eu1.Name)
		if len(secrets) == 0 {
			t.Fatal("no sealed material in edge-eu-1's replica")
		}
		secrets = append(secrets, dk.GetPlaintext())
		scanForSecrets(t, eu1.Dir, secrets)
		eu1.Proc = framework.StartNode(top, "edge", eu1.Config)
		cl := c.Dial(top, eu1.Proc.Addr, identity.Client, "app")
		for _, ct := range [][]byte{sharedCT.GetCiphertext(), euCT.GetCiphertext()} {
			if _, err := cl.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: ct}); err != nil {
				t.Errorf("Decrypt at a restarted edge with central down: %v", err)
			}
		}
		clients["edge-eu-1"] = cl
	})

	t.Run("central restarts: edges reconnect and resynchronise", func(t *testing.T) {
		c.Central = c.StartCentral(top)
		c.Admin = c.Dial(top, c.Central.Addr, identity.Admin, "ops")
		m, err := c.Admin.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "shared"})
		must(t, "RotateKey", err)
		c.WaitApplied(t, m.GetRevision())
		for _, name := range c.Order {
			enc, err := clients[name].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("v3")})
			if err != nil || enc.GetKeyVersion() != 3 {
				t.Errorf("Encrypt at %s after central came back = version %d, %v; want 3", name, enc.GetKeyVersion(), err)
			}
		}
	})
}

// materialOnDisk opens every sealed material blob in an edge's replica
// with the edge's own sealing key, to learn what must never appear in
// plaintext on its disk.
func materialOnDisk(t *testing.T, dir, edgeID string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "sealing.key"))
	must(t, "reading sealing.key", err)
	sk, err := sealed.ParsePrivateKey(raw)
	must(t, "ParsePrivateKey", err)
	db, err := bolt.Open(filepath.Join(dir, "replica.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	must(t, "opening replica.db", err)
	defer db.Close()
	var out [][]byte
	err = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("keys")).ForEach(func(_, v []byte) error {
			ek := &kbv1.EdgeKey{}
			if err := proto.Unmarshal(v, ek); err != nil {
				return err
			}
			for _, ver := range ek.GetVersions() {
				if len(ver.GetSealedMaterial()) == 0 {
					continue
				}
				m, err := sealed.Open(sk, ver.GetSealedMaterial(), edgeID, ek.GetMetadata().GetKeyId(), ver.GetVersion())
				if err != nil {
					return err
				}
				out = append(out, bytes.Clone(m.Reveal()))
			}
			return nil
		})
	})
	must(t, "reading replica.db", err)
	return out
}

// scanForSecrets fails if any file under dir holds a secret raw, in hex or
// in base64.
func scanForSecrets(t *testing.T, dir string, secrets [][]byte) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(base64.StdEncoding.EncodeToString(s))} {
				if bytes.Contains(data, form) {
					t.Errorf("%s holds plaintext key material", path)
				}
			}
		}
		return nil
	})
	must(t, "scanning the data dir", err)
}
