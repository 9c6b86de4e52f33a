package edgecache

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/sealed"
)

// diskKeys are the keys the disk tests use: every mode the edge serves
// locally, and one it forwards.
var diskKeys = []*kbv1.CreateKeyRequest{
	{KeyId: "shared", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"},
	{KeyId: "wrapped", Type: aes256, Mode: wrap, Labels: appLabels, Placement: "true"},
	{KeyId: "tags", Type: hmac256, Mode: derive, Labels: appLabels, Placement: "true"},
	{KeyId: "signer", Type: ecdsaP256, Mode: wrap, Labels: appLabels, Placement: "true"},
	{KeyId: "hsm", Type: aes256, Mode: backend, RootKey: "softkms:hsm-aes", Labels: appLabels},
}

// TestRestartFromDisk closes an edge and opens its data dir again with no
// central tier to reach: the replica and the sealed material come back from
// disk and serve, and nothing on disk is plaintext material.
func TestRestartFromDisk(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t, diskKeys...)
	ectx := map[string]string{"tenant": "7"}
	var cts [][]byte
	for _, key := range []string{"shared", "wrapped"} {
		enc, err := c.kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: key, Plaintext: []byte("at central with " + key), EncryptionContext: ectx})
		must(t, "Encrypt at central", err)
		cts = append(cts, enc.GetCiphertext())
	}
	cmac, err := c.kb.GenerateMac(t.Context(), &kbv1.GenerateMacRequest{KeyId: "tags", Message: []byte("m")})
	must(t, "GenerateMac at central", err)

	for _, prefetch := range []bool{true, false} {
		name := map[bool]string{true: "prefetch", false: "fetch on use"}[prefetch]
		t.Run(name, func(t *testing.T) {
			ctx := asApp(t.Context())
			id := map[bool]string{true: "edge-eu-1", false: "edge-eu-2"}[prefetch]
			dir := t.TempDir()
			cfg := edgeConfig(t, c, id, dir)
			cfg.Prefetch = prefetch
			ec := open(t, cfg)
			r := startRun(t, ec)
			synced(t, c, ec)
			node := opsByID(ec)
			// Use every key so a fetching edge holds all their material.
			for _, ct := range cts {
				_, _, _, err := node.Decrypt(ctx, ct, ectx, "")
				must(t, "Decrypt before the restart", err)
			}
			_, _, err := node.GenerateMac(ctx, "tags", []byte("m"))
			must(t, "GenerateMac before the restart", err)
			_, _, err = node.Sign(ctx, "signer", []byte("m"), false)
			must(t, "Sign before the restart", err)
			dk, err := node.GenerateDataKey(ctx, "shared", ectx, true)
			must(t, "GenerateDataKey before the restart", err)
			dekPlain, dekCT := bytes.Clone(dk.Plaintext.Reveal()), dk.Encrypted
			dk.Plaintext.Destroy()
			before, _, err := node.ListKeys(ctx, nil, 0, "", nil)
			must(t, "ListKeys before the restart", err)
			// Read what was persisted once Run has stopped: a heartbeat
			// in between would extend the lease on disk.
			r.stop(t)
			rev, lease := ec.Revision(), ec.LeaseExpires()
			must(t, "Close", ec.Close())

			secrets := materialOnDisk(t, dir, id)
			if len(secrets) != 4 {
				t.Fatalf("sealed material on disk opens to %d secrets, want 4 (shared, wrapped, tags, signer)", len(secrets))
			}
			scanForSecrets(t, dir, append(secrets, dekPlain))

			// Open again, unable to reach the central tier.
			cfg = edgeConfig(t, nil, id, dir)
			cfg.Prefetch = prefetch
			ec2 := open(t, cfg)
			if ec2.Revision() != rev || !ec2.LeaseExpires().Equal(lease) {
				t.Errorf("restored revision %d, lease %v; want %d, %v", ec2.Revision(), ec2.LeaseExpires(), rev, lease)
			}
			node = opsByID(ec2)
			after, _, err := node.ListKeys(ctx, nil, 0, "", nil)
			must(t, "ListKeys after the restart", err)
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("keys after the restart (-before +after):\n%s", diff)
			}
			for i, ct := range cts {
				pt, _, _, err := node.Decrypt(ctx, ct, ectx, "")
				if want := "at central with " + []string{"shared", "wrapped"}[i]; err != nil || string(pt) != want {
					t.Errorf("Decrypt after the restart = %q, %v; want %q", pt, err, want)
				}
			}
			if pt, _, _, err := node.Decrypt(ctx, dekCT, ectx, ""); err != nil || !bytes.Equal(pt, dekPlain) {
				t.Errorf("Decrypt of the data key after the restart: %v (equal %v)", err, bytes.Equal(pt, dekPlain))
			}
			if mac, _, err := node.GenerateMac(ctx, "tags", []byte("m")); err != nil || !bytes.Equal(mac, cmac.GetMac()) {
				t.Errorf("GenerateMac after the restart = %x, %v; want central's %x", mac, err, cmac.GetMac())
			}
			sig, _, err := node.Sign(ctx, "signer", []byte("m"), false)
			must(t, "Sign after the restart", err)
			der, _, _, err := node.PublicKey(ctx, "signer", 0)
			must(t, "PublicKey after the restart", err)
			pk, err := x509.ParsePKIXPublicKey(der)
			must(t, "parsing the public key", err)
			digest := sha256.Sum256([]byte("m"))
			if ecPub, ok := pk.(*ecdsa.PublicKey); !ok || !ecdsa.VerifyASN1(ecPub, digest[:], sig) {
				t.Error("the restarted edge's signature does not verify")
			}
			// What the restarted edge encrypts, central decrypts.
			ct, _, err := node.Encrypt(ctx, "wrapped", []byte("after"), ectx)
			must(t, "Encrypt after the restart", err)
			dec, err := c.kb.Decrypt(t.Context(), &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: ectx})
			if err != nil || string(dec.GetPlaintext()) != "after" {
				t.Errorf("central Decrypt of the restarted edge's ciphertext = %q, %v", dec.GetPlaintext(), err)
			}
			if s := ec2.Stats(); s.Fetches != 0 || s.Forwards != 0 {
				t.Errorf("the restarted edge fetched %d and forwarded %d times, want 0", s.Fetches, s.Forwards)
			}
			// What must be forwarded fails fast, naming the cause.
			// (Over gRPC: the edge forwards only calls a client signed.)
			_, err = serveEdge(t, c, ec2).kb(t, identity.Client, "app").Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "cannot reach the central tier") {
				t.Errorf("Encrypt(hsm) with central unreachable = %v, want Unavailable: cannot reach the central tier", err)
			}
		})
	}
}

