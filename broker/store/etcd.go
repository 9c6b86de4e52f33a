package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/internal/tick"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultEtcdPrefix is where a cluster's objects live in etcd unless the
// configuration names another prefix.
const DefaultEtcdPrefix = "/keybroker/"

// listPage bounds one List response: a kind is read in pages at one
// revision, so no response grows with the number of objects.
const listPage = 500

// EtcdConfig says how to reach etcd.
type EtcdConfig struct {
	Endpoints []string
	// TLS is the client's TLS configuration (mutual TLS with etcd's CA);
	// nil speaks plain gRPC, which only loopback tests should.
	TLS *tls.Config
	// Prefix holds every object of this cluster (DefaultEtcdPrefix when
	// empty); it must end in "/".
	Prefix string
	// DialTimeout bounds the first connection (default 5s).
	DialTimeout time.Duration
	// RequestTimeout bounds each read and write (default 5s), so that a
	// node cut off from etcd answers "unavailable" instead of hanging.
	RequestTimeout time.Duration
}

// ProgressInterval is how often the store asks etcd for a progress
// notification on its watches: the bound on how long a quiet feed goes
// without advancing, and the resolution of Heard.
var ProgressInterval = time.Second

// Etcd is the Store on an etcd cluster: every object is one etcd key under
// the prefix, an object's revision is its ModRevision, compare-and-swap is
// a transaction on ModRevision, and the change feed is etcd's Watch, so
// any central node sharing the prefix sees every change and a watcher can
// resume at any of them from any revision etcd still keeps.
//
// Revisions are etcd's: store-wide and increasing, but not contiguous for
// one prefix when other keys share the cluster. Revision is the revision of
// the last change to an object (every write also touches a marker key
// under the prefix, in the same transaction, so a node that opens the
// store learns it), never a revision no object change carries, so a
// follower waiting to reach it always can.
type Etcd struct {
	cli        *clientv3.Client
	root       string // the configured prefix
	prefix     string // root + "o/": the objects
	rev        atomic.Uint64
	heard      atomic.Int64 // unix nanoseconds: see Heard
	claims     claimLease
	reqTimeout time.Duration

	mu       sync.Mutex
	closed   bool
	watchers map[*Watcher]context.CancelFunc
	stop     context.CancelFunc
	done     chan struct{}
}

var _ Store = (*Etcd)(nil)

// OpenEtcd connects to etcd, reads the current revision and follows the
// prefix's changes so that Revision stays current with every central's
// writes.
func OpenEtcd(ctx context.Context, cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("store: etcd: no endpoints")
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("store: etcd: prefix %q must end in /", prefix)
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = 5 * time.Second
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints, TLS: cfg.TLS, DialTimeout: dial, Logger: zap.NewNop(),
		// Keep each request under etcd's default 1.5 MiB request bound.
		MaxCallSendMsgSize: 3 << 19,
		// A connection that stops answering (a member gone without a
		// FIN, a cut network) is found dead in seconds, and the client
		// moves to another endpoint.
		DialKeepAliveTime: 3 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("store: etcd: %w", err)
	}
	s := &Etcd{cli: cli, root: prefix, prefix: prefix + "o/", watchers: map[*Watcher]context.CancelFunc{}, done: make(chan struct{}),
		reqTimeout: cfg.RequestTimeout}
	if s.reqTimeout <= 0 {
		s.reqTimeout = 5 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, dial)
	defer cancel()
	if _, _, err := s.refresh(rctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("store: etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	s.hear()
	fctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.follow(fctx)
	go s.requestProgress(fctx)
	return s, nil
}

// marker is the key every write touches: its ModRevision is the last
// object change's revision.
func (s *Etcd) marker() string { return s.root + "last-change" }

// refresh reads the last object change's revision (a linearizable read)
// and etcd's current revision.
func (s *Etcd) refresh(ctx context.Context) (last, current uint64, err error) {
	resp, err := s.cli.Get(ctx, s.marker(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, 0, err
	}
	if len(resp.Kvs) == 1 {
		s.saw(resp.Kvs[0].ModRevision)
	}
	return s.rev.Load(), uint64(resp.Header.Revision), nil
}

// Heard implements Current: when the follower last heard a change or a
// progress notification, or the store was opened.
func (s *Etcd) Heard() time.Time { return time.Unix(0, s.heard.Load()) }

func (s *Etcd) hear() { s.heard.Store(time.Now().UnixNano()) }

// request bounds one request by RequestTimeout.
func (s *Etcd) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.reqTimeout)
}

