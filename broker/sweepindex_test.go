package broker

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keybroker/keybroker/managed"
)

// TestSweepIndex: with the feed followed, the first sweep scans every key
// and builds the index; later sweeps read only the keys the index names
// and still find every rotation and deletion due — keys that another
// writer (a second registry on the store, as another central) gave a
// rotation period or scheduled for deletion after the scan included, and
// a key deleted behind its back skipped.
func TestSweepIndex(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r, c, _ := newRegistry(t)
	other := NewRegistry(r.Store(), c.Now)
	done := make(chan struct{})
	go func() { r.Follow(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	followed := func() {
		t.Helper()
		if err := r.WaitFollowed(ctx, r.Store().Revision()); err != nil {
			t.Fatal(err)
		}
	}

	for i := range 300 {
		k := aesKey(fmt.Sprintf("plain-%03d", i))
		if i < 5 {
			k.ID = fmt.Sprintf("rotating-%d", i)
			k.RotationPeriod = 24 * time.Hour
			k.NextRotation = c.Now().Add(24 * time.Hour)
		}
		if _, err := r.Create(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	followed()
	if rot, del, err := r.Sweep(ctx, nil); err != nil || len(rot)+len(del) != 0 {
		t.Fatalf("first sweep = %v, %v, %v; want nothing due", rot, del, err)
	}
	if s, i := r.sweeps.scans.Load(), r.sweeps.indexed.Load(); s != 1 || i != 0 {
		t.Fatalf("first sweep: %d scans, %d indexed sweeps; want the scan", s, i)
	}

	// After the scan, by the other writer: a period for a plain key, two
	// deletions scheduled, one rotating key deleted outright.
	if _, err := other.Update(ctx, "plain-100", 0, func(k *managed.Key) error {
		k.RotationPeriod, k.NextRotation = 24*time.Hour, c.Now().Add(12*time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"plain-200", "plain-201"} {
		if _, err := other.Update(ctx, id, 0, ScheduleDeletion(c.Now(), managed.MinPendingWindow)); err != nil {
			t.Fatal(err)
		}
	}
	gone, err := other.Get(ctx, "rotating-4")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	followed()

	c.Advance(25 * time.Hour)
	rot, del, err := r.Sweep(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range rot {
		ids = append(ids, k.ID)
	}
	slices.Sort(ids)
	if want := []string{"plain-100", "rotating-0", "rotating-1", "rotating-2", "rotating-3"}; !slices.Equal(ids, want) || len(del) != 0 {
		t.Errorf("sweep after 25h: rotate %v, deleted %v; want rotate %v", ids, del, want)
	}
	c.Advance(managed.MinPendingWindow)
	if _, del, err = r.Sweep(ctx, nil); err != nil || !slices.Equal(del, []string{"plain-200", "plain-201"}) {
		t.Errorf("sweep after the pending window: deleted %v, %v; want plain-200 and plain-201", del, err)
	}
	if s, i := r.sweeps.scans.Load(), r.sweeps.indexed.Load(); s != 1 || i != 2 {
		t.Errorf("%d scans, %d indexed sweeps; want 1 scan and 2 sweeps from the index", s, i)
	}
	followed()
	r.sweep.mu.Lock()
	n := len(r.sweep.due)
	r.sweep.mu.Unlock()
	if n != 5 { // rotating-0..3 and plain-100; the deleted keys are gone
		t.Errorf("the index names %d keys, want 5", n)
	}
}

// TestSweepWithoutFeedScans: a registry whose feed is not followed cannot
// trust an index, and scans every key at every sweep.
func TestSweepWithoutFeedScans(t *testing.T) {
	ctx := t.Context()
	r, c, _ := newRegistry(t)
	k := aesKey("rotating")
	k.RotationPeriod, k.NextRotation = 24*time.Hour, c.Now().Add(24*time.Hour)
	if _, err := r.Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, _, err := r.Sweep(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.Advance(24 * time.Hour)
	if rot, _, err := r.Sweep(ctx, nil); err != nil || len(rot) != 1 {
		t.Errorf("sweep after 24h = %v, %v; want the rotation", rot, err)
	}
	if s, i := r.sweeps.scans.Load(), r.sweeps.indexed.Load(); s != 3 || i != 0 {
		t.Errorf("%d scans, %d indexed sweeps; want 3 scans", s, i)
	}
}

// TestFollowReportsAccessKeyChanges: the feed tells OnAccessKeyChange of
// every access key whose record another writer changed (a central node's
// signing keys forget a key revoked at another), and "" when it starts.
func TestFollowReportsAccessKeyChanges(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r, _, _ := newRegistry(t)
	heard := make(chan string, 8)
	r.OnAccessKeyChange(func(id string) { heard <- id })
	done := make(chan struct{})
	go func() { r.Follow(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if got := <-heard; got != "" {
		t.Fatalf("at the feed's start: %q, want \"\"", got)
	}
	if _, err := r.Store().Put(ctx, KindAccessKeys, "KBAKAAAAAAAAAAAAAAAB", []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(ctx, aesKey("not-an-access-key")); err != nil {
		t.Fatal(err)
	}
	if err := r.WaitFollowed(ctx, r.Store().Revision()); err != nil {
		t.Fatal(err)
	}
	close(heard)
	var got []string
	for id := range heard {
		got = append(got, id)
	}
	if !slices.Equal(got, []string{"KBAKAAAAAAAAAAAAAAAB"}) {
		t.Errorf("heard %q, want the access key alone", got)
	}
}