// TestLostSealingKey deletes an edge's sealing key between runs: the edge
// makes a new one, registers it, and must serve again once it follows the
// central tier — the material it kept was sealed to the old key.
func TestLostSealingKey(t *testing.T) {
	c := startCentral(t)
	c.createKeys(t, diskKeys...)
	enc, err := c.kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("x")})
	must(t, "Encrypt at central", err)
	for _, prefetch := range []bool{true, false} {
		name := map[bool]string{true: "prefetch", false: "fetch on use"}[prefetch]
		t.Run(name, func(t *testing.T) {
			ctx := asApp(t.Context())
			id := map[bool]string{true: "edge-eu-1", false: "edge-eu-2"}[prefetch]
			dir := t.TempDir()
			cfg := edgeConfig(t, c, id, dir)
			cfg.Prefetch = prefetch
			ec := open(t, cfg)
			r := startRun(t, ec)
			synced(t, c, ec)
			_, _, _, err := opsByID(ec).Decrypt(ctx, enc.GetCiphertext(), nil, "")
			must(t, "Decrypt before losing the key", err)
			r.stop(t)
			must(t, "Close", ec.Close())
			must(t, "removing sealing.key", os.Remove(filepath.Join(dir, "sealing.key")))

			cfg = edgeConfig(t, c, id, dir)
			cfg.Prefetch = prefetch
			ec = open(t, cfg)
			startRun(t, ec)
			synced(t, c, ec)
			if _, _, _, err := opsByID(ec).Decrypt(ctx, enc.GetCiphertext(), nil, ""); err != nil {
				t.Errorf("Decrypt after the sealing key was replaced = %v", err)
			}
			if _, _, err := opsByID(ec).GenerateMac(ctx, "tags", []byte("m")); err != nil {
				t.Errorf("GenerateMac after the sealing key was replaced = %v", err)
			}
		})
	}
}