// watchContext is the context every watch of this store is made with:
// etcd's client multiplexes watches with the same metadata on one stream,
// and RequestProgress reaches the watches of the stream its context names.
func watchContext(ctx context.Context) context.Context { return clientv3.WithRequireLeader(ctx) }

// requestProgress asks etcd every ProgressInterval for a progress
// notification on every watch of this store, so that a quiet feed
// advances and Heard stays current while etcd answers.
func (s *Etcd) requestProgress(ctx context.Context) {
	tick.Every(ctx, ProgressInterval, func() {
		rctx, cancel := s.request(watchContext(ctx))
		s.cli.RequestProgress(rctx) // an error is a silence Heard shows
		cancel()
	})
}

// saw raises the known revision to r and returns the known revision.
func (s *Etcd) saw(r int64) uint64 {
	for {
		cur := s.rev.Load()
		if uint64(r) <= cur || s.rev.CompareAndSwap(cur, uint64(r)) {
			return max(cur, uint64(r))
		}
	}
}

// follow keeps Revision current with changes other nodes commit.
func (s *Etcd) follow(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		from := s.rev.Load()
		wch := s.cli.Watch(watchContext(ctx), s.prefix, clientv3.WithPrefix(),
			clientv3.WithRev(int64(from+1)), clientv3.WithKeysOnly(), clientv3.WithProgressNotify())
		for resp := range wch {
			if resp.Err() == nil {
				s.hear()
			}
			for _, ev := range resp.Events {
				s.saw(ev.Kv.ModRevision)
			}
			if resp.CompactRevision > 0 {
				// Changes were compacted away before they were seen: the
				// marker says where the objects are now.
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				s.refresh(rctx)
				cancel()
				break
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *Etcd) key(kind Kind, id string) string { return s.prefix + string(kind) + "/" + id }

// object decodes an etcd key-value under the prefix.
func (s *Etcd) object(kv *mvccpb.KeyValue) (Object, error) {
	rest, ok := strings.CutPrefix(string(kv.Key), s.prefix)
	kind, id, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		return Object{}, fmt.Errorf("store: etcd: key %q is not an object of this store", kv.Key)
	}
	return Object{Kind: Kind(kind), ID: id, Value: kv.Value, Revision: uint64(kv.ModRevision)}, nil
}

func (s *Etcd) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Revision implements Store: the latest revision this node has seen
// committed under the prefix (by any node).
func (s *Etcd) Revision() uint64 { return s.rev.Load() }

// Get implements Store.
func (s *Etcd) Get(ctx context.Context, kind Kind, id string) (Object, error) {
	if err := checkName(kind, id); err != nil {
		return Object{}, err
	}
	if s.isClosed() {
		return Object{}, ErrClosed
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, s.key(kind, id))
	if err != nil {
		return Object{}, s.wrap(err)
	}
	if len(resp.Kvs) == 0 {
		return Object{}, ErrNotFound
	}
	return s.object(resp.Kvs[0])
}

// List implements Store: the objects of kind as of one revision, read in
// pages of listPage.
func (s *Etcd) List(ctx context.Context, kind Kind) ([]Object, uint64, error) {
	var out []Object
	var rev uint64
	err := s.Scan(ctx, kind, listPage, func(p Page) error {
		out = append(out, p.Objects...)
		rev = p.Revision
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return out, rev, nil
}

// ListPage implements Store: one range read, at the latest revision.
func (s *Etcd) ListPage(ctx context.Context, kind Kind, after string, limit int) (Page, error) {
	if err := checkPage(kind, limit); err != nil {
		return Page{}, err
	}
	return s.page(ctx, kind, after, limit, 0)
}

// page reads up to limit objects of kind after after, at revision rev (0:
// the latest).
func (s *Etcd) page(ctx context.Context, kind Kind, after string, limit int, rev int64) (Page, error) {
	if s.isClosed() {
		return Page{}, ErrClosed
	}
	base := s.prefix + string(kind) + "/"
	start := base + after
	if after != "" {
		start += "\x00" // the first id after after
	}
	opts := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(base)), clientv3.WithLimit(int64(limit)),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	rctx, cancel := s.request(ctx)
	resp, err := s.cli.Get(rctx, start, opts...)
	cancel()
	if errors.Is(err, rpctypes.ErrCompacted) {
		return Page{}, fmt.Errorf("%w: etcd compacted revision %d during a scan", ErrCompacted, rev)
	}
	if err != nil {
		return Page{}, s.wrap(err)
	}
	p := Page{Revision: uint64(resp.Header.Revision), More: resp.More, Objects: make([]Object, 0, len(resp.Kvs))}
	if rev > 0 {
		p.Revision = uint64(rev)
	}
	for _, kv := range resp.Kvs {
		o, err := s.object(kv)
		if err != nil {
			return Page{}, err
		}
		p.Objects = append(p.Objects, o)
	}
	return p, nil
}

// Scan implements Store: range reads, the first at the latest revision
// and the others at its revision (etcd keeps every revision until it
// compacts; a scan overtaken by compaction fails with ErrCompacted and is
// started again by its caller), handed to fn in pages of at most limit.
//
// Each read asks for more than a page once the first has shown how large
// the objects are: up to scanBytes, at most scanObjects. etcd answers a
// range with a limit by visiting every key from its start to its end
// (to count them), so a scan of N objects in reads of L costs etcd about
// N²/2L key visits: a million keys in reads of 1,000 kept etcd busy for
// minutes, every read taking 130–280 ms.
func (s *Etcd) Scan(ctx context.Context, kind Kind, limit int, fn func(Page) error) error {
	if err := checkPage(kind, limit); err != nil {
		return err
	}
	var rev int64
	after, batch := "", limit
	for {
		p, err := s.page(ctx, kind, after, batch, rev)
		if err != nil {
			return err
		}
		rev = int64(p.Revision)
		for i := 0; i < len(p.Objects) || i == 0; i += limit {
			end := min(i+limit, len(p.Objects))
			if err := fn(Page{Revision: p.Revision, Objects: p.Objects[i:end], More: end < len(p.Objects) || p.More}); err != nil {
				return err
			}
		}
		if !p.More || len(p.Objects) == 0 {
			return nil
		}
		after = p.Objects[len(p.Objects)-1].ID
		batch = scanBatch(p.Objects, limit)
	}
}

// How much one read of Scan may ask for.
const (
	scanBytes   = 8 << 20
	scanObjects = 10_000
)

// scanBatch is how many objects the next read of a scan asks for: as
// many as scanBytes holds of objects the size of those just read, at
// least limit and at most scanObjects.
func scanBatch(read []Object, limit int) int {
	size := 0
	for _, o := range read {
		size += len(o.ID) + len(o.Value)
	}
	perObject := max(1, size/max(1, len(read)))
	return max(limit, min(scanObjects, scanBytes/perObject))
}

// Put implements Store: a transaction that writes only when the object's
// ModRevision is expected (0: absent).
func (s *Etcd) Put(ctx context.Context, kind Kind, id string, value []byte, expected uint64) (uint64, error) {
	if err := checkWrite(kind, id, value); err != nil {
		return 0, err
	}
	if s.isClosed() {
		return 0, ErrClosed
	}
	k := s.key(kind, id)
	return s.swap(ctx, kind, id, expected, clientv3.OpPut(k, string(value)))
}

// swap runs op when the object's ModRevision is expected (and ctx's fence,
// if any, holds).
func (s *Etcd) swap(ctx context.Context, kind Kind, id string, expected uint64, op clientv3.Op) (uint64, error) {
	k := s.key(kind, id)
	cmps, orElse, f := fenced(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", int64(expected))},
		[]clientv3.Op{clientv3.OpGet(k, clientv3.WithKeysOnly())})
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Txn(rctx).If(cmps...).Then(op, clientv3.OpPut(s.marker(), "")).Else(orElse...).Commit()
	if err != nil {
		return 0, s.wrap(err)
	}
	if !resp.Succeeded {
		if err := lostFence(f, resp); err != nil {
			return 0, err
		}
	}
	return s.committed(kind, id, expected, resp)
}

// Delete implements Store.
func (s *Etcd) Delete(ctx context.Context, kind Kind, id string, expected uint64) (uint64, error) {
	if err := checkName(kind, id); err != nil {
		return 0, err
	}
	if s.isClosed() {
		return 0, ErrClosed
	}
	k := s.key(kind, id)
	if expected == 0 {
		// Nothing to delete at revision 0: absent is not found, present a
		// conflict, as in every store.
		o, err := s.Get(ctx, kind, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return 0, fmt.Errorf("%w: %s/%s", ErrNotFound, kind, id)
			}
			return 0, err
		}
		return 0, fmt.Errorf("%w: %s/%s is at revision %d, not 0", ErrConflict, kind, id, o.Revision)
	}
	return s.swap(ctx, kind, id, expected, clientv3.OpDelete(k))
}

// committed is a compare-and-swap's outcome: the new revision, or the
// conflict with the object's current revision.
func (s *Etcd) committed(kind Kind, id string, expected uint64, resp *clientv3.TxnResponse) (uint64, error) {
	if resp.Succeeded {
		s.saw(resp.Header.Revision) // the object's new ModRevision
		return uint64(resp.Header.Revision), nil
	}
	cur := int64(0)
	if len(resp.Responses) >= 1 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) == 1 {
			cur = r.Kvs[0].ModRevision
		}
	}
	return 0, fmt.Errorf("%w: %s/%s is at revision %d, not %d", ErrConflict, kind, id, cur, expected)
}

