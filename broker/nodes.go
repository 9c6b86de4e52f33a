package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/sealed"
)

// KindNodes is the store kind holding the node inventory.
const KindNodes store.Kind = "nodes"

// Node is an edge of the inventory: enrolled by an admin (EnrollNode: its
// id, region and labels), then registered by the edge itself (Register:
// its address, sealing key and prefetch). An edge's region and labels are
// only ever the enrolled ones; Register cannot set them.
//
// # Migration
//
// Records written before enrollment existed have Enrolled false: they are
// treated as not enrolled — their Register, Watch, FetchMaterial and
// Forward are refused — until an admin enrolls the edge, which keeps the
// record's registration and sets the region and labels it gives.
type Node struct {
	ID     string            `json:"id"`
	Region string            `json:"region,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Enrolled: an admin enrolled the edge, and Region and Labels are the
	// enrolled ones.
	Enrolled   bool   `json:"enrolled,omitempty"`
	Address    string `json:"address,omitempty"`
	SealingKey []byte `json:"sealing_key,omitempty"`
	// Prefetch: the edge takes the material of every key placed on it
	// with Watch, rather than on first use.
	Prefetch   bool      `json:"prefetch,omitempty"`
	EnrolledAt time.Time `json:"enrolled_at,omitzero"`
	Registered time.Time `json:"registered,omitzero"`
	LastSeen   time.Time `json:"last_seen,omitzero"`

	Revision uint64 `json:"-"`
}

// Placement is the edge as package placement sees it: an edge, with its
// enrolled region and labels. Whether it is connected is live state the
// record does not hold.
func (n *Node) Placement() placement.Node {
	return placement.Node{ID: n.ID, Kind: placement.KindEdge, Address: n.Address, Region: n.Region, Labels: n.Labels,
		Prefetch: n.Prefetch, Enrolled: n.Enrolled}
}

// IsRegistered says whether the edge has registered since it was enrolled:
// it has a sealing key material can be sealed to.
func (n *Node) IsRegistered() bool { return len(n.SealingKey) > 0 }

var (
	nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	regionRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// ValidateNodeID checks an edge's node id.
func ValidateNodeID(id string) error {
	if !nodeIDRe.MatchString(id) {
		return managed.Errorf(managed.ErrInvalidArgument, "node id %q must be 1-128 of [A-Za-z0-9._-]", id)
	}
	return nil
}

// validateEnrollment checks what an admin sets: id, region and labels.
func (n *Node) validateEnrollment() error {
	if err := ValidateNodeID(n.ID); err != nil {
		return err
	}
	if n.Region != "" && !regionRe.MatchString(n.Region) {
		return managed.Errorf(managed.ErrInvalidArgument, "region %q must be 1-63 of [a-z0-9-]", n.Region)
	}
	return managed.ValidateLabels(n.Labels)
}

// maxAddressLen bounds an edge's address: a DNS name (at most 253 bytes),
// brackets, a colon and a port. The address goes in every inventory event
// to every edge and in every LookupKey answer, so an edge must not be able
// to make it large.
const maxAddressLen = 300

// validateRegistration checks what an edge sets: address and sealing key.
// The address is host:port with a non-zero port, and the host an IP
// address that is not a wildcard or a DNS name of at most 253 bytes.
func (n *Node) validateRegistration() error {
	if len(n.Address) > maxAddressLen {
		return managed.Errorf(managed.ErrInvalidArgument, "address is %d bytes, more than %d", len(n.Address), maxAddressLen)
	}
	host, port, err := net.SplitHostPort(n.Address)
	if p, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || p == 0 || host == "" {
		return managed.Errorf(managed.ErrInvalidArgument, "address %q is not a dialable host:port", n.Address)
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() {
			return managed.Errorf(managed.ErrInvalidArgument, "address %q is a wildcard, not dialable", n.Address)
		}
	} else if !isDNSName(host) {
		return managed.Errorf(managed.ErrInvalidArgument, "address %q: host is neither an IP address nor a DNS name", n.Address)
	}
	if _, err := sealed.ParsePublicKey(n.SealingKey); err != nil {
		return managed.Errorf(managed.ErrInvalidArgument, "sealing key: %v", err)
	}
	return nil
}

// isDNSName says whether s is a DNS host name: at most 253 bytes (a
// trailing dot aside) of dot-separated labels of 1-63 letters, digits,
// hyphens and underscores, no label starting or ending with a hyphen. It
// is the rule Go's resolver applies, so it admits no control characters
// and no spaces.
func isDNSName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// EnrollHint is how an operator enrolls edge id, for error messages.
func EnrollHint(id string) string {
	return fmt.Sprintf("an admin enrolls it at the central tier: keybroker node enroll %s --region REGION [--label k=v]", id)
}

// Registration is what an edge says of itself when it registers.
type Registration struct {
	ID         string
	Address    string
	SealingKey []byte
	Prefetch   bool
}

// lastSeenRefresh is how stale LastSeen may grow before a Register that
// changes nothing else writes the record anyway.
const lastSeenRefresh = 10 * time.Minute

// RegisterNode records (or refreshes) an enrolled edge's address, sealing
// key and prefetch. Region and labels stay the enrolled ones; an edge that
// is not enrolled is refused (ErrPermissionDenied). The registration time
// of a known node is kept.
//
// A Register that changes nothing writes nothing (unless LastSeen is more
// than lastSeenRefresh old): every write of a node record is an inventory
// event sent to every edge's Watch stream, so an edge re-registering in a
// loop would otherwise cost the central tier work for every edge.
// LastSeen is thus the last registration to within lastSeenRefresh; the
// lease and Connected say whether the edge follows now.
func (r *Registry) RegisterNode(ctx context.Context, reg Registration) (*Node, error) {
	if err := ValidateNodeID(reg.ID); err != nil {
		return nil, err
	}
	return r.updateNode(ctx, reg.ID, func(n *Node) error {
		if !n.Enrolled {
			return managed.Errorf(managed.ErrPermissionDenied, "edge %q is not enrolled: %s", reg.ID, EnrollHint(reg.ID))
		}
		if n.Address == reg.Address && bytes.Equal(n.SealingKey, reg.SealingKey) && n.Prefetch == reg.Prefetch &&
			r.now().Sub(n.LastSeen) < lastSeenRefresh {
			return errUnchanged
		}
		n.Address, n.SealingKey, n.Prefetch = reg.Address, reg.SealingKey, reg.Prefetch
		if err := n.validateRegistration(); err != nil {
			return err
		}
		n.LastSeen = r.now().UTC()
		if n.Registered.IsZero() {
			n.Registered = n.LastSeen
		}
		return nil
	})
}

// EnrollNode admits edge id with region and labels. A record left from
// before enrollment existed (Enrolled false) is enrolled in place, keeping
// its registration; an enrolled edge is ErrAlreadyExists (UpdateNode
// changes it).
func (r *Registry) EnrollNode(ctx context.Context, id, region string, labels map[string]string) (*Node, error) {
	if err := (&Node{ID: id, Region: region, Labels: labels}).validateEnrollment(); err != nil {
		return nil, err
	}
	return r.writeNode(ctx, id, true, func(n *Node) error {
		if n.Enrolled {
			return managed.Errorf(managed.ErrAlreadyExists, "edge %q is already enrolled (region %q): update it with keybroker node update", id, n.Region)
		}
		n.Region, n.Labels, n.Enrolled = region, maps.Clone(labels), true
		n.EnrolledAt = r.now().UTC()
		return nil
	})
}

// NodeUpdate is a change to an enrolled edge: nil Region leaves the region
// as it is; Labels are merged into the present ones, or replace them with
// ReplaceLabels (an empty value deletes a label when merging).
type NodeUpdate struct {
	Region        *string
	Labels        map[string]string
	ReplaceLabels bool
}

// UpdateNode changes an enrolled edge's region or labels.
func (r *Registry) UpdateNode(ctx context.Context, id string, u NodeUpdate) (*Node, error) {
	if err := ValidateNodeID(id); err != nil {
		return nil, err
	}
	return r.updateNode(ctx, id, func(n *Node) error {
		if !n.Enrolled {
			return managed.Errorf(managed.ErrFailedPrecondition, "edge %q is not enrolled: enroll it with keybroker node enroll", id)
		}
		if u.Region != nil {
			n.Region = *u.Region
		}
		if u.ReplaceLabels {
			n.Labels = maps.Clone(u.Labels)
		} else if len(u.Labels) > 0 {
			next := maps.Clone(n.Labels)
			if next == nil {
				next = map[string]string{}
			}
			for k, v := range u.Labels {
				if v == "" {
					delete(next, k)
				} else {
					next[k] = v
				}
			}
			n.Labels = next
		}
		if len(n.Labels) == 0 {
			n.Labels = nil
		}
		return n.validateEnrollment()
	})
}

// RemoveNode deletes edge id's record: it is no longer enrolled, so its
// Register, Watch, FetchMaterial and Forward are refused until an admin
// enrolls it again, and the deletion reaches every Watch stream as an
// inventory change. It returns the registry revision of the removal.
func (r *Registry) RemoveNode(ctx context.Context, id string) (uint64, error) {
	if err := ValidateNodeID(id); err != nil {
		return 0, err
	}
	return r.casNode(ctx, id, func(n *Node) (uint64, error) {
		if n == nil {
			return 0, managed.Errorf(managed.ErrNotFound, "edge %q is not enrolled", id)
		}
		return r.st.Delete(ctx, KindNodes, id, n.Revision)
	})
}

// updateNode changes the record of an existing edge (ErrPermissionDenied
// when there is none: the edge is not enrolled).
func (r *Registry) updateNode(ctx context.Context, id string, change func(*Node) error) (*Node, error) {
	return r.writeNode(ctx, id, false, change)
}

// errUnchanged is what a writeNode change returns to leave the record as
// it is: writeNode then returns the record read, and writes nothing.
var errUnchanged = errors.New("broker: node record unchanged")

// writeNode applies change to edge id's record under compare-and-swap;
// create allows a new record.
func (r *Registry) writeNode(ctx context.Context, id string, create bool, change func(*Node) error) (*Node, error) {
	var out *Node
	_, err := r.casNode(ctx, id, func(n *Node) (uint64, error) {
		if n == nil {
			if !create {
				return 0, managed.Errorf(managed.ErrPermissionDenied, "edge %q is not enrolled: %s", id, EnrollHint(id))
			}
			n = &Node{ID: id}
		}
		if err := change(n); errors.Is(err, errUnchanged) && n.Revision != 0 {
			out = n
			return n.Revision, nil
		} else if err != nil {
			return 0, err
		}
		data, err := json.Marshal(n)
		if err != nil {
			return 0, err
		}
		rev, err := r.st.Put(ctx, KindNodes, id, data, n.Revision)
		if err != nil {
			return 0, err
		}
		n.Revision, out = rev, n
		return rev, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// casNode reads edge id's record (nil when there is none) and gives it to
// step, which writes or deletes it expecting the revision read; a write
// that lost the race (store.ErrConflict) is tried again on the record as
// it is then.
func (r *Registry) casNode(ctx context.Context, id string, step func(*Node) (uint64, error)) (uint64, error) {
	for range maxCASRetries {
		var n *Node
		o, err := r.st.Get(ctx, KindNodes, id)
		switch {
		case err == nil:
			if n, err = DecodeNode(o); err != nil {
				return 0, err
			}
		case !errors.Is(err, store.ErrNotFound):
			return 0, err
		}
		rev, err := step(n)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return rev, err
	}
	return 0, managed.Errorf(managed.ErrConflict, "node %q: too many concurrent changes", id)
}

// Nodes lists the edges of the inventory (enrolled, registered or both), sorted by id.
func (r *Registry) Nodes(ctx context.Context) ([]*Node, error) {
	objs, _, err := r.st.List(ctx, KindNodes)
	if err != nil {
		return nil, err
	}
	out := make([]*Node, 0, len(objs))
	for _, o := range objs {
		n, err := DecodeNode(o)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Node returns one edge of the inventory.
func (r *Registry) Node(ctx context.Context, id string) (*Node, error) {
	o, err := r.st.Get(ctx, KindNodes, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, managed.Errorf(managed.ErrNotFound, "edge %q is not enrolled", id)
	}
	if err != nil {
		return nil, err
	}
	return DecodeNode(o)
}

// DecodeNode decodes a node record (a KindNodes object).
func DecodeNode(o store.Object) (*Node, error) {
	var n Node
	if err := json.Unmarshal(o.Value, &n); err != nil {
		return nil, fmt.Errorf("broker: node %q: corrupt record: %w", o.ID, err)
	}
	n.Revision = o.Revision
	return &n, nil
}
