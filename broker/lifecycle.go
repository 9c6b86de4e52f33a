package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keybroker/keybroker/managed"
)

// The lifecycle transitions, as functions for Registry.Update. Each checks
// that the transition is legal from the key's current state.

// Disable stops every operation on an enabled key.
func Disable(k *managed.Key) error {
	if k.State != managed.StateEnabled {
		return managed.Errorf(managed.ErrFailedPrecondition, "key %q is %s, only an enabled key can be disabled", k.ID, k.State)
	}
	k.State = managed.StateDisabled
	return nil
}

// Enable re-enables a disabled key.
func Enable(k *managed.Key) error {
	if k.State != managed.StateDisabled {
		return managed.Errorf(managed.ErrFailedPrecondition, "key %q is %s, only a disabled key can be enabled", k.ID, k.State)
	}
	k.State = managed.StateEnabled
	return nil
}

// ScheduleDeletion puts the key in pending deletion until now+window
// (0 means DefaultPendingWindow).
func ScheduleDeletion(now time.Time, window time.Duration) func(*managed.Key) error {
	return func(k *managed.Key) error {
		if window == 0 {
			window = managed.DefaultPendingWindow
		}
		if window < managed.MinPendingWindow || window > managed.MaxPendingWindow {
			return managed.Errorf(managed.ErrInvalidArgument, "pending window %s out of %s..%s", window, managed.MinPendingWindow, managed.MaxPendingWindow)
		}
		if k.State == managed.StatePendingDeletion {
			return managed.Errorf(managed.ErrFailedPrecondition, "key %q is already pending deletion on %s", k.ID, k.DeletionTime.Format(time.RFC3339))
		}
		k.State = managed.StatePendingDeletion
		k.DeletionTime = now.Add(window).UTC()
		return nil
	}
}

// CancelDeletion returns a pending key to the disabled state (an admin
// re-enables it deliberately).
func CancelDeletion(k *managed.Key) error {
	if k.State != managed.StatePendingDeletion {
		return managed.Errorf(managed.ErrFailedPrecondition, "key %q is %s, not pending deletion", k.ID, k.State)
	}
	k.State = managed.StateDisabled
	k.DeletionTime = time.Time{}
	return nil
}

// AddVersion appends v as the new primary version. It refuses keys that are
// not enabled.
func AddVersion(now time.Time, v managed.Version) func(*managed.Key) error {
	return func(k *managed.Key) error {
		if err := k.Usable(); err != nil {
			return err
		}
		if len(k.Versions) >= managed.MaxVersions {
			return managed.Errorf(managed.ErrFailedPrecondition, "key %q has %d versions, the limit", k.ID, managed.MaxVersions)
		}
		v.Version = uint32(len(k.Versions) + 1)
		v.Created = now.UTC()
		k.Versions = append(k.Versions, v)
		k.Primary = v.Version
		if k.RotationPeriod > 0 {
			k.NextRotation = now.Add(k.RotationPeriod).UTC()
		}
		return nil
	}
}

// Sweep finds the work the clock has made due: keys whose rotation is due
// and keys whose pending window has passed. Deletions are carried out here;
// rotations need material, so they are returned for the caller.
//
// record (nil: none) audits each deletion: it is called with a nil err
// before a key is deleted — if it fails the key is left for the next sweep
// and the error returned, so a key is never destroyed without its audit
// line — and again with the error if the deletion then fails.
// rotationDue says whether k's rotation period has run out at now.
func rotationDue(k *managed.Key, now time.Time) bool {
	return k.State == managed.StateEnabled && k.RotationPeriod > 0 && !k.NextRotation.IsZero() && !now.Before(k.NextRotation)
}

func (r *Registry) Sweep(ctx context.Context, record SweepRecorder) (rotate []*managed.Key, deleted []string, err error) {
	now := r.now()
	ids, epoch, ok := r.sweep.dueBy(now)
	if !ok {
		return r.sweepAll(ctx, record, now, epoch)
	}
	// The index names the keys that may be due (sweepIndex): each is
	// judged on its record in the store, as a scan would.
	slices.Sort(ids)
	for _, id := range ids {
		k, err := r.load(ctx, id)
		if errors.Is(err, managed.ErrNotFound) {
			continue // deleted since the feed reported it
		}
		if err != nil {
			return rotate, deleted, err
		}
		if rotate, deleted, err = r.sweepKey(ctx, k, now, record, rotate, deleted); err != nil {
			return rotate, deleted, err
		}
	}
	r.sweeps.indexed.Add(1)
	return rotate, deleted, nil
}

// sweepAll is Sweep over every key, a page at a time from the last id
// seen, so that a sweep of a million keys holds a page of them (and the
// few due), not every key. It builds the sweep index as it goes.
func (r *Registry) sweepAll(ctx context.Context, record SweepRecorder, now time.Time, epoch uint64) (rotate []*managed.Key, deleted []string, err error) {
	r.sweeps.scans.Add(1)
	seen := map[string]time.Time{}
	for after := ""; ; {
		p, err := r.Page(ctx, after, sweepPage)
		if err != nil {
			return rotate, deleted, err
		}
		for _, k := range p.Keys {
			if at, ok := sweepDue(k); ok {
				seen[k.ID] = at
			}
			if rotate, deleted, err = r.sweepKey(ctx, k, now, record, rotate, deleted); err != nil {
				return rotate, deleted, err
			}
		}
		if !p.More {
			r.sweep.scanned(seen, epoch)
			return rotate, deleted, nil
		}
		after = p.Keys[len(p.Keys)-1].ID
	}
}

// sweepKey does what k has due: its deletion, carried out here, or its
// rotation, added to rotate for the caller.
func (r *Registry) sweepKey(ctx context.Context, k *managed.Key, now time.Time, record SweepRecorder, rotate []*managed.Key, deleted []string) ([]*managed.Key, []string, error) {
	switch {
	case k.State == managed.StatePendingDeletion && !now.Before(k.DeletionTime):
		if record != nil {
			if err := record("DeleteKey", k.ID, nil); err != nil {
				return rotate, deleted, fmt.Errorf("deleting %q: not audited, left for the next sweep: %w", k.ID, err)
			}
		}
		if err := r.Delete(ctx, k); err != nil {
			if record != nil {
				// Its audit line said it would go; say it did not.
				_ = record("DeleteKey", k.ID, err)
			}
			return rotate, deleted, err
		}
		if err := r.dropAliases(ctx, k); err != nil {
			return rotate, deleted, fmt.Errorf("deleting the aliases of %q: %w", k.ID, err)
		}
		deleted = append(deleted, k.ID)
	case rotationDue(k, now):
		rotate = append(rotate, k)
	}
	return rotate, deleted, nil
}

// sweepPage is how many keys Sweep reads at a time when it scans them
// all: some 10 MB of decoded keys. etcd answers each read by visiting every
// key from the page's first to the last in the registry (to count them),
// so a scan's cost to etcd falls with the page's size: at a million keys,
// pages of 1,000 kept etcd busy for minutes after every central's start.
const sweepPage = 10_000
