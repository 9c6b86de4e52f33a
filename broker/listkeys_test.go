package broker

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/keybroker/keybroker/managed"
)

// TestListKeysCursor lists 2,500 keys in pages of 100 from the cursor:
// every key once and in order; keys created and deleted between pages
// ahead of the cursor are listed or not as they are when reached, one
// created behind it is not, and nothing repeats or is skipped. Tokens are
// checked: one altered, raw, or presented with another selector is
// refused.
func TestListKeysCursor(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	const n = 2500
	createKeys(t, e, n)
	want := map[string]bool{}
	for i := range n {
		want[fmt.Sprintf("tenant-%07d", i)] = true
	}
	var got []string
	token := ""
	for page := 0; ; page++ {
		keys, next, err := e.svc.ListKeys(ctx, nil, 100, token, nil)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		if next != "" && len(keys) != 100 {
			t.Errorf("page %d holds %d keys and a token, want 100", page, len(keys))
		}
		for _, k := range keys {
			got = append(got, k.ID)
		}
		if page == 5 {
			// Between pages: created ahead of the cursor (listed), behind
			// it (not), and deleted ahead of it (not).
			for _, id := range []string{"tenant-0000950a", "tenant-0000001a"} {
				if _, err := e.svc.CreateKey(ctx, CreateParams{ID: id, Type: managed.AES256GCM, Mode: managed.ModeDerive}); err != nil {
					t.Fatal(err)
				}
			}
			k, err := e.svc.Registry().Get(ctx, "tenant-0001200")
			if err != nil {
				t.Fatal(err)
			}
			if err := e.svc.Registry().Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
			want["tenant-0000950a"], want["tenant-0001200"] = true, false
		}
		if token = next; token == "" {
			break
		}
	}
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("listing is not in strictly increasing id order: a key repeated or out of order")
	}
	var wantIDs []string
	for id, ok := range want {
		if ok {
			wantIDs = append(wantIDs, id)
		}
	}
	slices.Sort(wantIDs)
	if !slices.Equal(got, wantIDs) {
		t.Errorf("listed %d keys, want %d: first difference at %d", len(got), len(wantIDs), firstDiff(got, wantIDs))
	}

	// A selector and a visibility filter: pages are full and tokens name
	// only keys shown.
	visible := func(k *managed.Key) bool { return k.ID[len(k.ID)-1] == '7' }
	sel := map[string]string{"app": "scale"}
	shown := 0
	token = ""
	for {
		keys, next, err := e.svc.ListKeys(ctx, sel, 30, token, visible)
		if err != nil {
			t.Fatal(err)
		}
		shown += len(keys)
		if next == "" {
			break
		}
		if after, err := managed.PageAfter(next, sel); err != nil || after != keys[len(keys)-1].ID {
			t.Errorf("token names %q (%v), want the page's last key %q", after, err, keys[len(keys)-1].ID)
		}
		if len(keys) != 30 {
			t.Errorf("page of %d keys with a token, want 30", len(keys))
		}
		token = next
	}
	if shown != n/10 {
		t.Errorf("listed %d visible keys, want %d", shown, n/10)
	}

	_, tok, err := e.svc.ListKeys(ctx, sel, 10, "", nil)
	if err != nil || tok == "" {
		t.Fatalf("first page: token %q, %v", tok, err)
	}
	for name, bad := range map[string]struct {
		token string
		sel   map[string]string
	}{
		"another selector": {tok, map[string]string{"app": "other"}},
		"no selector":      {tok, nil},
		"raw id":           {"tenant-0000100", sel},
		"altered":          {tok[:len(tok)-2] + "AA", sel},
		"garbage":          {"%%%", sel},
	} {
		if _, _, err := e.svc.ListKeys(ctx, bad.sel, 10, bad.token, nil); !errors.Is(err, managed.ErrInvalidArgument) {
			t.Errorf("ListKeys with a token (%s) = %v, want ErrInvalidArgument", name, err)
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
