package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/managed"
)

// TestAliases: a named alias names one key, which lists it; it is refused
// when taken, when it is a key's id, for a key pending deletion, and
// between keys of different types; it moves (the old key stops listing
// it) and goes; a key deleted by the sweep takes its aliases' records
// with it, and the name can be given again.
func TestAliases(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.create(t, "a", managed.AES256GCM, managed.ModeDerive, "", false)
	e.create(t, "b", managed.AES256GCM, managed.ModeDerive, "", false)
	e.create(t, "mac", managed.HMACSHA256, managed.ModeDerive, "", false)
	lists := func(id string) []string {
		t.Helper()
		k, err := e.svc.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return k.Aliases
	}
	target := func(name string) string {
		t.Helper()
		id, err := e.svc.AliasTarget(ctx, name)
		if err != nil && !errors.Is(err, managed.ErrNotFound) {
			t.Fatal(err)
		}
		return id
	}

	if k, err := e.svc.CreateAlias(ctx, "billing/prod", "a"); err != nil || !slices.Equal(k.Aliases, []string{"billing/prod"}) {
		t.Fatalf("CreateAlias = %v, %v", k, err)
	}
	if got := target("billing/prod"); got != "a" {
		t.Errorf("AliasTarget = %q, want a", got)
	}
	_, err := e.svc.CreateAlias(ctx, "billing/prod", "b")
	wantErr(t, "CreateAlias of a taken alias", err, managed.ErrAlreadyExists)
	_, err = e.svc.CreateAlias(ctx, "b", "a")
	wantErr(t, "CreateAlias named as a key", err, managed.ErrAlreadyExists)
	_, err = e.svc.CreateKey(ctx, CreateParams{ID: "billing/prod", Type: managed.AES256GCM, Mode: managed.ModeDerive})
	wantErr(t, "CreateKey named as an alias", err, managed.ErrAlreadyExists)
	_, err = e.svc.CreateAlias(ctx, "aws/s3", "a")
	wantErr(t, "CreateAlias in aws/", err, managed.ErrInvalidArgument)
	_, err = e.svc.UpdateAlias(ctx, "billing/prod", "a", "mac")
	wantErr(t, "UpdateAlias to a key of another type", err, managed.ErrFailedPrecondition)
	_, err = e.svc.UpdateAlias(ctx, "billing/prod", "b", "a")
	wantErr(t, "UpdateAlias from a key the alias does not name", err, managed.ErrConflict)
	if !slices.Equal(lists("b"), nil) || target("billing/prod") != "a" {
		t.Fatalf("refusals changed something: b lists %v, alias names %q", lists("b"), target("billing/prod"))
	}

	if _, err := e.svc.UpdateAlias(ctx, "billing/prod", "a", "b"); err != nil {
		t.Fatal(err)
	}
	if target("billing/prod") != "b" || !slices.Equal(lists("b"), []string{"billing/prod"}) || lists("a") != nil {
		t.Errorf("after UpdateAlias: names %q, a lists %v, b lists %v; want b alone", target("billing/prod"), lists("a"), lists("b"))
	}
	_, err = e.svc.DeleteAlias(ctx, "billing/prod", "a")
	wantErr(t, "DeleteAlias naming the wrong key", err, managed.ErrConflict)
	if _, err := e.svc.DeleteAlias(ctx, "billing/prod", "b"); err != nil {
		t.Fatal(err)
	}
	if target("billing/prod") != "" || lists("b") != nil {
		t.Errorf("after DeleteAlias: names %q, b lists %v", target("billing/prod"), lists("b"))
	}

	// Pending deletion: no new alias; the sweep takes the key's.
	if _, err := e.svc.CreateAlias(ctx, "doomed", "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ScheduleDeletion(ctx, "b", managed.MinPendingWindow); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.CreateAlias(ctx, "late", "b")
	wantErr(t, "CreateAlias for a key pending deletion", err, managed.ErrFailedPrecondition)
	if target("late") != "" {
		t.Error("a refused CreateAlias left its record")
	}
	e.clock.Advance(managed.MinPendingWindow + 1)
	if _, deleted, err := e.svc.Sweep(ctx, nil); err != nil || !slices.Equal(deleted, []string{"b"}) {
		t.Fatalf("Sweep = %v, %v", deleted, err)
	}
	if target("doomed") != "" {
		t.Error("the alias of a deleted key still names it")
	}
	if _, err := e.svc.CreateAlias(ctx, "doomed", "a"); err != nil {
		t.Errorf("CreateAlias of a deleted key's alias: %v", err)
	}
}

// TestAliasOnceAcrossCentrals: two centrals on one etcd give one alias to
// two keys at once, round after round: exactly one wins each time, the
// other hears AlreadyExists, and only the winner's key lists it.
func TestAliasOnceAcrossCentrals(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, b := twoCentrals(t, ctx, newEnv(t), "/aliases/", "ka", "kb")
	for i := range 20 {
		name := fmt.Sprintf("contended-%d", i)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for j, c := range []struct {
			svc *Service
			key string
		}{{a, "ka"}, {b, "kb"}} {
			wg.Go(func() { _, errs[j] = c.svc.CreateAlias(ctx, name, c.key) })
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, managed.ErrAlreadyExists):
				t.Fatalf("%s: %v, want AlreadyExists for the loser", name, err)
			}
		}
		if won != 1 {
			t.Fatalf("%s: %d centrals gave it away (%v)", name, won, errs)
		}
		winner, err := a.AliasTarget(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"ka", "kb"} {
			k, err := a.reg.load(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if slices.Contains(k.Aliases, name) != (id == winner) {
				t.Errorf("%s names %s, and key %s lists %v", name, winner, id, k.Aliases)
			}
		}
	}
}

