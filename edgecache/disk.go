package edgecache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
)

// The replica on disk (replica.db, bbolt): what the edge needs to serve
// after a restart without the central tier. Nothing in it is plaintext key
// material: keys carry metadata, public keys and material sealed to this
// edge; fetched material is stored sealed too.
var (
	bucketState    = []byte("state")
	bucketKeys     = []byte("keys")     // key id → EdgeKey
	bucketMaterial = []byte("material") // key id ‖ 0 ‖ u32 version → sealed material (fetched on a miss)
	// bucketStaging holds a snapshot arriving in chunks: its keys bucket
	// (nested, named like bucketKeys) fills chunk by chunk and takes
	// bucketKeys' place in the transaction that applies the last chunk.
	// Nothing serves from it; a stream lost mid-snapshot leaves it to be
	// emptied by the next snapshot or start.
	bucketStaging = []byte("staging")

	stateRevision = []byte("revision") // u64: the last revision applied
	stateLease    = []byte("lease")    // i64 unix nanoseconds: the lease's end
	statePolicy   = []byte("policy")   // EdgePolicy
	stateNodes    = []byte("nodes")    // ListNodesResponse
	stateSynced   = []byte("synced")   // i64 unix nanoseconds: when the last event arrived
)

type disk struct {
	db *bolt.DB
	// commits counts the write transactions committed for the Watch
	// stream (changes and staged snapshot chunks): one fdatasync each.
	commits atomic.Uint64
	// failApply, set only by tests before the edge runs, fails apply's
	// transaction after its writes when it returns an error: a commit
	// that does not happen.
	failApply func(*change) error
}

// update runs fn in a write transaction for the Watch stream and counts
// it once committed.
func (d *disk) update(fn func(*bolt.Tx) error) error {
	if err := d.db.Update(fn); err != nil {
		return err
	}
	d.commits.Add(1)
	return nil
}

func openDisk(dir string) (*disk, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("edgecache: data dir: %w", err)
	}
	db, err := openBolt(filepath.Join(dir, "replica.db"))
	if err != nil {
		return nil, err
	}
	// Without sealing.key the edge is about to make a new one
	// (loadSealingKey), and every blob the replica holds is sealed to the
	// key that is gone: start over as on a first start, so that Watch
	// sends a snapshot sealed to the new key instead of resuming.
	_, statErr := os.Stat(filepath.Join(dir, "sealing.key"))
	lostKey := errors.Is(statErr, os.ErrNotExist)
	err = db.Update(func(tx *bolt.Tx) error {
		// A snapshot staged when the edge stopped is of no use: Watch
		// starts it over.
		if err := tx.DeleteBucket(bucketStaging); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
		for _, b := range [][]byte{bucketState, bucketKeys, bucketMaterial} {
			if lostKey {
				if err := tx.DeleteBucket(b); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
					return err
				}
			}
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("edgecache: %w", err)
	}
	return &disk{db: db}, nil
}

// openBolt opens replica.db after checking every page of it. bbolt
// panics on some damage (a page that names another id, a freelist of an
// unknown type), and a panic inside bolt.Open would leave the file mapped
// and locked; a damaged replica must stop the edge with an error instead.
// So the file is first opened read-only, which reads no freelist, and
// checked (tx.Check recovers bbolt's panics into errors).
func openBolt(path string) (*bolt.DB, error) {
	if err := checkBolt(path); err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("edgecache: open %s: %w (is another edge using this data dir?)", path, err)
	}
	return db, nil
}

func checkBolt(path string) (err error) {
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		return nil // a first start; bolt.Open reports anything else
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("edgecache: %s is damaged (%v): move it aside and the edge resynchronises from the central tier", path, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("edgecache: open %s: %w (is another edge using this data dir?)", path, err)
	}
	defer db.Close()
	var damage error
	_ = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() { // drain: Check's goroutine uses tx until it closes the channel
			if damage == nil {
				damage = err
			}
		}
		return nil
	})
	if damage != nil {
		return fmt.Errorf("edgecache: %s is damaged (%w): move it aside and the edge resynchronises from the central tier", path, damage)
	}
	return nil
}

func (d *disk) close() error { return d.db.Close() }

