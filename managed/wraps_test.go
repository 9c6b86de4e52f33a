package managed

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/envelope"
)

// TestDataKeysPerVersionBound: a node wraps at most MaxDataKeysPerVersion
// data keys under one key version, then refuses new ones until the key is
// rotated; messages under a reused data key are not counted.
func TestDataKeysPerVersionBound(t *testing.T) {
	ctx := t.Context()
	_, src := newOps(t)
	now := time.Unix(1_700_000_000, 0).UTC()
	// Every message gets a data key of its own, so each Encrypt wraps one.
	ops, err := New(Config{Material: src, Now: func() time.Time { return now },
		Reuse: envelope.ReusePolicy{MaxMessages: 1}, MaxDataKeysPerVersion: 3})
	if err != nil {
		t.Fatal(err)
	}
	o := byID{ops, src}
	var cts [][]byte
	for i := range 3 {
		ct, _, err := o.Encrypt(ctx, "aes", []byte("x"), nil)
		if err != nil {
			t.Fatalf("Encrypt %d under the bound: %v", i, err)
		}
		cts = append(cts, ct)
	}
	_, _, err = o.Encrypt(ctx, "aes", []byte("x"), nil)
	if !errors.Is(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), "rotate") {
		t.Errorf("Encrypt past the bound = %v, want ErrFailedPrecondition saying to rotate", err)
	}
	if _, err := o.GenerateDataKey(ctx, "aes", nil, true); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("GenerateDataKey past the bound = %v, want ErrFailedPrecondition", err)
	}
	if got := o.DataKeysRefused(); got != 2 {
		t.Errorf("DataKeysRefused = %d, want 2", got)
	}
	if got := o.DataKeysWrapped(src.m["aes"], 1); got != 3 {
		t.Errorf("DataKeysWrapped(aes, 1) = %d, want 3", got)
	}
	// What was sealed still opens; other keys are not affected.
	for _, ct := range cts {
		if _, _, _, err := o.Decrypt(ctx, ct, nil, ""); err != nil {
			t.Errorf("Decrypt under a version past its bound: %v", err)
		}
	}
	if _, _, err := o.Encrypt(ctx, "ctx", []byte("x"), map[string]string{"a": "b"}); err != nil {
		t.Errorf("Encrypt under another key: %v", err)
	}
	// Rotation starts a new count.
	k := src.m["aes"]
	k.Versions = append(k.Versions, Version{Version: 2, Created: now, RootKey: "softkms:r"})
	k.Primary = 2
	if _, _, err := o.Encrypt(ctx, "aes", []byte("x"), nil); err != nil {
		t.Errorf("Encrypt after rotation: %v", err)
	}
	if got := o.DataKeysWrapped(src.m["aes"], 2); got != 1 {
		t.Errorf("DataKeysWrapped(aes, 2) = %d, want 1", got)
	}

	// With reuse, messages share a data key: 100 encrypts, one wrap.
	warm, warmSrc := newOps(t)
	for range 100 {
		if _, _, err := warm.Encrypt(ctx, "aes", []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := warm.DataKeysWrapped(warmSrc.m["aes"], 1); got != 1 {
		t.Errorf("100 warm encrypts wrapped %d data keys, want 1", got)
	}

	if _, err := New(Config{Material: src, MaxDataKeysPerVersion: MaxMaxDataKeysPerVersion + 1}); err == nil {
		t.Error("New accepted a bound above 2^32")
	}
}

// boundedOps is an Ops over newOps's keys that wraps a data key for every
// message, with a bound of 3 data keys per key-encryption key.
func boundedOps(t *testing.T) (byID, *keys) {
	t.Helper()
	_, src := newOps(t)
	now := time.Unix(1_700_000_000, 0).UTC()
	ops, err := New(Config{Material: src, Now: func() time.Time { return now },
		Reuse: envelope.ReusePolicy{MaxMessages: 1}, MaxDataKeysPerVersion: 3})
	if err != nil {
		t.Fatal(err)
	}
	o := byID{ops, src}
	return o, src
}

// TestDerivedContextsDoNotShareTheBound: each encryption context of a
// derived key has its own key-encryption key and so its own bound; a
// caller encrypting under many contexts does not spend anyone else's.
func TestDerivedContextsDoNotShareTheBound(t *testing.T) {
	ctx := t.Context()
	o, _ := boundedOps(t)
	for i := range 5 {
		ectx := map[string]string{"tenant": strconv.Itoa(i)}
		if _, _, err := o.Encrypt(ctx, "ctx", []byte("x"), ectx); err != nil {
			t.Fatalf("Encrypt under fresh context %v: %v", ectx, err)
		}
	}
	fixed := map[string]string{"tenant": "fixed"}
	for i := range 3 {
		if _, _, err := o.Encrypt(ctx, "ctx", []byte("x"), fixed); err != nil {
			t.Fatalf("Encrypt %d under one context within the bound: %v", i, err)
		}
	}
	if _, _, err := o.Encrypt(ctx, "ctx", []byte("x"), fixed); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("4th data key under one context = %v, want ErrFailedPrecondition", err)
	}
	// Other contexts are unaffected by the one that reached its bound.
	if _, _, err := o.Encrypt(ctx, "ctx", []byte("x"), map[string]string{"tenant": "other"}); err != nil {
		t.Errorf("Encrypt under another context after one reached its bound: %v", err)
	}
}

// TestRecreatedKeyStartsANewCount: a key deleted and created again under
// the same id (a new salt) does not inherit its predecessor's count.
func TestRecreatedKeyStartsANewCount(t *testing.T) {
	ctx := t.Context()
	o, src := boundedOps(t)
	for i := range 3 {
		if _, _, err := o.Encrypt(ctx, "aes", []byte("x"), nil); err != nil {
			t.Fatalf("Encrypt %d within the bound: %v", i, err)
		}
	}
	if _, _, err := o.Encrypt(ctx, "aes", []byte("x"), nil); !errors.Is(err, ErrFailedPrecondition) {
		t.Fatalf("Encrypt past the bound = %v, want ErrFailedPrecondition", err)
	}
	again := *src.m["aes"]
	again.Salt = []byte("a new incarnation salt, 32 bytes")
	src.m["aes"] = &again
	if _, _, err := o.Encrypt(ctx, "aes", []byte("x"), nil); err != nil {
		t.Errorf("Encrypt under the re-created key: %v", err)
	}
	if got := o.DataKeysWrapped(&again, 1); got != 1 {
		t.Errorf("DataKeysWrapped(re-created aes, 1) = %d, want 1", got)
	}
}
