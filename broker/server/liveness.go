package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/tick"
)

// liveness is what the central node knows of its edges beyond their
// records: whether each follows it now (its Watch stream is open), when
// its lease runs out, and the last revision it acknowledged. It lives in
// memory: a restarted central node learns it again as edges reconnect.
// With several central nodes on one store (share), each publishes what it
// knows of the edges it serves and reads what the others publish, so every
// central's inventory shows every edge as connected, with its lease and
// acknowledged revision, whichever central it follows.
//
// An edge has at most one Watch stream: a new one cancels the one before
// (errReplaced), so that one edge cannot make the central tier seal and
// audit its material over and over on parallel streams. RemoveNode cancels
// a removed edge's stream at once.
type liveness struct {
	mu      sync.Mutex
	edges   map[string]*edgeLive
	changed chan struct{} // closed and replaced when an edge connects or disconnects

	// Sharing (see share): edges whose entry changed since it was last
	// published, and what the other central nodes published.
	dirty  map[string]struct{}
	others map[string]sharedEdge
	self   string // this central node's id
}

// sharedEdge is what a central node publishes of an edge it serves.
type sharedEdge struct {
	Central   string    `json:"central"`
	Connected bool      `json:"connected"`
	Lease     time.Time `json:"lease"`
	Applied   uint64    `json:"applied"`
}

type edgeLive struct {
	stream  *liveStream // the open Watch stream, nil when none
	lease   time.Time
	applied uint64
}

// liveStream is one open Watch stream; cancel ends it with a cause the
// stream returns to the edge.
type liveStream struct {
	cancel context.CancelCauseFunc
}

// errReplaced ends a Watch stream that a newer stream from the same edge
// replaced.
var errReplaced = status.Error(codes.Aborted, "a newer Watch stream from this edge replaced this one: an edge follows the central tier on one stream")

func newLiveness(self string) *liveness {
	return &liveness{edges: map[string]*edgeLive{}, changed: make(chan struct{}), dirty: map[string]struct{}{}, self: self}
}

// kindEdges is where central nodes publish the liveness of their edges.
const kindEdges store.Kind = "edges"

// shareEvery is how often liveness is published and read back.
var shareEvery = time.Second

// share publishes, every shareEvery until ctx ends, the entries of edges
// that changed here, and reads what the other central nodes published:
// an edge connecting or leaving at another central changes lookups here
// too (Changed fires). A record lasts a lease past its last publication.
func (l *liveness) share(ctx context.Context, p store.Presence, self string, lease time.Duration, log *slog.Logger) {
	tick.Every(ctx, shareEvery, func() {
		for id, rec := range l.takeDirty(self) {
			value, _ := json.Marshal(rec)
			if err := p.Publish(ctx, kindEdges, id, value, lease+shareEvery); err != nil {
				l.markDirty(id) // published next time
				log.Debug("publishing an edge's liveness", "edge", id, "err", err)
			}
		}
		objs, err := p.Present(ctx, kindEdges)
		if err != nil {
			log.Debug("reading the other centrals' edges", "err", err)
			return
		}
		others := map[string]sharedEdge{}
		for _, o := range objs {
			var rec sharedEdge
			if json.Unmarshal(o.Value, &rec) == nil && rec.Central != self {
				others[o.ID] = rec
			}
		}
		l.setOthers(others)
	})
}

// ShareLiveness publishes the liveness of the edges this node serves to
// the other central nodes on p, and reads theirs, until ctx ends.
func (s *Server) ShareLiveness(ctx context.Context, p store.Presence) {
	s.live.share(ctx, p, s.node, s.lease, s.log)
}

// takeDirty returns the records to publish and forgets they were dirty.
func (l *liveness) takeDirty(self string) map[string]sharedEdge {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]sharedEdge{}
	for id := range l.dirty {
		if e, ok := l.edges[id]; ok {
			out[id] = sharedEdge{Central: self, Connected: e.stream != nil, Lease: e.lease, Applied: e.applied}
		}
	}
	clear(l.dirty)
	return out
}

func (l *liveness) markDirty(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dirty[id] = struct{}{}
}