// materialID names a version of one incarnation of a key: key id ‖ 0 ‖
// u32 version ‖ salt (none for keys made before salts, whose entries keep
// the names they had), so that material of a deleted key is never opened
// for a key created again under its id.
func materialID(k *managed.Key, v uint32) []byte { return appendMaterialID(nil, k, v) }

// saved is the replica as it was last written.
type saved struct {
	revision uint64
	lease    time.Time
	synced   time.Time
	policy   *kbv1.EdgePolicy
	nodes    *kbv1.ListNodesResponse
	keys     []*kbv1.EdgeKey
}

// load reads the replica's state, with every key record collected in
// saved.keys as stored (the tests read a replica this way).
func (d *disk) load() (*saved, error) {
	var s *saved
	err := d.db.View(func(tx *bolt.Tx) error {
		var err error
		if s, err = loadState(tx); err != nil {
			return err
		}
		return tx.Bucket(bucketKeys).ForEach(func(k, v []byte) error {
			ek := &kbv1.EdgeKey{}
			if err := proto.Unmarshal(v, ek); err != nil {
				return fmt.Errorf("stored key %q: %w", k, err)
			}
			s.keys = append(s.keys, ek)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("edgecache: replica.db: %w", err)
	}
	return s, nil
}

// restoreKeys reads the replica's state and what parse makes of each key
// record, in the order stored. The records are decoded and parsed on
// every core, a batch at a time, and dropped once parsed: a replica of a
// million keys is never held as protos at once, and its restart is not
// bound by one core (decoding a million records cost 20.7 s of CPU).
func restoreKeys[T any](d *disk, parse func(*kbv1.EdgeKey) (T, error)) (*saved, []T, error) {
	var (
		s   *saved
		out []T
	)
	err := d.db.View(func(tx *bolt.Tx) error {
		var err error
		if s, err = loadState(tx); err != nil {
			return err
		}
		// A read transaction's keys and values stay valid, and unchanged,
		// until it ends: the workers read them in place.
		out, err = parallelEach(tx.Bucket(bucketKeys), runtime.GOMAXPROCS(0), func(k, v []byte) (T, error) {
			ek := &kbv1.EdgeKey{}
			if err := proto.Unmarshal(v, ek); err != nil {
				var zero T
				return zero, fmt.Errorf("stored key %q: %w", k, err)
			}
			return parse(ek)
		})
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("edgecache: replica.db: %w", err)
	}
	return s, out, nil
}

// restoreBatch is how many records a worker of parallelEach takes at once.
const restoreBatch = 512

// parallelEach applies parse to every record of b on workers goroutines
// and returns the results in the bucket's order, or the first error in
// that order (the rest of the bucket is then not read).
func parallelEach[T any](b *bolt.Bucket, workers int, parse func(k, v []byte) (T, error)) ([]T, error) {
	type batch struct {
		k, v [][]byte
		out  []T
		err  error
		done chan struct{}
	}
	jobs := make(chan *batch, workers)
	inOrder := make(chan *batch, 2*workers)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for j := range jobs {
				j.out = make([]T, 0, len(j.k))
				for i := range j.k {
					t, err := parse(j.k[i], j.v[i])
					if err != nil {
						j.err = err
						break
					}
					j.out = append(j.out, t)
				}
				close(j.done)
			}
		})
	}
	errQuit := errors.New("stopped")
	var readErr error
	go func() {
		defer close(inOrder)
		defer close(jobs)
		j := &batch{done: make(chan struct{})}
		send := func() bool {
			select {
			case inOrder <- j:
			case <-quit:
				return false
			}
			jobs <- j // the workers take every job until jobs is closed
			j = &batch{done: make(chan struct{})}
			return true
		}
		readErr = b.ForEach(func(k, v []byte) error {
			j.k, j.v = append(j.k, k), append(j.v, v)
			if len(j.k) == restoreBatch && !send() {
				return errQuit
			}
			return nil
		})
		if readErr == nil && len(j.k) > 0 {
			send()
		}
	}()
	var (
		out []T
		err error
	)
	for j := range inOrder {
		if err != nil {
			continue // drained: the reader stops at its next batch
		}
		<-j.done
		out = append(out, j.out...)
		if j.err != nil {
			err = j.err
			close(quit)
		}
	}
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if readErr != nil {
		return nil, readErr
	}
	return out, nil
}

// loadState reads the replica's state bucket.
func loadState(tx *bolt.Tx) (*saved, error) {
	s := &saved{}
	st := tx.Bucket(bucketState)
	if v := st.Get(stateRevision); len(v) == 8 {
		s.revision = binary.BigEndian.Uint64(v)
	}
	if v := st.Get(stateLease); len(v) == 8 {
		s.lease = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
	}
	if v := st.Get(stateSynced); len(v) == 8 {
		s.synced = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
	}
	if v := st.Get(statePolicy); v != nil {
		s.policy = &kbv1.EdgePolicy{}
		if err := proto.Unmarshal(v, s.policy); err != nil {
			return nil, fmt.Errorf("stored policy: %w", err)
		}
	}
	if v := st.Get(stateNodes); v != nil {
		s.nodes = &kbv1.ListNodesResponse{}
		if err := proto.Unmarshal(v, s.nodes); err != nil {
			return nil, fmt.Errorf("stored nodes: %w", err)
		}
	}
	return s, nil
}

// change is one transaction on the replica.
type change struct {
	revision uint64 // 0: unchanged
	lease    time.Time
	synced   time.Time // when the event arrived (zero: unchanged)
	policy   *kbv1.EdgePolicy
	nodes    *kbv1.ListNodesResponse
	reset    bool // drop every key (a snapshot follows in keys)
	// staged (with reset): the keys bucket becomes the staging area's,
	// to which keys are added.
	staged  bool
	keys    []*kbv1.EdgeKey
	deleted []string
	// dropMaterial removes fetched material: every version of a key
	// (version 0) or the versions below a minimum.
	dropMaterial map[string]uint32
}

func (d *disk) apply(c *change) error {
	return d.update(func(tx *bolt.Tx) error {
		st, kb, mb := tx.Bucket(bucketState), tx.Bucket(bucketKeys), tx.Bucket(bucketMaterial)
		if c.revision != 0 {
			if err := st.Put(stateRevision, binary.BigEndian.AppendUint64(nil, c.revision)); err != nil {
				return err
			}
		}
		if !c.lease.IsZero() {
			if err := st.Put(stateLease, binary.BigEndian.AppendUint64(nil, uint64(c.lease.UnixNano()))); err != nil {
				return err
			}
		}
		if !c.synced.IsZero() {
			if err := st.Put(stateSynced, binary.BigEndian.AppendUint64(nil, uint64(c.synced.UnixNano()))); err != nil {
				return err
			}
		}
		if err := putProto(st, statePolicy, c.policy); err != nil {
			return err
		}
		if err := putProto(st, stateNodes, c.nodes); err != nil {
			return err
		}
		if c.reset {
			if err := tx.DeleteBucket(bucketKeys); err != nil {
				return err
			}
			var err error
			if c.staged {
				sb := tx.Bucket(bucketStaging)
				if sb == nil || sb.Bucket(bucketKeys) == nil {
					return errors.New("no snapshot staged")
				}
				if err := tx.MoveBucket(bucketKeys, sb, nil); err != nil {
					return err
				}
				if err := tx.DeleteBucket(bucketStaging); err != nil {
					return err
				}
				kb = tx.Bucket(bucketKeys)
			} else if kb, err = tx.CreateBucket(bucketKeys); err != nil {
				return err
			}
		}
		for _, ek := range c.keys {
			b, err := proto.Marshal(ek)
			if err != nil {
				return err
			}
			if err := kb.Put([]byte(ek.GetMetadata().GetKeyId()), b); err != nil {
				return err
			}
		}
		for _, id := range c.deleted {
			if err := kb.Delete([]byte(id)); err != nil {
				return err
			}
		}
		for id, below := range c.dropMaterial {
			if err := dropMaterial(mb, id, below); err != nil {
				return err
			}
		}
		if d.failApply != nil {
			return d.failApply(c)
		}
		return nil
	})
}

// stageBegin empties the staging area for a snapshot that arrives in
// chunks.
func (d *disk) stageBegin() error {
	return d.update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketStaging); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
		sb, err := tx.CreateBucket(bucketStaging)
		if err != nil {
			return err
		}
		_, err = sb.CreateBucket(bucketKeys)
		return err
	})
}

