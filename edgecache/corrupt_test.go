package edgecache

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// openNoPanic is Open with a panic turned into an error.
func openNoPanic(cfg Config) (ec *Cache, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("Open panicked: %v", r)
		}
	}()
	return Open(cfg)
}

// putRaw writes one raw value into an (unopened) replica.db.
func putRaw(t *testing.T, dir string, bucket, key, value []byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "replica.db"), 0o600, &bolt.Options{Timeout: time.Second})
	must(t, "opening replica.db", err)
	defer db.Close()
	must(t, "writing replica.db", db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(key, value) }))
}

// unlocked fails if replica.db in dir is still locked (a refused Open
// must not keep it).
func unlocked(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Stat(filepath.Join(dir, "replica.db"))
	if err != nil || !fi.Mode().IsRegular() {
		return
	}
	db, err := bolt.Open(filepath.Join(dir, "replica.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 100 * time.Millisecond})
	if err == nil {
		db.Close()
	} else if errors.Is(err, bolterrors.ErrTimeout) {
		t.Errorf("replica.db is still locked after the refused Open")
	}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	must(t, "proto.Marshal", err)
	return b
}

// TestOpenCorruptDataDir damages a data dir in every way we could think
// of: Open refuses with an error naming what is wrong, never panics, and
// leaves the replica unlocked.
func TestOpenCorruptDataDir(t *testing.T) {
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	for _, tc := range []struct {
		name    string
		corrupt func(t *testing.T, dir string)
		want    string
	}{
		{"replica.db is random bytes", func(t *testing.T, dir string) {
			must(t, "write", os.WriteFile(filepath.Join(dir, "replica.db"), random(64<<10), 0o600))
		}, "replica.db"},
		{"replica.db is truncated", func(t *testing.T, dir string) {
			must(t, "truncate", os.Truncate(filepath.Join(dir, "replica.db"), 100))
		}, "replica.db"},
		{"replica.db meta pages zeroed", func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, "replica.db"), os.O_WRONLY, 0)
			must(t, "open", err)
			defer f.Close()
			_, err = f.WriteAt(make([]byte, 2*4096), 0)
			must(t, "zero", err)
		}, "replica.db"},
		{"replica.db is a directory", func(t *testing.T, dir string) {
			must(t, "remove", os.Remove(filepath.Join(dir, "replica.db")))
			must(t, "mkdir", os.Mkdir(filepath.Join(dir, "replica.db"), 0o700))
		}, "replica.db"},
		{"a key record is not a proto", func(t *testing.T, dir string) {
			putRaw(t, dir, bucketKeys, []byte("k"), []byte{0xff, 0xff, 0xff})
		}, "stored key"},
		{"a key record is not a valid key", func(t *testing.T, dir string) {
			putRaw(t, dir, bucketKeys, []byte("k"), marshal(t, &kbv1.EdgeKey{Metadata: &kbv1.KeyMetadata{KeyId: "k", Type: 99}}))
		}, "stored key"},
		{"the policy is not a proto", func(t *testing.T, dir string) {
			putRaw(t, dir, bucketState, statePolicy, []byte{0xff, 0xff, 0xff})
		}, "stored policy"},
		{"the policy does not parse", func(t *testing.T, dir string) {
			putRaw(t, dir, bucketState, statePolicy, marshal(t, &kbv1.EdgePolicy{Files: []*kbv1.PolicyFile{{Name: "p.cedar", Content: []byte("permit (principal is")}}}))
		}, "stored policy"},
		{"the inventory is not a proto", func(t *testing.T, dir string) {
			putRaw(t, dir, bucketState, stateNodes, []byte{0xff, 0xff, 0xff})
		}, "stored nodes"},
		{"sealing.key is random bytes", func(t *testing.T, dir string) {
			must(t, "write", os.WriteFile(filepath.Join(dir, "sealing.key"), random(64), 0o600))
		}, "sealing.key"},
		{"sealing.key is empty", func(t *testing.T, dir string) {
			must(t, "write", os.WriteFile(filepath.Join(dir, "sealing.key"), nil, 0o600))
		}, "sealing.key"},
		{"sealing.key is truncated", func(t *testing.T, dir string) {
			raw, err := os.ReadFile(filepath.Join(dir, "sealing.key"))
			must(t, "read", err)
			must(t, "write", os.WriteFile(filepath.Join(dir, "sealing.key"), raw[:len(raw)/2], 0o600))
		}, "sealing.key"},
		{"sealing.key has a flipped byte", func(t *testing.T, dir string) {
			raw, err := os.ReadFile(filepath.Join(dir, "sealing.key"))
			must(t, "read", err)
			raw[0] ^= 0xff
			must(t, "write", os.WriteFile(filepath.Join(dir, "sealing.key"), raw, 0o600))
		}, "sealing.key"},
		{"sealing.key is a directory", func(t *testing.T, dir string) {
			must(t, "remove", os.Remove(filepath.Join(dir, "sealing.key")))
			must(t, "mkdir", os.Mkdir(filepath.Join(dir, "sealing.key"), 0o700))
		}, "sealing.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// A data dir as a first start leaves it.
			ec, err := Open(edgeConfig(t, nil, "edge-eu-1", dir))
			must(t, "first Open", err)
			must(t, "Close", ec.Close())

			tc.corrupt(t, dir)
			ec, err = openNoPanic(edgeConfig(t, nil, "edge-eu-1", dir))
			if err == nil {
				ec.Close()
				t.Fatalf("Open of a data dir where %s succeeded", tc.name)
			}
			if strings.Contains(err.Error(), "panicked") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open where %s = %v, want an error naming %q", tc.name, err, tc.want)
			}
			unlocked(t, dir)
		})
	}
}

