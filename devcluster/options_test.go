package devcluster_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

// startWith starts a cluster with opts and shuts it down at the end of
// the test.
func startWith(t *testing.T, opts devcluster.Options) *devcluster.Cluster {
	t.Helper()
	c, err := devcluster.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, c) })
	return c
}

func shutdown(t *testing.T, c *devcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// fixedPorts are the ports a cluster with two edges takes from base.
func fixedPorts(base int) []int {
	return []int{base, base + 1, base + 2, base + 10, base + 11, base + 12}
}

// freeBase finds a base port whose six ports are free now, below the
// ephemeral range so that port-0 listeners elsewhere are unlikely to take
// one meanwhile.
func freeBase(t *testing.T) int {
	t.Helper()
	for range 100 {
		base := 20000 + rand.IntN(10000)
		free := true
		for _, p := range fixedPorts(base) {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal("no free run of ports found")
	return 0
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// TestDevFixedPorts: BasePort lays the nodes out on known ports, and a
// restart from the same directory gets the same ones.
func TestDevFixedPorts(t *testing.T) {
	dir := t.TempDir()
	base := freeBase(t)
	for run := range 2 {
		c, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir, BasePort: base})
		if err != nil {
			t.Fatalf("start %d: %v", run+1, err)
		}
		got := []int{port(t, c.Central.Addr()), port(t, c.Edges[0].Addr()), port(t, c.Edges[1].Addr()),
			port(t, c.Central.OpsAddr()), port(t, c.Edges[0].OpsAddr()), port(t, c.Edges[1].OpsAddr())}
		if want := fixedPorts(base); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("start %d: ports %v, want %v", run+1, got, want)
		}
		if err := c.WaitSynced(t.Context()); err != nil {
			t.Fatal(err)
		}
		shutdown(t, c)
	}
}

// TestDevPortInUse: a fixed port another process holds fails Start with
// a *PortInUseError naming it, before anything is written, and leaves
// nothing running or locked.
func TestDevPortInUse(t *testing.T) {
	base := freeBase(t)
	tests := []struct {
		held int
		use  string
	}{
		{base, "central gRPC"},
		{base + 2, "edge-eu gRPC"},
		{base + 11, "edge-us ops"},
	}
	for _, tt := range tests {
		t.Run(tt.use, func(t *testing.T) {
			l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(tt.held)))
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(t.TempDir(), "dev")
			_, err = devcluster.Start(t.Context(), devcluster.Options{Dir: dir, BasePort: base})
			l.Close()
			var pe *devcluster.PortInUseError
			if !errors.As(err, &pe) {
				t.Fatalf("Start with port %d held = %v, want a *PortInUseError", tt.held, err)
			}
			if pe.Port != tt.held || pe.Use != tt.use {
				t.Errorf("PortInUseError{Port: %d, Use: %q}, want {%d, %q}", pe.Port, pe.Use, tt.held, tt.use)
			}
			if want := fmt.Sprintf("port %d (%s) is already in use", tt.held, tt.use); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the directory was created (%v); a port conflict should be found first", err)
			}
			for _, p := range fixedPorts(base) {
				if p == tt.held {
					continue
				}
				l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
				if err != nil {
					t.Errorf("port %d still taken after the failed start: %v", p, err)
					continue
				}
				l.Close()
			}
		})
	}
}

// TestDevBadOptions: options that cannot work are refused.
func TestDevBadOptions(t *testing.T) {
	nine := make([]devcluster.EdgeSpec, 10)
	for i := range nine {
		nine[i] = devcluster.EdgeSpec{Name: fmt.Sprintf("e%d", i), Region: "us"}
	}
	tests := []struct {
		name string
		opts devcluster.Options
		want string
	}{
		{"negative port", devcluster.Options{BasePort: -1}, "negative"},
		{"ports past 65535", devcluster.Options{BasePort: 65530}, "above 65535"},
		{"too many edges for fixed ports", devcluster.Options{BasePort: 20000, Edges: nine}, "at most 9"},
		{"wildcard host", devcluster.Options{Host: "0.0.0.0"}, "wildcard"},
		{"backend naming a key", devcluster.Options{Backend: "softkms:root-1;path=/x/softkms.json;kek-source=/x/kek"}, "names a key"},
		{"bad backend", devcluster.Options{Backend: "nosuch:x"}, "unknown scheme"},
		{"too many nodes for fixed ports", devcluster.Options{BasePort: 20000, Edges: nine[:8], Centrals: 3}, "at most 9 nodes"},
		{"negative centrals", devcluster.Options{Centrals: -1}, "-1 central nodes"},
		{"etcd not on loopback", devcluster.Options{Etcd: &devcluster.EtcdOptions{Endpoints: []string{"http://10.0.0.1:2379"}}}, "not a loopback"},
		{"etcd over https", devcluster.Options{Etcd: &devcluster.EtcdOptions{Endpoints: []string{"https://127.0.0.1:2379"}}}, "plain http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Dir = t.TempDir()
			c, err := devcluster.Start(t.Context(), tt.opts)
			if err == nil {
				shutdown(t, c)
				t.Fatalf("Start succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Start error %q does not contain %q", err, tt.want)
			}
		})
	}
}

