package pipeline

import (
	"sync"
	"sync/atomic"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// maxDecisions bounds the decision cache: when it holds this many
// decisions it starts afresh. Each entry is a few pointers and strings.
const maxDecisions = 1 << 14

// decisionCache remembers the policy's decisions on keys, so that a warm
// key costs a map lookup instead of a Cedar evaluation on every call.
//
// A decision is a function of the policy set, the principal, the action
// and the key's contents alone: the request's Cedar context is empty, and a
// principal is its SPIFFE id. Both nodes hand out *managed.Key values
// that are replaced, never changed, when the key changes (the central
// registry's cache and the edge's replica; edgecache's placement memo
// relies on the same), and a *policy.Set is immutable and replaced on
// reload, so the two pointers stand for their contents. One state of a key
// may be handed out as several copies over time (the central's cache is
// bounded and decodes an evicted key again; a listing decodes keys it does
// not hold): each copy costs one evaluation, never a wrong decision. A key
// that does not exist is decided afresh every time.
type decisionCache struct {
	m    atomic.Pointer[sync.Map] // decisionKey → policy.Decision
	n    atomic.Int64
	made atomic.Uint64 // decisions not found in memory, so evaluated
}

type decisionKey struct {
	set *policy.Set
	key *managed.Key
	who identity.Identity
	op  policy.Action
}

// decide returns set's decision on op by who on k, from memory when it
// can; decide makes it otherwise.
func (d *decisionCache) decide(set *policy.Set, who identity.Identity, op policy.Action, k *managed.Key, decide func() policy.Decision) policy.Decision {
	m := d.m.Load()
	if m == nil {
		m = new(sync.Map)
		if !d.m.CompareAndSwap(nil, m) {
			m = d.m.Load()
		}
	}
	dk := decisionKey{set: set, key: k, who: who, op: op}
	if v, ok := m.Load(dk); ok {
		return v.(policy.Decision)
	}
	dec := decide()
	d.made.Add(1)
	if d.n.Add(1) > maxDecisions {
		// Start afresh: old keys and sets are let go with the old map.
		d.n.Store(1)
		m = new(sync.Map)
		d.m.Store(m)
	}
	m.Store(dk, dec)
	return dec
}
