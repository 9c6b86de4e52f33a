package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/managed"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newRegistry(t *testing.T) (*Registry, *clock, string) {
	t.Helper()
	return newRegistryTB(t)
}

func newRegistryTB(t testing.TB) (*Registry, *clock, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.db")
	st, err := store.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &clock{t: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
	return NewRegistry(st, c.Now), c, path
}

func aesKey(id string) *managed.Key {
	return &managed.Key{ID: id, Type: managed.AES256GCM, Mode: managed.ModeDerive, State: managed.StateEnabled, Primary: 1,
		Versions: []managed.Version{{Version: 1, RootKey: "softkms:root"}}, Labels: map[string]string{"app": "billing"}}
}

func TestCreateGetList(t *testing.T) {
	ctx := t.Context()
	r, _, _ := newRegistry(t)
	k, err := r.Create(ctx, aesKey("payments"))
	if err != nil {
		t.Fatal(err)
	}
	if k.Revision == 0 || k.Created.IsZero() {
		t.Errorf("Create = %+v, want a revision and a creation time", k)
	}
	if _, err := r.Create(ctx, aesKey("payments")); !errors.Is(err, managed.ErrAlreadyExists) {
		t.Errorf("second Create: err = %v, want ErrAlreadyExists", err)
	}
	got, err := r.Get(ctx, "payments")
	if err != nil || got.Labels["app"] != "billing" || got.Revision != k.Revision {
		t.Errorf("Get = %+v, %v", got, err)
	}
	if _, err := r.Get(ctx, "nope"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("Get(missing) err = %v", err)
	}
	if _, err := r.Get(ctx, "bad id!"); !errors.Is(err, managed.ErrInvalidArgument) {
		t.Errorf("Get(bad id) err = %v", err)
	}
	r.Create(ctx, aesKey("alpha"))
	keys, _, err := r.List(ctx)
	if err != nil || len(keys) != 2 || keys[0].ID != "alpha" {
		t.Errorf("List = %v, %v; want alpha, payments", keys, err)
	}
}

func TestValidate(t *testing.T) {
	ctx := t.Context()
	r, _, _ := newRegistry(t)
	for _, tc := range []struct {
		name string
		mod  func(*managed.Key)
		want string
	}{
		{"bad id", func(k *managed.Key) { k.ID = "-x" }, "key id"},
		{"bad type", func(k *managed.Key) { k.Type = "rsa" }, "key type"},
		{"bad mode", func(k *managed.Key) { k.Mode = "magic" }, "key mode"},
		{"derived hmac", func(k *managed.Key) { k.Type = managed.HMACSHA256; k.Derived = true }, "aes-256-gcm only"},
		{"derived backend", func(k *managed.Key) { k.Mode = managed.ModeBackend; k.Derived = true }, "backend-mode"},
		{"short rotation", func(k *managed.Key) { k.RotationPeriod = time.Hour }, "rotation period"},
		{"no versions", func(k *managed.Key) { k.Versions = nil }, "0 versions"},
		{"bad primary", func(k *managed.Key) { k.Primary = 2 }, "primary version"},
		{"min above primary", func(k *managed.Key) { k.MinDecryptionVersion = 2 }, "minimum decryption"},
		{"wrap without material", func(k *managed.Key) { k.Mode = managed.ModeWrap }, "wrapped material"},
		{"no root", func(k *managed.Key) { k.Versions[0].RootKey = "" }, "root key"},
		{"bad label", func(k *managed.Key) { k.Labels = map[string]string{"bad key": "x"} }, "label key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := aesKey("k")
			tc.mod(k)
			_, err := r.Create(ctx, k)
			if !errors.Is(err, managed.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Create = %v, want invalid argument containing %q", err, tc.want)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	ctx := t.Context()
	r, c, _ := newRegistry(t)
	k, _ := r.Create(ctx, aesKey("k"))
	step := func(name string, fn func(*managed.Key) error, wantState managed.State, wantErr error) {
		t.Helper()
		got, err := r.Update(ctx, "k", 0, fn)
		if wantErr != nil {
			if !errors.Is(err, wantErr) {
				t.Errorf("%s: err = %v, want %v", name, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.State != wantState {
			t.Errorf("%s: state = %s, want %s", name, got.State, wantState)
		}
		k = got
	}
	step("enable enabled", Enable, "", managed.ErrFailedPrecondition)
	step("disable", Disable, managed.StateDisabled, nil)
	if err := k.Usable(); !errors.Is(err, managed.ErrFailedPrecondition) || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("Usable() on disabled = %v", err)
	}
	step("rotate disabled", AddVersion(c.Now(), managed.Version{RootKey: "softkms:root"}), "", managed.ErrFailedPrecondition)
	step("enable", Enable, managed.StateEnabled, nil)
	step("schedule 1 day", ScheduleDeletion(c.Now(), 24*time.Hour), "", managed.ErrInvalidArgument)
	step("schedule default", ScheduleDeletion(c.Now(), 0), managed.StatePendingDeletion, nil)
	if want := c.Now().Add(30 * 24 * time.Hour); !k.DeletionTime.Equal(want) {
		t.Errorf("deletion time = %s, want %s", k.DeletionTime, want)
	}
	step("schedule twice", ScheduleDeletion(c.Now(), 0), "", managed.ErrFailedPrecondition)
	step("disable pending", Disable, "", managed.ErrFailedPrecondition)
	step("cancel", CancelDeletion, managed.StateDisabled, nil)
	step("cancel again", CancelDeletion, "", managed.ErrFailedPrecondition)
	step("enable", Enable, managed.StateEnabled, nil)
	step("rotate", AddVersion(c.Now(), managed.Version{RootKey: "softkms:root"}), managed.StateEnabled, nil)
	if k.Primary != 2 || len(k.Versions) != 2 || k.Versions[1].Version != 2 {
		t.Errorf("after rotate: primary %d, %d versions", k.Primary, len(k.Versions))
	}
	if err := k.CheckDecryptVersion(1); err != nil {
		t.Errorf("CheckDecryptVersion(1) = %v", err)
	}
	step("raise min version", func(k *managed.Key) error { k.MinDecryptionVersion = 2; return nil }, managed.StateEnabled, nil)
	if err := k.CheckDecryptVersion(1); !errors.Is(err, managed.ErrFailedPrecondition) {
		t.Errorf("CheckDecryptVersion(1) below minimum = %v", err)
	}
	if err := k.CheckDecryptVersion(3); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("CheckDecryptVersion(3) = %v", err)
	}
}

func TestUpdateCAS(t *testing.T) {
	ctx := t.Context()
	r, _, _ := newRegistry(t)
	k, _ := r.Create(ctx, aesKey("k"))
	if _, err := r.Update(ctx, "k", k.Revision+5, Disable); !errors.Is(err, managed.ErrConflict) {
		t.Errorf("Update at a stale revision: err = %v, want ErrConflict", err)
	}
	if _, err := r.Update(ctx, "k", k.Revision, Disable); err != nil {
		t.Errorf("Update at the right revision: %v", err)
	}
	// Concurrent label writers: every write lands.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			_, err := r.Update(ctx, "k", 0, func(k *managed.Key) error {
				k.Labels["w"+string(rune('a'+i))] = "x"
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, _ := r.Get(ctx, "k")
	if len(got.Labels) != 21 {
		t.Errorf("labels after 20 concurrent updates = %d, want 21 (a lost update)", len(got.Labels))
	}
}

func TestSweep(t *testing.T) {
	ctx := t.Context()
	r, c, _ := newRegistry(t)
	rot := aesKey("rotating")
	rot.RotationPeriod = 48 * time.Hour
	rot.NextRotation = c.Now().Add(48 * time.Hour)
	r.Create(ctx, rot)
	r.Create(ctx, aesKey("doomed"))
	r.Update(ctx, "doomed", 0, ScheduleDeletion(c.Now(), 7*24*time.Hour))

	rotate, deleted, err := r.Sweep(ctx, nil)
	if err != nil || len(rotate) != 0 || len(deleted) != 0 {
		t.Fatalf("Sweep at start = %v, %v, %v; want nothing due", rotate, deleted, err)
	}
	c.Advance(48 * time.Hour)
	rotate, _, _ = r.Sweep(ctx, nil)
	if len(rotate) != 1 || rotate[0].ID != "rotating" {
		t.Errorf("Sweep after 48h: rotate = %v", rotate)
	}
	c.Advance(5 * 24 * time.Hour)
	_, deleted, err = r.Sweep(ctx, nil)
	if err != nil || len(deleted) != 1 || deleted[0] != "doomed" {
		t.Errorf("Sweep after 7 days: deleted = %v, %v", deleted, err)
	}
	if _, err := r.Get(ctx, "doomed"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("deleted key still there: %v", err)
	}
}

func TestRestartKeepsKeys(t *testing.T) {
	ctx := t.Context()
	r, c, path := newRegistry(t)
	r.Create(ctx, aesKey("k"))
	r.Update(ctx, "k", 0, AddVersion(c.Now(), managed.Version{RootKey: "softkms:root"}))
	r.st.Close()
	st, err := store.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k, err := NewRegistry(st, c.Now).Get(ctx, "k")
	if err != nil || k.Primary != 2 || len(k.Versions) != 2 {
		t.Errorf("after restart: %+v, %v", k, err)
	}
}

func TestFollowSeesOtherWriters(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r1, c, _ := newRegistry(t)
	r2 := NewRegistry(r1.Store(), c.Now) // another node sharing the store
	done := make(chan struct{})
	go func() { r1.Follow(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	k, _ := r1.Create(ctx, aesKey("shared"))
	if got, _ := r1.Get(ctx, "shared"); got.State != managed.StateEnabled {
		t.Fatal("not cached as enabled")
	}
	// r2 disables the key behind r1's back; r1 must see it once its feed
	// has caught up with that revision.
	d, err := r2.Update(ctx, "shared", k.Revision, Disable)
	if err != nil {
		t.Fatal(err)
	}
	if err := r1.WaitFollowed(ctx, d.Revision); err != nil {
		t.Fatal(err)
	}
	if got, _ := r1.Get(ctx, "shared"); got.State != managed.StateDisabled {
		t.Errorf("r1 serves state %s after another writer disabled the key", got.State)
	}
	// Deletion too.
	r2.Update(ctx, "shared", 0, ScheduleDeletion(c.Now(), 0))
	c.Advance(31 * 24 * time.Hour)
	if _, deleted, err := r2.Sweep(ctx, nil); err != nil || len(deleted) != 1 {
		t.Fatalf("Sweep = %v, %v", deleted, err)
	}
	if err := r1.WaitFollowed(ctx, r1.Store().Revision()); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Get(ctx, "shared"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("r1 still serves a key another writer deleted: %v", err)
	}
}

func TestCachedGetIsCurrentAfterLocalWrites(t *testing.T) {
	ctx := t.Context()
	r, c, _ := newRegistry(t)
	r.Create(ctx, aesKey("k"))
	r.Get(ctx, "k")
	r.Update(ctx, "k", 0, AddVersion(c.Now(), managed.Version{RootKey: "softkms:root"}))
	if k, _ := r.Get(ctx, "k"); k.Primary != 2 {
		t.Errorf("cached Get after a local rotation: primary %d, want 2", k.Primary)
	}
}

// TestListServesCachedKeys: listings return the very copies Get serves
// for cached keys, so per-key memos downstream (the RPC layer's policy
// decisions) are shared between listings and Get; keys not cached are
// decoded for the listing and not cached by it.
func TestListServesCachedKeys(t *testing.T) {
	ctx := t.Context()
	r, _, _ := newRegistry(t)
	for _, id := range []string{"a", "b"} {
		if _, err := r.Create(ctx, aesKey(id)); err != nil {
			t.Fatal(err)
		}
	}
	// A registry on the same store that has cached nothing yet.
	cold := NewRegistry(r.Store(), nil)
	first, _, err := cold.List(ctx)
	if err != nil || len(first) != 2 {
		t.Fatalf("List = %d keys, %v; want 2", len(first), err)
	}
	if n := cold.Cached(); n != 0 {
		t.Errorf("List cached %d keys, want none", n)
	}
	for _, reg := range []*Registry{r, cold} {
		var got []*managed.Key
		for _, k := range first {
			g, err := reg.Get(ctx, k.ID)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, g)
		}
		listed, _, _ := reg.List(ctx)
		page, err := reg.Page(ctx, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		for i, k := range got {
			if listed[i] != k || page.Keys[i] != k {
				t.Errorf("key %q: List, Page and Get returned different copies", k.ID)
			}
		}
	}
}

// TestSweepRecordsFailedDeletion: a deletion that was audited but then
// failed (here: the key changed between the audit line and the delete) is
// recorded again with its error, and the key is left in place.
func TestSweepRecordsFailedDeletion(t *testing.T) {
	ctx := t.Context()
	r, c, _ := newRegistry(t)
	r.Create(ctx, aesKey("doomed"))
	r.Update(ctx, "doomed", 0, ScheduleDeletion(c.Now(), 7*24*time.Hour))
	c.Advance(8 * 24 * time.Hour)
	var calls []string
	_, deleted, err := r.Sweep(ctx, func(op, key string, err error) error {
		calls = append(calls, fmt.Sprintf("%s %s %v", op, key, err != nil))
		if err == nil {
			// Another writer changes the key before the deletion.
			_, uerr := r.Update(ctx, key, 0, func(k *managed.Key) error { k.Description = "changed"; return nil })
			return uerr
		}
		return nil
	})
	if !errors.Is(err, managed.ErrConflict) || len(deleted) != 0 {
		t.Errorf("Sweep = %v, %v; want nothing deleted and ErrConflict", deleted, err)
	}
	if want := []string{"DeleteKey doomed false", "DeleteKey doomed true"}; !slices.Equal(calls, want) {
		t.Errorf("recorded %v, want %v", calls, want)
	}
	if _, err := r.Get(ctx, "doomed"); err != nil {
		t.Errorf("doomed after a failed deletion: %v, want it still there", err)
	}
}

// flakyWatch is a store whose first Watch fails, as etcd's does while it
// cannot be reached.
type flakyWatch struct {
	store.Store
	failed atomic.Bool
}

func (f *flakyWatch) Watch(ctx context.Context, from uint64) (*store.Watcher, error) {
	if f.failed.CompareAndSwap(false, true) {
		return nil, errors.New("etcd unreachable")
	}
	return f.Store.Watch(ctx, from)
}

// A feed that cannot start is tried again: the follower does not give up
// and go on serving another writer's disabled key from its cache.
func TestFollowOutlivesAFailedWatch(t *testing.T) {
	defer func(d time.Duration) { followRetry = d }(followRetry)
	followRetry = time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r0, c, _ := newRegistry(t)
	flaky := &flakyWatch{Store: r0.Store()}
	r1 := NewRegistry(flaky, c.Now)
	r2 := NewRegistry(r0.Store(), c.Now)
	k, err := r1.Create(ctx, aesKey("shared"))
	if err != nil {
		t.Fatal(err)
	}
	r1.Get(ctx, "shared")
	done := make(chan struct{})
	go func() { r1.Follow(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	d, err := r2.Update(ctx, "shared", k.Revision, Disable)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := r1.WaitFollowed(wctx, d.Revision); err != nil {
		t.Fatalf("Follow did not follow after a failed Watch: %v", err)
	}
	if got, _ := r1.Get(ctx, "shared"); got.State != managed.StateDisabled {
		t.Errorf("r1 serves state %s after another writer disabled the key", got.State)
	}
	if !flaky.failed.Load() {
		t.Error("the first Watch was not tried")
	}
}