// materialOnDisk opens every sealed blob in the replica (Watch's and
// fetched) with the edge's own sealing key: what must never be on its disk
// in plaintext.
func materialOnDisk(t *testing.T, dir, edgeID string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "sealing.key"))
	must(t, "reading sealing.key", err)
	sk, err := sealed.ParsePrivateKey(raw)
	must(t, "parsing sealing.key", err)
	db, err := bolt.Open(filepath.Join(dir, "replica.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	must(t, "opening replica.db", err)
	defer db.Close()
	seen := map[string][]byte{}
	add := func(keyID string, v uint32, blob []byte) error {
		m, err := sealed.Open(sk, blob, edgeID, keyID, v)
		if err != nil {
			return err
		}
		seen[keyID+"\x00"+strconv.FormatUint(uint64(v), 10)] = bytes.Clone(m.Reveal())
		m.Destroy()
		return nil
	}
	err = db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketKeys).ForEach(func(_, v []byte) error {
			ek := &kbv1.EdgeKey{}
			if err := proto.Unmarshal(v, ek); err != nil {
				return err
			}
			for _, ver := range ek.GetVersions() {
				if len(ver.GetSealedMaterial()) > 0 {
					if err := add(ek.GetMetadata().GetKeyId(), ver.GetVersion(), ver.GetSealedMaterial()); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketMaterial).ForEach(func(k, v []byte) error {
			i := bytes.IndexByte(k, 0)
			return add(string(k[:i]), uint32(k[i+1])<<24|uint32(k[i+2])<<16|uint32(k[i+3])<<8|uint32(k[i+4]), v)
		})
	})
	must(t, "reading replica.db", err)
	var out [][]byte
	for _, m := range seen {
		if len(m) != 32 {
			t.Errorf("opened material is %d bytes, want 32", len(m))
		}
		out = append(out, m)
	}
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

// TestParallelEach reads a bucket on several workers: every record once,
// in the bucket's order, and on a record that does not parse, the first
// such error in that order — whichever worker met it first.
func TestParallelEach(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "each.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const n = 5*restoreBatch + 17
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("b"))
		if err != nil {
			return err
		}
		for i := range n {
			if err := b.Put([]byte(strconv.Itoa(1_000_000+i)), []byte(strconv.Itoa(i))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	parse := func(bad ...int) func(k, v []byte) (int, error) {
		return func(k, v []byte) (int, error) {
			i, err := strconv.Atoi(string(v))
			if err != nil {
				return 0, err
			}
			for _, b := range bad {
				if i == b {
					return 0, errors.New("bad " + string(v))
				}
			}
			return i, nil
		}
	}
	for _, workers := range []int{1, 2, 7} {
		if err := db.View(func(tx *bolt.Tx) error {
			got, err := parallelEach(tx.Bucket([]byte("b")), workers, parse())
			if err != nil {
				return err
			}
			if len(got) != n {
				t.Fatalf("%d workers: %d records, want %d", workers, len(got), n)
			}
			for i, v := range got {
				if v != i {
					t.Fatalf("%d workers: record %d is %d: out of order", workers, i, v)
				}
			}
			// Bad records in three batches, on different workers: the first
			// in the bucket's order is the one reported.
			_, err = parallelEach(tx.Bucket([]byte("b")), workers, parse(3*restoreBatch+5, restoreBatch+1, n-1))
			if err == nil || err.Error() != "bad "+strconv.Itoa(restoreBatch+1) {
				t.Fatalf("%d workers: error %v, want the first bad record's", workers, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}
