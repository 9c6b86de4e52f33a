package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta   = []byte("meta")
	bucketEvents = []byte("events")
	keyRevision  = []byte("revision")
	keyOldest    = []byte("oldest") // oldest revision whose event is kept
)

func bucketOf(kind Kind) []byte { return []byte("kind/" + string(kind)) }

// DefaultHistory is how many events the bbolt store keeps for watchers.
const DefaultHistory = 100_000

// initialMmap is the address space bbolt maps at first (not memory: pages
// are read in on use): 4 GiB on 64-bit platforms, 1 GiB on 32-bit ones. A
// commit that grows the file past the mapping remaps it, and waits for
// every read transaction open meanwhile — Scan holds one for as long as
// its caller takes over the pages, and the committer holds the store's
// lock while it waits — so the mapping starts large enough for a million
// keys and their history, and a remap behind a slow Scan is rare.
const initialMmap = 1 << 30 << (2 * (^uint(0) >> 63))

// Bolt is the bbolt implementation of Store.
type Bolt struct {
	db      *bolt.DB
	history uint64

	mu       sync.Mutex
	rev      uint64
	watchers map[*Watcher]struct{}
	closed   bool
}

var _ Store = (*Bolt)(nil)

// Open opens (or creates) the store at path. history bounds the retained
// events (0 means DefaultHistory).
func Open(path string, history uint64) (*Bolt, error) {
	if history == 0 {
		history = DefaultHistory
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, InitialMmapSize: initialMmap})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Bolt{db: db, history: history, watchers: map[*Watcher]struct{}{}}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketEvents} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		s.rev = getU64(tx.Bucket(bucketMeta), keyRevision)
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	return s, nil
}

func getU64(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// stored value: 8-byte revision then the value.
func decodeObject(kind Kind, id string, raw []byte) (Object, error) {
	if len(raw) < 8 {
		return Object{}, fmt.Errorf("store: %s/%s: corrupt record", kind, id)
	}
	return Object{Kind: kind, ID: id, Revision: binary.BigEndian.Uint64(raw), Value: append([]byte(nil), raw[8:]...)}, nil
}

// Revision implements Store.
func (s *Bolt) Revision() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// Get implements Store.
func (s *Bolt) Get(ctx context.Context, kind Kind, id string) (Object, error) {
	if err := ctx.Err(); err != nil {
		return Object{}, err
	}
	var o Object
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOf(kind))
		if b == nil {
			return ErrNotFound
		}
		raw := b.Get([]byte(id))
		if raw == nil {
			return ErrNotFound
		}
		var err error
		o, err = decodeObject(kind, id, raw)
		return err
	})
	return o, err
}

// List implements Store.
func (s *Bolt) List(ctx context.Context, kind Kind) ([]Object, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	var out []Object
	var rev uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		rev = getU64(tx.Bucket(bucketMeta), keyRevision)
		b := tx.Bucket(bucketOf(kind))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			o, err := decodeObject(kind, string(k), v)
			if err != nil {
				return err
			}
			out = append(out, o)
			return nil
		})
	})
	return out, rev, err
}

// ListPage implements Store: one read transaction, a cursor seek.
func (s *Bolt) ListPage(ctx context.Context, kind Kind, after string, limit int) (Page, error) {
	if err := checkPage(kind, limit); err != nil {
		return Page{}, err
	}
	if err := ctx.Err(); err != nil {
		return Page{}, err
	}
	var p Page
	err := s.db.View(func(tx *bolt.Tx) error {
		p.Revision = getU64(tx.Bucket(bucketMeta), keyRevision)
		b := tx.Bucket(bucketOf(kind))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		k, v := seekAfter(c, after)
		var err error
		p, _, _, err = readPage(c, k, v, kind, limit, p.Revision)
		return err
	})
	return p, err
}

// seekAfter positions c on the first key after after.
func seekAfter(c *bolt.Cursor, after string) (k, v []byte) {
	if after == "" {
		return c.First()
	}
	k, v = c.Seek([]byte(after))
	if k != nil && string(k) == after {
		k, v = c.Next()
	}
	return k, v
}

// readPage reads up to limit objects from c, which is on k, v, and
// leaves c on the first object after the page, which it returns.
func readPage(c *bolt.Cursor, k, v []byte, kind Kind, limit int, rev uint64) (Page, []byte, []byte, error) {
	p := Page{Revision: rev}
	for ; k != nil && len(p.Objects) < limit; k, v = c.Next() {
		o, err := decodeObject(kind, string(k), v)
		if err != nil {
			return Page{}, nil, nil, err
		}
		p.Objects = append(p.Objects, o)
	}
	p.More = k != nil
	return p, k, v, nil
}

