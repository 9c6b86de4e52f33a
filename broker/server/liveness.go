package server

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// liveness is what the central node knows of its edges beyond their
// records: whether each follows it now (its Watch stream is open), when
// its lease runs out, and the last revision it acknowledged. It lives in
// memory: a restarted central node learns it again as edges reconnect.
//
// An edge has at most one Watch stream: a new one cancels the one before
// (errReplaced), so that one edge cannot make the central tier seal and
// audit its material over and over on parallel streams. RemoveNode cancels
// a removed edge's stream at once.
type liveness struct {
	mu      sync.Mutex
	edges   map[string]*edgeLive
	changed chan struct{} // closed and replaced when an edge connects or disconnects
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

func newLiveness() *liveness {
	return &liveness{edges: map[string]*edgeLive{}, changed: make(chan struct{})}
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
	}
}

// describe fills an edge's live fields.
func (l *liveness) describe(n *kbv1.Node) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.edges[n.NodeId]
	if !ok {
		return
	}
	n.Connected = e.stream != nil
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