// TestAliasLookupsFollowTheFeed: a central remembers its alias lookups
// (so alias/<name> costs no store read per call) and forgets them when the
// feed reports another central's change: a created alias it had looked up
// as absent, a move, a removal — each answered afresh once followed.
func TestAliasLookupsFollowTheFeed(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, b := twoCentrals(t, ctx, newEnv(t), "/memo/", "k1", "k2")
	// atB is what b answers once it has followed a's last change (k, or
	// the store's revision).
	atB := func(name string) string {
		t.Helper()
		if err := b.Registry().WaitFollowed(ctx, a.Registry().Store().Revision()); err != nil {
			t.Fatal(err)
		}
		id, err := b.AliasTarget(ctx, name)
		if err != nil && !errors.Is(err, managed.ErrNotFound) {
			t.Fatal(err)
		}
		return id
	}
	if got := atB("app"); got != "" {
		t.Fatalf("b resolves alias/app to %q before it exists", got)
	}
	steps := []struct {
		what string
		do   func() error
		want string
	}{
		{"created at a", func() error { _, err := a.CreateAlias(ctx, "app", "k1"); return err }, "k1"},
		{"moved at a", func() error { _, err := a.UpdateAlias(ctx, "app", "k1", "k2"); return err }, "k2"},
		{"deleted at a", func() error { _, err := a.DeleteAlias(ctx, "app", "k2"); return err }, ""},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if got := atB("app"); got != s.want {
			t.Errorf("alias/app %s: b resolves it to %q, want %q", s.what, got, s.want)
		}
		if got := atB("app"); got != s.want {
			t.Errorf("alias/app %s: b's remembered answer is %q, want %q", s.what, got, s.want)
		}
	}
}

// BenchmarkAliasTarget: resolving alias/<name> at a central on etcd, read
// from the store every time (as before the lookups were remembered) and
// remembered; both for a named alias and for alias/<id> of a key, which
// is looked up as an alias first and found to be none.
func BenchmarkAliasTarget(b *testing.B) {
	e := newEnv(b)
	etcd := etcdtest.Start(b, 1)
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	st, err := store.OpenEtcd(ctx, store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/bench/"})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	svc, err := NewService(ServiceConfig{Registry: NewRegistry(st, e.clock.Now), Roots: e.roots, Materials: NewMaterials(e.roots, 100, time.Hour, e.clock.Now),
		DefaultRoots: map[managed.Mode]string{managed.ModeDerive: "softkms:prf-root"}, Now: e.clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := svc.CreateKey(ctx, CreateParams{ID: "k1", Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
		b.Fatal(err)
	}
	if _, err := svc.CreateAlias(ctx, "app", "k1"); err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"app", "k1"} {
		b.Run(name+"/store-read", func(b *testing.B) {
			for b.Loop() {
				if _, _, err := svc.reg.aliasTarget(ctx, name); err != nil && !errors.Is(err, managed.ErrNotFound) {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/remembered", func(b *testing.B) {
			for b.Loop() {
				if _, err := svc.AliasTarget(ctx, name); err != nil && !errors.Is(err, managed.ErrNotFound) {
					b.Fatal(err)
				}
			}
		})
	}
}