// setOthers records what the other centrals published, and fires Changed
// when an edge's connection there changed.
func (l *liveness) setOthers(others map[string]sharedEdge) {
	l.mu.Lock()
	defer l.mu.Unlock()
	changed := len(others) != len(l.others)
	for id, rec := range others {
		if old, ok := l.others[id]; !ok || old.Connected != rec.Connected || old.Central != rec.Central {
			changed = true
		}
	}
	l.others = others
	if changed {
		l.broadcastLocked()
	}
}

func (l *liveness) get(id string) *edgeLive {
	e, ok := l.edges[id]
	if !ok {
		e = &edgeLive{}
		l.edges[id] = e
	}
	return e
}

func (l *liveness) broadcastLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Changed is closed at the next connection or disconnection.
func (l *liveness) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// connect records edge id's new Watch stream and its first lease, and
// cancels the stream it had open, if any.
func (l *liveness) connect(id string, lease time.Time, cancel context.CancelCauseFunc) *liveStream {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.get(id)
	if e.stream != nil {
		e.stream.cancel(errReplaced)
	}
	e.stream = &liveStream{cancel: cancel}
	e.lease = lease
	l.dirty[id] = struct{}{}
	l.broadcastLocked()
	return e.stream
}

// disconnect records that stream s closed; the lease stands until it runs
// out. A stream already replaced changes nothing.
func (l *liveness) disconnect(id string, s *liveStream) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.edges[id]; ok && e.stream == s {
		e.stream = nil
		l.dirty[id] = struct{}{}
		l.broadcastLocked()
	}
}

// remove forgets edge id, cutting its Watch stream with cause.
func (l *liveness) remove(id string, cause error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.edges[id]; ok {
		if e.stream != nil {
			e.stream.cancel(cause)
		}
		delete(l.edges, id)
		l.broadcastLocked()
	}
}

// beat extends edge id's lease. An edge removed meanwhile (its entry
// gone) gets no entry back.
func (l *liveness) beat(id string, lease time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.edges[id]; ok {
		e.lease = lease
		l.dirty[id] = struct{}{}
	}
}

// ack records that edge id applied revision rev, at most the registry's
// revision now, latest. Only an edge following the central tier now —
// its Watch stream open, so it is enrolled: removal cuts the stream and
// forgets the entry — has its acknowledgement recorded; otherwise a
// removed edge could leave an entry claiming it applied everything, which
// ListNodes would show once it is enrolled again.
func (l *liveness) ack(id string, rev, latest uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.edges[id]
	if !ok || e.stream == nil {
		return
	}
	rev = min(rev, latest)
	if rev > e.applied {
		e.applied = rev
		l.dirty[id] = struct{}{}
	}
}

// describe fills an edge's live fields: from its stream here if it has
// one open, else from what another central published of it, else from
// what this one last knew.
func (l *liveness) describe(n *kbv1.Node) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.edges[n.NodeId]
	if rec, there := l.others[n.NodeId]; there && (!ok || e.stream == nil) {
		e, ok = &edgeLive{lease: rec.Lease, applied: rec.Applied}, true
		// A record outlives a central that died by up to a lease: past
		// its lease the edge no longer follows that central.
		n.Connected = rec.Connected && time.Now().Before(rec.Lease)
		n.Central = rec.Central
	} else if ok {
		n.Connected = e.stream != nil
		n.Central = l.self
	}
	if !ok {
		return
	}
	n.AppliedRevision = e.applied
	if !e.lease.IsZero() {
		n.LeaseExpires = timestamppb.New(e.lease)
	}
}

// inventory is this central node followed by the edges of the registry
// (enrolled, registered, or left from before enrollment existed), with
// what is known of their liveness. LookupKey only ranks connected edges,
// and only an enrolled edge can connect.
func (s *Server) inventory(ctx context.Context) ([]*kbv1.Node, error) {
	edges, err := s.svc.Registry().Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := []*kbv1.Node{{NodeId: s.node, Kind: "central", Address: s.addr, LastSeen: timestamppb.Now(), Connected: true}}
	if s.centrals != nil {
		peers, err := s.centrals(ctx)
		if err != nil {
			s.log.Warn("other central nodes unknown", "err", err)
		}
		for _, c := range peers {
			if c.ID != s.node {
				out = append(out, &kbv1.Node{NodeId: c.ID, Kind: "central", Address: c.Address, LastSeen: timestamppb.Now(), Connected: true})
			}
		}
	}
	for _, n := range edges {
		out = append(out, s.nodeProto(n))
	}
	return out, nil
}