// stage adds one chunk's keys to the staging area, in one transaction.
func (d *disk) stage(keys []*kbv1.EdgeKey) error {
	return d.update(func(tx *bolt.Tx) error {
		sb := tx.Bucket(bucketStaging)
		if sb == nil || sb.Bucket(bucketKeys) == nil {
			return errors.New("no snapshot staged")
		}
		kb := sb.Bucket(bucketKeys)
		for _, ek := range keys {
			b, err := proto.Marshal(ek)
			if err != nil {
				return err
			}
			if err := kb.Put([]byte(ek.GetMetadata().GetKeyId()), b); err != nil {
				return err
			}
		}
		return nil
	})
}

func putProto[M proto.Message](b *bolt.Bucket, key []byte, m M) error {
	if !m.ProtoReflect().IsValid() {
		return nil // nil: unchanged
	}
	raw, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// dropMaterial deletes a key's fetched material: every version when below
// is 0, else the versions below it.
func dropMaterial(mb *bolt.Bucket, id string, below uint32) error {
	prefix := append([]byte(id), 0)
	cur := mb.Cursor()
	var doomed [][]byte
	for k, _ := cur.Seek(prefix); k != nil && len(k) >= len(prefix)+4 && string(k[:len(prefix)]) == string(prefix); k, _ = cur.Next() {
		if below == 0 || binary.BigEndian.Uint32(k[len(prefix):len(prefix)+4]) < below {
			doomed = append(doomed, append([]byte(nil), k...))
		}
	}
	for _, k := range doomed {
		if err := mb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (d *disk) putMaterial(k *managed.Key, v uint32, blob []byte) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMaterial).Put(materialID(k, v), blob)
	})
}

