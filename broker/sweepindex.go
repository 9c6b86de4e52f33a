package broker

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/managed"
)

// sweepIndex is when each key the sweep may have work for next falls due —
// an enabled key with a rotation period at its next rotation, a key
// pending deletion at its deletion time — so that a sweep reads the few
// keys due rather than every key: paging through a million keys took 28 s
// of CPU every minute.
//
// It is kept by Follow from the store's feed, which every change reaches
// in revision order, whoever made it (this node or another central), and
// is complete once a sweep has scanned every key while the feed ran
// without a break (built); a feed that restarts may have missed changes,
// and the next sweep scans again. It may name keys with nothing due (a
// scan and the feed both add what they see, and the sweep judges each key
// on its current record), never miss one that is: a key whose record the
// feed cannot decode is kept with no time, so every sweep looks at it.
type sweepIndex struct {
	mu    sync.Mutex
	due   map[string]time.Time // key id → when it falls due (zero: look every sweep)
	built bool
	// epoch counts the feed's starts; following says it is running. A
	// scan makes the index built only if the feed ran throughout it.
	epoch     uint64
	following bool
}

// sweepDue says whether k may have sweep work, and when.
func sweepDue(k *managed.Key) (time.Time, bool) {
	switch {
	case k.State == managed.StatePendingDeletion:
		return k.DeletionTime, true
	case k.State == managed.StateEnabled && k.RotationPeriod > 0 && !k.NextRotation.IsZero():
		return k.NextRotation, true
	}
	return time.Time{}, false
}

// start is called when the feed (re)starts: what it missed is unknown.
func (x *sweepIndex) start() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.epoch++
	x.following, x.built = true, false
}

// stop is called when the feed ends.
func (x *sweepIndex) stop() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.following, x.built = false, false
}

// noteRecord records a key's record as the feed reported it, reading only
// the fields the sweep judges by: the feed reports every change at every
// central, most of them to keys this node has not cached, and decoding
// each record in full (versions, labels, public keys) for four fields
// would cost every change the price of a read.
func (x *sweepIndex) noteRecord(o store.Object) {
	var f struct {
		State          managed.State `json:"state"`
		RotationPeriod time.Duration `json:"rotation_period"`
		NextRotation   time.Time     `json:"next_rotation"`
		DeletionTime   time.Time     `json:"deletion_time"`
	}
	if err := json.Unmarshal(o.Value, &f); err != nil {
		x.note(o.ID, nil)
		return
	}
	x.note(o.ID, &managed.Key{State: f.State, RotationPeriod: f.RotationPeriod, NextRotation: f.NextRotation, DeletionTime: f.DeletionTime})
}

// note records key id's record (k nil: its record did not decode).
func (x *sweepIndex) note(id string, k *managed.Key) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.due == nil {
		x.due = map[string]time.Time{}
	}
	if k == nil {
		x.due[id] = time.Time{}
		return
	}
	if at, ok := sweepDue(k); ok {
		x.due[id] = at
	} else {
		delete(x.due, id)
	}
}

// forget drops a deleted key.
func (x *sweepIndex) forget(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.due, id)
}

// scanned adds what a full scan saw (a key's record as the scan read it,
// perhaps older than the feed's note: adding only, so the index can only
// name too many keys), and marks the index built when the feed ran
// throughout the scan (it started in epoch at the scan's start).
func (x *sweepIndex) scanned(seen map[string]time.Time, epoch uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.due == nil {
		x.due = map[string]time.Time{}
	}
	for id, at := range seen {
		if cur, ok := x.due[id]; !ok || at.Before(cur) {
			x.due[id] = at
		}
	}
	x.built = x.following && x.epoch == epoch
}

// dueBy returns the keys that may be due at now when the index is built
// (ok false: scan every key instead), and the feed's epoch.
func (x *sweepIndex) dueBy(now time.Time) (ids []string, epoch uint64, ok bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.built {
		return nil, x.epoch, false
	}
	for id, at := range x.due {
		if !now.Before(at) {
			ids = append(ids, id)
		}
	}
	return ids, x.epoch, true
}