// Watch implements Store: etcd's Watch of the prefix from revision from+1.
// A revision etcd has compacted away gives ErrCompacted (at once, or on the
// channel if compaction overtakes the watcher); a member that loses its
// leader or its connection ends the watch with an error, and the watcher
// resumes from the last revision it handled, at any member.
func (s *Etcd) Watch(ctx context.Context, from uint64) (*Watcher, error) {
	if s.isClosed() {
		return nil, ErrClosed
	}
	// from may be any revision a List or an event gave, up to etcd's
	// current one.
	cur := s.rev.Load()
	if from > cur {
		var err error
		if _, cur, err = s.refresh(ctx); err != nil {
			return nil, s.wrap(err)
		}
		if from > cur {
			return nil, fmt.Errorf("%w: watch from revision %d, but etcd is at %d", ErrFuture, from, cur)
		}
	}
	if from < cur {
		// Is from+1 still in etcd's history? A read at that revision says.
		rctx, cancel := s.request(ctx)
		_, err := s.cli.Get(rctx, s.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(int64(from+1)))
		cancel()
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil, fmt.Errorf("%w: %d is older than etcd's compacted revision", ErrCompacted, from)
		}
		if err != nil {
			return nil, s.wrap(err)
		}
	}
	w := &Watcher{ch: make(chan Event, 1024)}
	wctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return nil, ErrClosed
	}
	s.watchers[w] = cancel
	s.mu.Unlock()
	wch := s.cli.Watch(watchContext(wctx), s.prefix, clientv3.WithPrefix(),
		clientv3.WithRev(int64(from+1)), clientv3.WithProgressNotify())
	go s.pump(wctx, w, wch)
	go w.run(wctx, func() {
		cancel()
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	})
	return w, nil
}