// Scan implements Store. One read transaction spans the scan: bbolt shows
// it the objects as they were when it began while commits go on, so every
// page is at the scan's first revision. A commit that must grow the file
// past the mapping waits for the scan to end (see initialMmap).
func (s *Bolt) Scan(ctx context.Context, kind Kind, limit int, fn func(Page) error) error {
	if err := checkPage(kind, limit); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		rev := getU64(tx.Bucket(bucketMeta), keyRevision)
		b := tx.Bucket(bucketOf(kind))
		if b == nil {
			return fn(Page{Revision: rev})
		}
		c := b.Cursor()
		k, v := c.First()
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			p, nk, nv, err := readPage(c, k, v, kind, limit, rev)
			if err != nil {
				return err
			}
			if err := fn(p); err != nil {
				return err
			}
			if !p.More {
				return nil
			}
			k, v = nk, nv
		}
	})
}

// Put implements Store.
func (s *Bolt) Put(ctx context.Context, kind Kind, id string, value []byte, expected uint64) (uint64, error) {
	return s.commit(ctx, Put, kind, id, value, expected)
}

// Delete implements Store.
func (s *Bolt) Delete(ctx context.Context, kind Kind, id string, expected uint64) (uint64, error) {
	return s.commit(ctx, Delete, kind, id, nil, expected)
}

type storedEvent struct {
	Type  EventType `json:"t"`
	Kind  Kind      `json:"k"`
	ID    string    `json:"i"`
	Value []byte    `json:"v,omitempty"`
}

func (s *Bolt) commit(ctx context.Context, typ EventType, kind Kind, id string, value []byte, expected uint64) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := checkWrite(kind, id, value); err != nil {
		return 0, err
	}
	// One writer at a time: the revision counter and the event fan-out are
	// ordered by s.mu, and bbolt serialises write transactions anyway.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	rev := s.rev + 1
	ev := Event{Type: typ, Revision: rev, Object: Object{Kind: kind, ID: id, Revision: rev}}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketOf(kind))
		if err != nil {
			return err
		}
		cur := uint64(0)
		if raw := b.Get([]byte(id)); raw != nil {
			if len(raw) < 8 {
				return fmt.Errorf("store: %s/%s: corrupt record", kind, id)
			}
			cur = binary.BigEndian.Uint64(raw)
		}
		if cur != expected {
			return fmt.Errorf("%w: %s/%s is at revision %d, not %d", ErrConflict, kind, id, cur, expected)
		}
		if typ == Delete {
			if cur == 0 {
				return fmt.Errorf("%w: %s/%s", ErrNotFound, kind, id)
			}
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		} else {
			if err := b.Put([]byte(id), append(u64(rev), value...)); err != nil {
				return err
			}
			ev.Object.Value = append([]byte(nil), value...)
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyRevision, u64(rev)); err != nil {
			return err
		}
		enc, err := json.Marshal(storedEvent{Type: typ, Kind: kind, ID: id, Value: value})
		if err != nil {
			return err
		}
		events := tx.Bucket(bucketEvents)
		if err := events.Put(u64(rev), enc); err != nil {
			return err
		}
		return s.compact(meta, events, rev)
	})
	if err != nil {
		return 0, err
	}
	s.rev = rev
	for w := range s.watchers {
		w.send(ev)
	}
	return rev, nil
}

// compact drops events older than the history bound, a few per commit.
func (s *Bolt) compact(meta, events *bolt.Bucket, rev uint64) error {
	oldest := max(getU64(meta, keyOldest), 1)
	if rev < s.history || oldest > rev-s.history {
		return meta.Put(keyOldest, u64(oldest))
	}
	limit := rev - s.history // drop events <= limit
	c := events.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= limit; k, _ = c.Next() {
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return meta.Put(keyOldest, u64(limit+1))
}

// Watch implements Store.
func (s *Bolt) Watch(ctx context.Context, from uint64) (*Watcher, error) {
	w := &Watcher{ch: make(chan Event, 1024)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if from > s.rev {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: watch from revision %d, but the store is at %d", ErrFuture, from, s.rev)
	}
	// Read the backlog while holding s.mu so no commit slips between the
	// backlog and the live feed.
	var backlog []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		if oldest := getU64(tx.Bucket(bucketMeta), keyOldest); from+1 < oldest && from < s.rev {
			return fmt.Errorf("%w: %d is older than the oldest kept revision %d", ErrCompacted, from, oldest)
		}
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(u64(from + 1)); k != nil; k, v = c.Next() {
			var se storedEvent
			if err := json.Unmarshal(v, &se); err != nil {
				return fmt.Errorf("store: corrupt event %d: %w", binary.BigEndian.Uint64(k), err)
			}
			rev := binary.BigEndian.Uint64(k)
			backlog = append(backlog, Event{Type: se.Type, Revision: rev, Object: Object{Kind: se.Kind, ID: se.ID, Value: se.Value, Revision: rev}})
		}
		return nil
	})
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	w.pending = backlog
	s.watchers[w] = struct{}{}
	s.mu.Unlock()

	go w.run(ctx, func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	})
	return w, nil
}

// Close stops every watcher and closes the database.
func (s *Bolt) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for w := range s.watchers {
		w.fail(ErrClosed)
	}
	s.mu.Unlock()
	return s.db.Close()
}