// TestOpenSurvivesInterruptedKeyWrite starts an edge whose previous first
// start died while writing its sealing key, leaving sealing.key.tmp.
func TestOpenSurvivesInterruptedKeyWrite(t *testing.T) {
	dir := t.TempDir()
	must(t, "mkdir", os.MkdirAll(dir, 0o700))
	must(t, "leftover", os.WriteFile(filepath.Join(dir, "sealing.key.tmp"), []byte("half a key"), 0o600))
	ec, err := Open(edgeConfig(t, nil, "edge-eu-1", dir))
	if err != nil {
		t.Fatalf("Open with a leftover sealing.key.tmp = %v", err)
	}
	defer ec.Close()
	raw, err := os.ReadFile(filepath.Join(dir, "sealing.key"))
	if err != nil || bytes.Contains(raw, []byte("half a key")) {
		t.Errorf("sealing.key after the restart: %v", err)
	}
}

// TestOpenRequiresConfig checks the required fields.
func TestOpenRequiresConfig(t *testing.T) {
	good := edgeConfig(t, nil, "edge-eu-1", t.TempDir())
	for name, mutate := range map[string]func(*Config){
		"node id":      func(c *Config) { c.NodeID = "" },
		"trust domain": func(c *Config) { c.TrustDomain = "" },
		"data dir":     func(c *Config) { c.DataDir = "" },
		"central":      func(c *Config) { c.Central = nil },
		"address":      func(c *Config) { c.Address = "" },
	} {
		cfg := good
		mutate(&cfg)
		if ec, err := Open(cfg); err == nil {
			ec.Close()
			t.Errorf("Open without %s succeeded", name)
		}
	}
}

// TestOpenDamagedPages overwrites each page of a real replica in turn with
// random bytes: Open either succeeds (the page was free) or refuses with an
// error naming replica.db — bbolt's panics on damaged pages must not
// escape.
func TestOpenDamagedPages(t *testing.T) {
	c := startCentral(t)
	for i := range 12 {
		c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: fmt.Sprintf("key-%02d", i), Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"})
	}
	src := t.TempDir()
	cfg := edgeConfig(t, c, "edge-eu-1", src)
	cfg.Prefetch = true // sealed material makes the replica span many pages
	ec := open(t, cfg)
	r := startRun(t, ec)
	synced(t, c, ec)
	r.stop(t)
	must(t, "Close", ec.Close())
	db, err := os.ReadFile(filepath.Join(src, "replica.db"))
	must(t, "reading replica.db", err)
	key, err := os.ReadFile(filepath.Join(src, "sealing.key"))
	must(t, "reading sealing.key", err)

	const pageSize = 4096
	refused := 0
	for page := 2; page*pageSize < len(db); page++ {
		dir := t.TempDir()
		damaged := bytes.Clone(db)
		rand.Read(damaged[page*pageSize : (page+1)*pageSize])
		must(t, "write", os.WriteFile(filepath.Join(dir, "replica.db"), damaged, 0o600))
		must(t, "write", os.WriteFile(filepath.Join(dir, "sealing.key"), key, 0o600))
		ec, err := openNoPanic(edgeConfig(t, nil, "edge-eu-1", dir))
		switch {
		case err == nil:
			ec.Close()
		case strings.Contains(err.Error(), "panicked") || !strings.Contains(err.Error(), "replica.db"):
			t.Errorf("Open with page %d damaged = %v, want an error naming replica.db", page, err)
		default:
			refused++
			unlocked(t, dir)
		}
	}
	if refused == 0 {
		t.Errorf("Open refused none of the %d damaged replicas", len(db)/pageSize-2)
	}
	t.Logf("%d pages, Open refused %d damaged replicas", len(db)/pageSize, refused)
}
