package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"testing"
)

func TestBytesNeverPrints(t *testing.T) {
	raw := []byte("hunter2-hunter2-hunter2")
	s := Copy(raw)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
		got := fmt.Sprintf(verb, s)
		if strings.Contains(got, "hunter2") || strings.Contains(got, fmt.Sprintf("%x", raw)) {
			t.Errorf("Sprintf(%q) = %q, leaks the secret", verb, got)
		}
	}
	// Inside a struct, too.
	wrapped := struct{ K *Bytes }{s}
	if got := fmt.Sprintf("%+v", wrapped); strings.Contains(got, "hunter2") {
		t.Errorf("struct print = %q, leaks the secret", got)
	}
	j, err := json.Marshal(wrapped)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(j, []byte("hunter2")) || bytes.Contains(j, []byte("aHVudGVy")) {
		t.Errorf("json = %s, leaks the secret", j)
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "key", s)
	if strings.Contains(buf.String(), "hunter2") {
		t.Errorf("slog = %s, leaks the secret", buf.String())
	}
}

func TestBytesDestroy(t *testing.T) {
	b := []byte{1, 2, 3, 4}
	s := New(b)
	if !bytes.Equal(s.Reveal(), []byte{1, 2, 3, 4}) || s.Len() != 4 {
		t.Fatalf("Reveal() = %x, want 01020304", s.Reveal())
	}
	s.Destroy()
	if !bytes.Equal(b, make([]byte, 4)) {
		t.Errorf("after Destroy backing array = %x, want zeros", b)
	}
	if s.Len() != 0 || s.Reveal() != nil {
		t.Errorf("after Destroy Len() = %d, Reveal() = %x, want empty", s.Len(), s.Reveal())
	}
	s.Destroy() // idempotent
	var nilS *Bytes
	nilS.Destroy()
	if nilS.Len() != 0 {
		t.Error("nil secret has a length")
	}
}

func TestBytesEqual(t *testing.T) {
	a, b, c := Copy([]byte("abc")), Copy([]byte("abc")), Copy([]byte("abd"))
	if !a.Equal(b) {
		t.Error("equal secrets compare unequal")
	}
	if a.Equal(c) {
		t.Error("different secrets compare equal")
	}
	d := a.Clone()
	a.Destroy()
	if string(d.Reveal()) != "abc" {
		t.Errorf("Clone() after Destroy of original = %q, want abc", d.Reveal())
	}
}

// A revealed slice stays good after its secret becomes unreachable. A
// runtime cleanup used to zero a collected secret, so s.Reveal() passed to
// a call as s's last use could be zeroed during the call: the pkcs11 fault
// test saw a rare "tag mismatch" from a MAC tag zeroed under VerifyMAC, and
// the same race could have sealed or persisted a zeroed key.
func TestRevealOutlivesSecret(t *testing.T) {
	revealed := New([]byte{5, 6, 7, 8}).Reveal()
	for range 20 {
		runtime.GC()
		runtime.Gosched()
	}
	if !bytes.Equal(revealed, []byte{5, 6, 7, 8}) {
		t.Errorf("bytes revealed from a collected secret = %v, want [5 6 7 8]", revealed)
	}
}