// getSealed is version v's sealed material in k's record in the keys
// bucket, if the record is of k's incarnation and carries it.
func (d *disk) getSealed(k *managed.Key, v uint32) []byte {
	var out []byte
	_ = d.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketKeys).Get([]byte(k.ID))
		if raw == nil {
			return nil
		}
		ek := &kbv1.EdgeKey{}
		if err := proto.Unmarshal(raw, ek); err != nil || string(ek.GetSalt()) != k.Incarnation() {
			return nil
		}
		for _, ev := range ek.GetVersions() {
			if ev.GetVersion() == v && len(ev.GetSealedMaterial()) > 0 {
				out = ev.GetSealedMaterial() // unmarshalled: a copy, not bbolt's page
			}
		}
		return nil
	})
	return out
}

func (d *disk) getMaterial(k *managed.Key, v uint32) []byte {
	var out []byte
	_ = d.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMaterial).Get(materialID(k, v)); b != nil {
			out = append([]byte(nil), b...)
		}
		return nil
	})
	return out
}

// loadSealingKey reads the edge's HPKE private key (sealing.key, 0600),
// creating it on first start. Material on disk is sealed to it, so losing
// it loses nothing but the cache: the edge registers its new public key and
// receives everything again.
func loadSealingKey(dir string) (*sealed.PrivateKey, error) {
	path := filepath.Join(dir, "sealing.key")
	raw, err := os.ReadFile(path)
	if err == nil {
		defer clear(raw)
		k, perr := sealed.ParsePrivateKey(raw)
		if perr != nil {
			return nil, fmt.Errorf("edgecache: %s: %w", path, perr)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("edgecache: %w", err)
	}
	k, err := sealed.GenerateKey()
	if err != nil {
		return nil, err
	}
	enc, err := k.Marshal()
	if err != nil {
		return nil, err
	}
	defer enc.Destroy()
	// A fresh temporary file (O_EXCL, 0600, an unpredictable name),
	// synced and renamed into place; replica.db's lock, held since
	// openDisk, keeps any other opener out.
	if err := atomicfile.Write(path, enc.Reveal(), 0o600); err != nil {
		return nil, fmt.Errorf("edgecache: %w", err)
	}
	return k, nil
}

// wipe empties the replica but for the policy: keys, their sealed
// material, the inventory, the revision and the lease.
func (d *disk) wipe() error {
	return d.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketStaging); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
		for _, b := range [][]byte{bucketKeys, bucketMaterial} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		st := tx.Bucket(bucketState)
		for _, k := range [][]byte{stateRevision, stateLease, stateNodes} {
			if err := st.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}
