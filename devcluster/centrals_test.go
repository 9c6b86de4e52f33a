package devcluster_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/etcdproc"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// TestCentralsOnEtcd starts three central nodes on the cluster's own etcd
// member with two edges: each central has its own node id, certificate,
// data directory and audit log; the edges start at different centrals
// and list every one; a key created at central-2 is described at every
// central and encrypts at one edge and decrypts at the other. After
// Shutdown no etcd process is left; a second start finds the key again,
// and a start of the same directory on bbolt is refused.
func TestCentralsOnEtcd(t *testing.T) {
	etcdtest.SkipIfMissing(t)
	dir := t.TempDir()
	c := startWith(t, devcluster.Options{Dir: dir, Centrals: 3})
	if len(c.Centrals) != 3 || c.Central != c.Centrals[0] {
		t.Fatalf("%d centrals (first %p, Central %p), want 3 with Central first", len(c.Centrals), c.Centrals[0], c.Central)
	}
	for i, path := range c.CentralConfigs {
		cfg, err := config.LoadCentral(path)
		if err != nil {
			t.Fatal(err)
		}
		name := devcluster.CentralName(i)
		if cfg.NodeID != name || cfg.DataDir != filepath.Join(dir, name) || cfg.Store.Etcd == nil ||
			!strings.HasSuffix(cfg.TLS.Cert, name+".crt") {
			t.Errorf("%s: node_id %q, data_dir %q, cert %q, store %+v; want %s's own and etcd", path, cfg.NodeID, cfg.DataDir, cfg.TLS.Cert, cfg.Store, name)
		}
	}
	for i, path := range c.EdgeConfigs {
		cfg, err := config.LoadEdge(path)
		if err != nil {
			t.Fatal(err)
		}
		got := cfg.Central.All()
		want := []string{c.Centrals[i%3].Addr(), c.Centrals[(i+1)%3].Addr(), c.Centrals[(i+2)%3].Addr()}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("edge %d's centrals = %v, want %v", i, got, want)
		}
	}

	admin := kbv1.NewKeyAdminClient(dial(t, c, c.Centrals[1].Addr(), identity.Admin, devcluster.AdminName))
	if _, err := admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSynced(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i, n := range c.Centrals {
		kb := kbv1.NewKeyBrokerClient(dial(t, c, n.Addr(), identity.Client, devcluster.AppName))
		if _, err := kb.DescribeKey(t.Context(), &kbv1.DescribeKeyRequest{KeyId: "k"}); err != nil {
			t.Errorf("DescribeKey at %s: %v", devcluster.CentralName(i), err)
		}
	}
	us := kbv1.NewKeyBrokerClient(dial(t, c, c.Edges[0].Addr(), identity.Client, devcluster.AppName))
	enc, err := us.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	eu := kbv1.NewKeyBrokerClient(dial(t, c, c.Edges[1].Addr(), identity.Client, devcluster.AppName))
	if dec, err := eu.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()}); err != nil || string(dec.GetPlaintext()) != "hello" {
		t.Errorf("Decrypt at the other edge = %q, %v", dec.GetPlaintext(), err)
	}
	for i := range c.Centrals {
		if _, err := os.Stat(filepath.Join(dir, devcluster.CentralName(i), "audit.jsonl")); err != nil {
			t.Errorf("%s's audit log: %v", devcluster.CentralName(i), err)
		}
	}

	m := c.EtcdMember()
	shutdown(t, c)
	select {
	case <-m.Done():
	default:
		t.Error("the etcd member is still running after Shutdown")
	}
	if syscall.Kill(m.Pid(), 0) == nil {
		t.Errorf("etcd process %d still exists after Shutdown", m.Pid())
	}

	if _, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "keeps its keys in etcd") {
		t.Errorf("Start on bbolt of a directory on etcd = %v, want a refusal", err)
	}
	c = startWith(t, devcluster.Options{Dir: dir, Centrals: 2})
	if err := c.WaitSynced(t.Context()); err != nil {
		t.Fatal(err)
	}
	kb := kbv1.NewKeyBrokerClient(dial(t, c, c.Centrals[1].Addr(), identity.Client, devcluster.AppName))
	if dec, err := kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()}); err != nil || string(dec.GetPlaintext()) != "hello" {
		t.Errorf("Decrypt after a restart = %q, %v", dec.GetPlaintext(), err)
	}
}

