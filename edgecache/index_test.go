package edgecache

import (
	"bytes"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/google/btree"
	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/managed"
)

// TestListKeysPagesByCursor pages through an edge's keys while keys are
// created and deleted before and after the cursor: every key present
// from the first page to the last is listed exactly once, in id order,
// and keys created after the cursor are listed too.
func TestListKeysPagesByCursor(t *testing.T) {
	ec := scaleCache(t, 1000, 0)
	perf := &performer{c: ec}
	rev := uint64(1)
	apply := func(ev *kbv1.WatchEvent) {
		t.Helper()
		rev++
		ev.Revision = rev
		if err := ec.apply(ev); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	deleted := map[string]bool{}
	var seen []string
	token := ""
	for p := 0; ; p++ {
		keys, next, err := perf.ListKeys(t.Context(), nil, 100, token, nil)
		if err != nil {
			t.Fatalf("ListKeys page %d: %v", p, err)
		}
		for _, k := range keys {
			seen = append(seen, k.ID)
		}
		if next == "" {
			break
		}
		if next != managed.PageToken(nil, keys[len(keys)-1].ID) {
			t.Fatalf("page %d: next token %q, want the cursor of the page's last id %q", p, next, keys[len(keys)-1].ID)
		}
		token = next
		// Behind the cursor and ahead of it: a deletion and a creation each.
		for _, id := range []string{fmt.Sprintf("key-%07d", p*100+5), fmt.Sprintf("key-%07d", p*100+150)} {
			apply(&kbv1.WatchEvent{Event: &kbv1.WatchEvent_DeletedKeyId{DeletedKeyId: id}})
			deleted[id] = true
		}
		apply(&kbv1.WatchEvent{Event: &kbv1.WatchEvent_Key{Key: scaleKey(2000+p, rev, 0)}})
		ek := scaleKey(0, rev, 0)
		ek.Metadata.KeyId = fmt.Sprintf("key-%07d.x", p*100+120) // between existing ids, ahead
		apply(&kbv1.WatchEvent{Event: &kbv1.WatchEvent_Key{Key: ek}})
	}
	if !slices.IsSorted(seen) || len(slices.Compact(slices.Clone(seen))) != len(seen) {
		t.Errorf("listed ids are not strictly increasing: %d ids", len(seen))
	}
	listed := map[string]bool{}
	for _, id := range seen {
		listed[id] = true
	}
	for i := range 1000 {
		if id := fmt.Sprintf("key-%07d", i); !deleted[id] && !listed[id] {
			t.Errorf("%s stayed throughout but was not listed", id)
		}
	}
	for p := range 9 {
		if id := fmt.Sprintf("key-%07d.x", p*100+120); !listed[id] {
			t.Errorf("%s was created ahead of the cursor but not listed", id)
		}
	}
}

// TestListKeysReadsAConsistentView: a page walks the index as it was
// when the page began, whatever changes apply meanwhile, and the
// replica's index and key map agree after creations, deletions and a
// snapshot.
func TestListKeysReadsAConsistentView(t *testing.T) {
	ec := scaleCache(t, 300, 0)
	ec.mu.RLock()
	view := ec.sorted
	ec.mu.RUnlock()
	for i := range 300 {
		ev := &kbv1.WatchEvent{Revision: uint64(i + 2), Event: &kbv1.WatchEvent_DeletedKeyId{DeletedKeyId: fmt.Sprintf("key-%07d", i)}}
		if i%2 == 0 {
			ev.Event = &kbv1.WatchEvent_Key{Key: scaleKey(1000+i, uint64(i+2), 0)}
		}
		if err := ec.apply(ev); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	keys, next, err := page(view, nil, managed.MaxListPageSize, "", nil)
	if err != nil || next != "" || len(keys) != 300 || keys[0].ID != "key-0000000" || keys[299].ID != "key-0000299" {
		t.Errorf("the view taken before the changes lists %d keys (%v, next %q), want key-0000000..key-0000299", len(keys), err, next)
	}
	check := func(when string) {
		t.Helper()
		ec.mu.RLock()
		defer ec.mu.RUnlock()
		var ids []string
		ec.sorted.Ascend(func(k *managed.Key) bool {
			if ec.keys[k.ID] == nil || ec.keys[k.ID].key != k {
				t.Errorf("%s: the index holds %s, which the replica does not", when, k.ID)
			}
			ids = append(ids, k.ID)
			return true
		})
		if len(ids) != len(ec.keys) || !slices.IsSorted(ids) {
			t.Errorf("%s: the index lists %d keys (sorted: %v), the replica holds %d", when, len(ids), slices.IsSorted(ids), len(ec.keys))
		}
	}
	check("after changes")
	snap := &kbv1.EdgeSnapshot{Keys: []*kbv1.EdgeKey{scaleKey(7, 400, 0), scaleKey(3, 400, 0)}}
	if err := ec.apply(&kbv1.WatchEvent{Revision: 400, Event: &kbv1.WatchEvent_Snapshot{Snapshot: snap}}); err != nil {
		t.Fatalf("apply snapshot: %v", err)
	}
	check("after a snapshot")
	if keys, _, _ := page(ec.sorted, nil, 10, "", nil); len(keys) != 2 {
		t.Errorf("after a snapshot of 2 keys ListKeys lists %d", len(keys))
	}
}

// TestSealedMaterialFromDisk: the material Watch sealed to the edge is
// read from the key's record on disk, and only for the incarnation of the
// key that record is (a key created again under the id has another salt).
func TestSealedMaterialFromDisk(t *testing.T) {
	ec := scaleCache(t, 3, 120)
	k := replicaKeyOf(ec, "key-0000001")
	if blob := ec.sealedBlob(k, 1); !bytes.Equal(blob, scaleKey(1, 1, 120).GetVersions()[0].GetSealedMaterial()) {
		t.Errorf("sealedBlob(key-0000001, 1) = %d bytes, want the 120 Watch carried", len(blob))
	}
	if blob := ec.sealedBlob(k, 2); blob != nil {
		t.Errorf("sealedBlob of a version Watch did not carry = %d bytes, want none", len(blob))
	}
	other := k.Clone()
	other.Salt = bytes.Repeat([]byte{9}, 32)
	if blob := ec.sealedBlob(other, 1); blob != nil {
		t.Errorf("sealedBlob of another incarnation of key-0000001 = %d bytes, want none", len(blob))
	}
}

// TestLabelsShared: keys with the same labels share one map; keys with
// other labels keep theirs, with the labels they were sent.
func TestLabelsShared(t *testing.T) {
	ec := scaleCache(t, 100, 0)
	a, b, c := replicaKeyOf(ec, "key-0000001"), replicaKeyOf(ec, "key-0000051"), replicaKeyOf(ec, "key-0000002")
	if reflect.ValueOf(a.Labels).UnsafePointer() != reflect.ValueOf(b.Labels).UnsafePointer() {
		t.Errorf("keys with labels %v and %v do not share a map", a.Labels, b.Labels)
	}
	if want := map[string]string{"owner": "app", "team": "t2"}; !maps.Equal(c.Labels, want) {
		t.Errorf("key-0000002 labels %v, want %v", c.Labels, want)
	}
}

// TestListKeysWhileApplying lists pages while keys are created and
// deleted (run with -race): every page is in id order, after its cursor,
// and of the size asked for but the last.
func TestListKeysWhileApplying(t *testing.T) {
	ec := scaleCache(t, 500, 0)
	perf := &performer{c: ec}
	done := make(chan struct{})
	errs := make(chan string, 1)
	go func() {
		defer close(done)
		for range 20 {
			for token := ""; ; {
				keys, next, err := perf.ListKeys(t.Context(), nil, 37, token, nil)
				ids := make([]string, 0, len(keys))
				for _, k := range keys {
					ids = append(ids, k.ID)
				}
				msg := ""
				switch {
				case err != nil:
					msg = err.Error()
				case !slices.IsSorted(ids) || (len(ids) > 0 && ids[0] <= token):
					msg = fmt.Sprintf("page after %q not in order after its cursor: %v", token, ids)
				case next != "" && len(ids) != 37:
					msg = fmt.Sprintf("page after %q has %d keys and a next page", token, len(ids))
				}
				if msg != "" {
					errs <- msg
					return
				}
				if next == "" {
					break
				}
				token = next
			}
		}
	}()
	for i := range 400 {
		ev := &kbv1.WatchEvent{Revision: uint64(i + 2), Event: &kbv1.WatchEvent_Key{Key: scaleKey(500+i, uint64(i+2), 0)}}
		if i%2 == 1 {
			ev.Event = &kbv1.WatchEvent_DeletedKeyId{DeletedKeyId: fmt.Sprintf("key-%07d", i)}
		}
		if err := ec.apply(ev); err != nil {
			t.Fatalf("apply: %v", err)
		}
	}
	<-done
	select {
	case e := <-errs:
		t.Error(e)
	default:
	}
}

// TestPageTokensAcrossNodes: the edge pages with the central's cursor
// tokens (managed.Page), so a listing moves between nodes: the same keys
// give the same pages and tokens at both, and a token from one continues
// at the other.
func TestPageTokensAcrossNodes(t *testing.T) {
	var sorted []*managed.Key
	tree := btree.NewG(32, func(a, b *managed.Key) bool { return a.ID < b.ID })
	for i := range 250 {
		k := &managed.Key{ID: fmt.Sprintf("k-%04d", i), Labels: map[string]string{"even": fmt.Sprint(i%2 == 0)}}
		sorted = append(sorted, k)
		tree.ReplaceOrInsert(k)
	}
	sel := map[string]string{"even": "true"}
	central, edge := "", ""
	for range 3 {
		cKeys, cNext, err := managed.Page(sorted, sel, 40, central, nil)
		if err != nil {
			t.Fatal(err)
		}
		eKeys, eNext, err := page(tree, sel, 40, central, nil) // the central's token, at the edge
		if err != nil {
			t.Fatal(err)
		}
		if len(cKeys) != len(eKeys) || cNext != eNext || cKeys[0].ID != eKeys[0].ID {
			t.Fatalf("central and edge disagree: %d keys, next %q; %d keys, next %q", len(cKeys), cNext, len(eKeys), eNext)
		}
		central, edge = cNext, eNext
	}
	if _, _, err := page(tree, map[string]string{"even": "false"}, 40, edge, nil); err == nil {
		t.Error("a token presented with another selector is accepted at the edge")
	}
}
