package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/secret"
)

// gatedMaterials is a material source that holds every call until open is
// closed, so a test can line callers up in one flight.
type gatedMaterials struct {
	ms      *Materials
	entered chan struct{} // receives once per call
	open    chan struct{}
}

func (g *gatedMaterials) Material(ctx context.Context, k *managed.Key, v uint32) (*secret.Bytes, error) {
	g.entered <- struct{}{}
	<-g.open
	return g.ms.Material(ctx, k, v)
}

// TestBudgetRefusalNotShared: client A, whose budget is spent, leads the
// flight that makes a data key and its material; client B joins it. A is
// refused, but B is not handed A's refusal: it runs the call under its own
// budget and succeeds.
func TestBudgetRefusalNotShared(t *testing.T) {
	r, _ := softRoots(t)
	frozen := time.Unix(1_800_000_000, 0)
	b, err := budget.New(budget.Config{Rate: 1, Burst: 1, Now: func() time.Time { return frozen }})
	if err != nil {
		t.Fatal(err)
	}
	r.SetBudget(b)
	a := identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "a"}
	bb := identity.Identity{TrustDomain: "kb.test", Kind: identity.Client, Name: "b"}
	if !b.Take(a.String()) {
		t.Fatal("A's first call was refused")
	}
	k := &managed.Key{ID: "k", Type: managed.AES256GCM, Mode: managed.ModeDerive, State: managed.StateEnabled, Primary: 1,
		Versions: []managed.Version{{Version: 1, RootKey: "softkms:prf-root"}}}
	synctest.Test(t, func(t *testing.T) {
		src := &gatedMaterials{ms: NewMaterials(r, 100, time.Hour, nil), entered: make(chan struct{}), open: make(chan struct{})}
		ops, err := managed.New(managed.Config{Material: src})
		if err != nil {
			t.Fatal(err)
		}
		errA, errB := make(chan error, 1), make(chan error, 1)
		go func() {
			_, err := ops.Encrypt(identity.NewContext(t.Context(), a), k, []byte("x"), nil)
			errA <- err
		}()
		<-src.entered // A leads, and waits in the material source
		go func() {
			_, err := ops.Encrypt(identity.NewContext(t.Context(), bb), k, []byte("x"), nil)
			errB <- err
		}()
		synctest.Wait() // B has joined A's flight
		close(src.open)
		go func() {
			for range src.entered { // B's own run, if it makes one
			}
		}()
		if err := <-errA; !errors.Is(err, managed.ErrResourceExhausted) {
			t.Errorf("A's Encrypt = %v, want ErrResourceExhausted", err)
		} else if strings.Contains(err.Error(), "client/a") {
			t.Errorf("A's refusal %q names a principal", err)
		}
		if err := <-errB; err != nil {
			t.Errorf("B's Encrypt, joined to A's refused flight = %v, want success", err)
		}
		close(src.entered)
	})
}
