// Package store is the central tier's registry storage: a revisioned
// key-value store with compare-and-swap updates and a change feed.
//
// # Model
//
// Objects are byte values named by (kind, id). Every committed change
// increments one store-wide revision, like etcd's; an object remembers the
// revision that last changed it, and Put and Delete apply only when the
// caller's expected revision matches (0 means "must not exist"). The change
// feed replays events after any revision still in the retained history, then
// follows live commits, so a watcher that reconnects resumes where it left
// off; older revisions give ErrCompacted and the watcher resyncs with List.
//
// # Paging
//
// List holds a whole kind in memory. ListPage reads one page of a kind
// after a given id, at the latest revision (a cursor that survives any
// change: ListKeys' page tokens); Scan reads a kind page by page at one
// revision (a consistent snapshot that never holds more than a page: an
// edge's Watch snapshot). etcd serves Scan's later pages at the first
// one's revision; bbolt holds one read transaction for the scan.
//
// # Implementations
//
// [Open] is the embedded default on bbolt: one file, fsync on every commit
// (bbolt's default), the event history kept in the same file so it survives
// restarts. [OpenEtcd] keeps the objects in an etcd cluster under a prefix,
// so several central nodes can share them; its revisions are etcd's, and
// its history is what etcd has not compacted. Both pass one conformance
// suite (package storetest).
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors.
var (
	ErrNotFound  = errors.New("store: not found")
	ErrConflict  = errors.New("store: revision conflict")
	ErrCompacted = errors.New("store: revision no longer in history")
	// ErrFuture is a Watch from a revision the store has not made: a
	// watcher's resume point from another store, or one recreated since.
	ErrFuture = errors.New("store: revision not yet made")
	ErrClosed = errors.New("store: closed")
	// ErrUnavailable wraps every failure to reach a shared store (etcd
	// unreachable, a request past its timeout): retryable, at this node
	// later or at another node now.
	ErrUnavailable = errors.New("store: unavailable")
)

// MaxValue bounds one object's value (1 MiB), under etcd's default
// request bound of 1.5 MiB, so that every store refuses the same writes.
const MaxValue = 1 << 20

// checkName refuses an empty kind or id and a kind with a slash (etcd
// keys are prefix/kind/id).
func checkName(kind Kind, id string) error {
	if kind == "" || id == "" {
		return errors.New("store: empty kind or id")
	}
	if strings.Contains(string(kind), "/") {
		return fmt.Errorf("store: kind %q has a slash", kind)
	}
	return nil
}

// checkWrite is checkName and the bound on a value.
func checkWrite(kind Kind, id string, value []byte) error {
	if err := checkName(kind, id); err != nil {
		return err
	}
	if len(value) > MaxValue {
		return fmt.Errorf("store: %s/%s: value of %d bytes, more than %d", kind, id, len(value), MaxValue)
	}
	return nil
}

// Kind is a class of objects ("keys", "nodes", "policies").
type Kind string

// Object is one stored value.
type Object struct {
	Kind     Kind
	ID       string
	Value    []byte
	Revision uint64 // revision of the last change to this object
}

// MaxPage bounds ListPage's and Scan's limit.
const MaxPage = 10_000

// Page is one page of a kind's objects, in id order.
type Page struct {
	Objects  []Object
	Revision uint64 // the store revision the page reflects
	More     bool   // objects follow the page's last one
}

func checkPage(kind Kind, limit int) error {
	if err := checkName(kind, "-"); err != nil {
		return err
	}
	if limit < 1 || limit > MaxPage {
		return fmt.Errorf("store: page limit %d out of 1..%d", limit, MaxPage)
	}
	return nil
}

// EventType says what happened.
type EventType uint8

// Event types.
const (
	Put EventType = iota + 1
	Delete
	// Progress changes no object: every change up to its Revision has
	// been delivered, so a consumer may resume from it (etcd's progress
	// notification; a quiet feed still advances, and a resume point does
	// not age into etcd's compacted history while nothing changes).
	Progress
)

// Event is one committed change, or progress. For Delete,
// Object.Value is empty; for Progress, Object is zero.
type Event struct {
	Type     EventType
	Object   Object
	Revision uint64
}

// Current is a store whose change feed can fall silent without failing —
// a node cut off from etcd hears nothing, as it would on a quiet prefix.
// Heard says when the store last proved this node current: the last time
// its feed delivered a change or a progress notification. A store
// without it (bbolt, in the node's own process) is always current.
type Current interface {
	Heard() time.Time
}

// Store is the registry's storage.
type Store interface {
	// Get returns one object, or ErrNotFound.
	Get(ctx context.Context, kind Kind, id string) (Object, error)
	// List returns every object of a kind and the store revision it
	// reflects. It holds the whole kind in memory: callers that may face
	// many objects read pages (ListPage, Scan) instead.
	List(ctx context.Context, kind Kind) ([]Object, uint64, error)
	// ListPage returns at most limit objects of a kind whose id sorts
	// after after ("" starts at the first), in id order, as of the latest
	// revision, which it reports; More says objects follow the page. Two
	// calls may reflect different revisions: a caller paging through a
	// kind that changes meanwhile sees every object that existed
	// throughout exactly once, and a created or deleted one once or not at
	// all. A limit below 1 or above MaxPage is an error.
	ListPage(ctx context.Context, kind Kind, after string, limit int) (Page, error)
	// Scan calls fn with the objects of a kind in id order, in pages of at
	// most limit, all as of one revision (every Page's Revision), until a
	// page has More false or fn returns an error, which Scan returns. Only
	// one page is held at a time. fn may be slow (it may send the page over
	// the network); writes committed meanwhile are not seen by the pages
	// that follow. fn must not write to the store itself (bbolt: see
	// Bolt.Scan).
	Scan(ctx context.Context, kind Kind, limit int, fn func(Page) error) error
	// Put writes value when the object's revision is expected (0: it must
	// not exist) and returns the new revision; ErrConflict otherwise.
	Put(ctx context.Context, kind Kind, id string, value []byte, expected uint64) (uint64, error)
	// Delete removes the object when its revision is expected.
	Delete(ctx context.Context, kind Kind, id string, expected uint64) (uint64, error)
	// Revision is the latest committed revision.
	Revision() uint64
	// Watch streams events with revision > from until ctx ends or the
	// watcher falls behind (the channel is then closed; Err says why).
	Watch(ctx context.Context, from uint64) (*Watcher, error)
	Close() error
}