// TestDevDirectoryLock: one cluster per directory at a time; the
// directory is free again after Shutdown.
func TestDevDirectoryLock(t *testing.T) {
	dir := t.TempDir()
	none := []devcluster.EdgeSpec{}
	c, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir, Edges: none})
	if err != nil {
		t.Fatal(err)
	}
	if c2, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir, Edges: none}); err == nil {
		shutdown(t, c2)
		t.Fatal("a second cluster started from a directory in use")
	} else if !strings.Contains(err.Error(), "in use by another running cluster") {
		t.Errorf("second Start error %q does not say the directory is in use", err)
	}
	// The refused start must not have disturbed the running cluster.
	if err := c.WaitSynced(t.Context()); err != nil {
		t.Fatal(err)
	}
	shutdown(t, c)
	startWith(t, devcluster.Options{Dir: dir, Edges: none})
}

// TestDevBackendOption: a cluster on another root of trust (here a
// softkms keystore outside the directory) gets its root keys created
// there and serves; the directory then refuses to move to another root of
// trust.
func TestDevBackendOption(t *testing.T) {
	dir, keys := t.TempDir(), t.TempDir()
	kek := filepath.Join(keys, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("cd", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	backend := "softkms:path=" + filepath.Join(keys, "store.json") + ";kek-source=" + kek
	c := startWith(t, devcluster.Options{Dir: dir, Backend: backend})
	if got := c.Backend(); got != backend {
		t.Errorf("Backend() = %q, want %q", got, backend)
	}
	if _, err := os.Stat(filepath.Join(dir, "softkms.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the default keystore was made too (%v)", err)
	}
	encryptDecrypt(t, c)
	shutdown(t, c)

	_, err := devcluster.Start(t.Context(), devcluster.Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "start on the same root of trust") {
		t.Errorf("Start on the default keystore after %s = %v, want a refusal", backend, err)
	}
	c = startWith(t, devcluster.Options{Dir: dir, Backend: backend})
	encryptDecrypt(t, c)
}

// TestDevSoftHSMBackend runs the cluster on a SoftHSM2 token: the root
// keys are created on the token, and a derive key made on them works at
// the edges.
func TestDevSoftHSMBackend(t *testing.T) {
	tok := softhsmtest.New(t)
	c := startWith(t, devcluster.Options{Dir: t.TempDir(), Backend: tok.URI("")})
	var roots []string
	for _, k := range c.RootKeys() {
		roots = append(roots, k.URI)
	}
	want := "[pkcs11:token=keybroker;object=root-prf pkcs11:token=keybroker;object=root-aes]"
	if got := fmt.Sprint(roots); got != want {
		t.Errorf("RootKeys() URIs = %s, want %s", got, want)
	}
	k := encryptDecrypt(t, c)
	if k.GetRootKey() != "pkcs11:token=keybroker;object=root-prf" {
		t.Errorf("demo key's root key = %q, want the token's root-prf", k.GetRootKey())
	}
}

// encryptDecrypt creates a derive key, encrypts at the first edge and
// decrypts at the last, and returns the key.
func encryptDecrypt(t *testing.T, c *devcluster.Cluster) *kbv1.KeyMetadata {
	t.Helper()
	admin := kbv1.NewKeyAdminClient(dial(t, c, c.Central.Addr(), identity.Admin, devcluster.AdminName))
	id := fmt.Sprintf("k-%d", rand.Uint32())
	k, err := admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitSynced(t.Context()); err != nil {
		t.Fatal(err)
	}
	first := kbv1.NewKeyBrokerClient(dial(t, c, c.Edges[0].Addr(), identity.Client, devcluster.AppName))
	last := kbv1.NewKeyBrokerClient(dial(t, c, c.Edges[len(c.Edges)-1].Addr(), identity.Client, devcluster.AppName))
	enc, err := first.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: id, Plaintext: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := last.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
	if err != nil || string(dec.GetPlaintext()) != "hello" {
		t.Errorf("Decrypt = %q, %v; want hello", dec.GetPlaintext(), err)
	}
	return k
}

// TestDevOwnKeystoreAsBackend: naming the directory's own keystore as the
// backend is the same root of trust as the default, not a move.
func TestDevOwnKeystoreAsBackend(t *testing.T) {
	dir := t.TempDir()
	c := startWith(t, devcluster.Options{Dir: dir, Edges: []devcluster.EdgeSpec{}})
	own := c.Backend()
	shutdown(t, c)
	c = startWith(t, devcluster.Options{Dir: dir, Edges: []devcluster.EdgeSpec{}, Backend: own})
	if got := c.Backend(); got != own {
		t.Errorf("Backend() = %q, want %q", got, own)
	}
}