// TestCentralsWithoutEtcd: with no etcd binary, several centrals are
// refused at once, saying what to install, and nothing is written.
func TestCentralsWithoutEtcd(t *testing.T) {
	t.Setenv(etcdproc.BinaryEnv, filepath.Join(t.TempDir(), "no-etcd"))
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{Dir: dir, Centrals: 3})
	if err == nil {
		shutdown(t, c)
		t.Fatal("Start with three centrals and no etcd succeeded")
	}
	if !strings.Contains(err.Error(), "etcd-server") && !strings.Contains(err.Error(), etcdproc.BinaryEnv) {
		t.Errorf("Start error %q does not say what to install", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the directory was created (%v) though Start was refused", err)
	}
}

// TestCentralsOnGivenEtcd: with Etcd.Endpoints the central nodes share
// that etcd (the cluster runs none), under devcluster.EtcdPrefix.
func TestCentralsOnGivenEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	c := startWith(t, devcluster.Options{Dir: t.TempDir(), Centrals: 2, Edges: []devcluster.EdgeSpec{},
		Etcd: &devcluster.EtcdOptions{Endpoints: etcd.Endpoints()}})
	if c.EtcdMember() != nil || c.EtcdDone() != nil {
		t.Error("the cluster runs an etcd member of its own though given endpoints")
	}
	admin := kbv1.NewKeyAdminClient(dial(t, c, c.Centrals[0].Addr(), identity.Admin, devcluster.AdminName))
	md, err := admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
	if err != nil {
		t.Fatal(err)
	}
	kb := kbv1.NewKeyBrokerClient(dial(t, c, c.Centrals[1].Addr(), identity.Client, devcluster.AppName))
	for {
		if c.Centrals[1].Service().Registry().Store().Revision() >= md.GetRevision() {
			break
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := kb.DescribeKey(t.Context(), &kbv1.DescribeKeyRequest{KeyId: "k"}); err != nil {
		t.Errorf("DescribeKey at central-2: %v", err)
	}
	resp, err := etcd.Client(t).Get(t.Context(), devcluster.EtcdPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count == 0 {
		t.Errorf("objects under %s in the given etcd: %v, %v; want some", devcluster.EtcdPrefix, resp, err)
	}
}

// TestRestartResumesEdgesOnEtcd: an edge resumes its Watch at a central
// that has just restarted on etcd — its resume point carried by a progress
// notification past the last key change (a write elsewhere in etcd) —
// instead of being sent a snapshot of every key: the central seals
// nothing to it again (no HoldMaterial line). (Whether the restarted
// central's own revision has passed that point when the edge comes back
// is a race this test does not decide; store TestEtcdWatchFromAProgressRevision
// covers the case where it has not.)
func TestRestartResumesEdgesOnEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	opts := devcluster.Options{Dir: t.TempDir(), Centrals: 1, Edges: []devcluster.EdgeSpec{{Name: "edge-00", Region: "r0", Prefetch: true}},
		Etcd: &devcluster.EtcdOptions{Endpoints: etcd.Endpoints()}}
	c := startWith(t, opts)
	admin := kbv1.NewKeyAdminClient(dial(t, c, c.Centrals[0].Addr(), identity.Admin, devcluster.AdminName))
	var last uint64
	for _, id := range []string{"k1", "k2", "k3"} {
		md, err := admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
		if err != nil {
			t.Fatal(err)
		}
		last = md.GetRevision()
	}
	resp, err := etcd.Client(t).Put(t.Context(), "/elsewhere", "x")
	if err != nil {
		t.Fatal(err)
	}
	elsewhere := uint64(resp.Header.Revision)
	edge := c.Edges[0].Cache()
	for edge.Revision() < elsewhere {
		select {
		case <-t.Context().Done():
			t.Fatalf("the edge's revision stayed at %d, below the write elsewhere at %d (key changes end at %d)", edge.Revision(), elsewhere, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
	holds := func() int {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(opts.Dir, "central", "audit.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(data), `"operation":"HoldMaterial"`)
	}
	before := holds()
	if before < 3 {
		t.Fatalf("%d HoldMaterial lines before the restart, want one per key at least", before)
	}
	shutdown(t, c)
	c = startWith(t, opts)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := c.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if after := holds(); after != before {
		t.Errorf("the restarted central sealed %d keys to the edge again: a snapshot, not a resumed Watch", after-before)
	}
}