// pump feeds etcd's watch responses into w.
func (s *Etcd) pump(ctx context.Context, w *Watcher, wch clientv3.WatchChan) {
	for resp := range wch {
		if resp.CompactRevision > 0 {
			w.fail(fmt.Errorf("%w: etcd compacted up to revision %d", ErrCompacted, resp.CompactRevision))
			return
		}
		if err := resp.Err(); err != nil {
			w.fail(fmt.Errorf("store: etcd watch: %w", err))
			return
		}
		if resp.IsProgressNotify() {
			w.send(Event{Type: Progress, Revision: uint64(resp.Header.Revision)})
			continue
		}
		for _, ev := range resp.Events {
			s.saw(ev.Kv.ModRevision)
			o, err := s.object(ev.Kv)
			if err != nil {
				w.fail(err)
				return
			}
			e := Event{Type: Put, Object: o, Revision: o.Revision}
			if ev.Type == mvccpb.DELETE {
				e.Type, e.Object.Value = Delete, nil
			}
			w.send(e)
		}
	}
	if ctx.Err() == nil {
		w.fail(errors.New("store: etcd watch ended"))
	}
}

// wrap names etcd in an error, keeping a closed store's ErrClosed.
func (s *Etcd) wrap(err error) error {
	if s.isClosed() {
		return ErrClosed
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// The request timeout (or the caller's deadline) ran out: etcd
		// did not answer, and the outcome of a write is unknown. It is
		// the store that is unavailable, not the caller that was late.
		return fmt.Errorf("%w: etcd did not answer in time (a write may or may not have been applied)", ErrUnavailable)
	}
	return fmt.Errorf("%w: etcd: %w", ErrUnavailable, err)
}

// Close ends every watcher with ErrClosed and closes the client.
func (s *Etcd) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for w, cancel := range s.watchers {
		w.fail(ErrClosed)
		cancel()
	}
	s.mu.Unlock()
	s.stop()
	<-s.done
	return s.cli.Close()
}
