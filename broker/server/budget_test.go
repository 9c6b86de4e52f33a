package server

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/budget"
	"github.com/keybroker/keybroker/secret"
)

// forged is a well-formed ciphertext naming version 1 of keyID whose
// wrapped data key is made up: seed varies it.
func forged(t *testing.T, keyID string, seed uint64) []byte {
	t.Helper()
	wrapped := bytes.Repeat([]byte{0xa5}, 128)
	binary.BigEndian.PutUint64(wrapped, seed)
	dk, err := envelope.NewDataKey(keyID, 1, secret.New(bytes.Repeat([]byte{7}, envelope.DEKSize)), wrapped)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := dk.Seal([]byte("forged"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func unwrapCalls(r *broker.Roots) uint64 {
	return r.Calls()[broker.CallKey{Backend: "soft", Op: "unwrap-data-key"}]
}

// batchCodes runs one BatchDecrypt of cts and counts its items by code.
func batchCodes(t *testing.T, kb kbv1.KeyBrokerClient, cts [][]byte) map[codes.Code]int {
	t.Helper()
	req := &kbv1.BatchDecryptRequest{}
	for _, ct := range cts {
		req.Items = append(req.Items, &kbv1.DecryptRequest{Ciphertext: ct})
	}
	resp, err := kb.BatchDecrypt(t.Context(), req)
	if err != nil {
		t.Fatalf("BatchDecrypt: %v", err)
	}
	out := map[codes.Code]int{}
	for _, r := range resp.GetResults() {
		out[codes.Code(r.GetError().GetCode())]++
	}
	return out
}

// TestForgedDataKeysCostBounded: a BatchDecrypt of 1,000 copies of one
// forged backend-mode data key costs one backend call (the failure is
// remembered); 1,000 distinct forged ones are cut off by the caller's
// budget — ResourceExhausted, audited, counted — and another principal is
// served all the while.
func TestForgedDataKeysCostBounded(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	frozen := time.Unix(1_800_000_000, 0)
	bud, err := budget.New(budget.Config{Rate: 1, Burst: 10, Now: func() time.Time { return frozen }})
	if err != nil {
		t.Fatal(err)
	}
	e.roots.SetBudget(bud)
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "hsm", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_BACKEND, RootKey: "softkms:hsm-aes", Labels: map[string]string{"app": "billing"}}); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	billing := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "billing"))

	same := make([][]byte, 1000)
	for i := range same {
		same[i] = forged(t, "hsm", 1)
	}
	before := unwrapCalls(e.roots)
	got := batchCodes(t, billing, same)
	if got[codes.InvalidArgument] != 1000 {
		t.Errorf("BatchDecrypt of 1,000 copies of a forged data key: %v, want 1000 InvalidArgument", got)
	}
	if n := unwrapCalls(e.roots) - before; n > 1 {
		t.Errorf("BatchDecrypt of 1,000 copies of a forged data key made %d backend unwraps, want at most 1", n)
	}

	distinct := make([][]byte, 1000)
	for i := range distinct {
		distinct[i] = forged(t, "hsm", uint64(i)+2)
	}
	before = unwrapCalls(e.roots)
	got = batchCodes(t, billing, distinct)
	// One token went on the first batch; nine remain of the burst.
	if got[codes.InvalidArgument] != 9 || got[codes.ResourceExhausted] != 991 {
		t.Errorf("BatchDecrypt of 1,000 distinct forged data keys: %v, want 9 InvalidArgument and 991 ResourceExhausted", got)
	}
	if n := unwrapCalls(e.roots) - before; n != 9 {
		t.Errorf("BatchDecrypt of 1,000 distinct forged data keys made %d backend unwraps, want 9 (the budget left)", n)
	}
	if n := e.roots.Refused()[broker.CallKey{Backend: "soft", Op: "unwrap-data-key"}]; n != 991 {
		t.Errorf("refusals counted = %d, want 991", n)
	}

	// Another principal has its own budget.
	other := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	enc, err := other.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("still served")})
	if err != nil {
		t.Fatalf("Encrypt by another principal: %v", err)
	}
	if d, err := other.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.Ciphertext}); err != nil || string(d.Plaintext) != "still served" {
		t.Errorf("Decrypt by another principal = %v, %v", d, err)
	}
	// The spent caller's data keys need backend calls too: a
	// BatchGenerateDataKey is refused item by item until its bucket
	// refills.
	gen, err := billing.BatchGenerateDataKey(ctx, &kbv1.BatchGenerateDataKeyRequest{Items: []*kbv1.GenerateDataKeyRequest{{KeyId: "hsm"}, {KeyId: "hsm"}, {KeyId: "hsm"}}})
	if err != nil {
		t.Fatalf("BatchGenerateDataKey: %v", err)
	}
	for i, r := range gen.GetResults() {
		if c := codes.Code(r.GetError().GetCode()); c != codes.ResourceExhausted {
			t.Errorf("BatchGenerateDataKey item %d by the spent principal: %v, want ResourceExhausted", i, c)
		}
	}

	refused := 0
	for _, r := range auditLines(t, e.auditPath) {
		if r.Principal == "spiffe://kb.test/client/billing" && r.Outcome == "ResourceExhausted" {
			refused++
			if !strings.Contains(r.Detail, "budget") {
				t.Errorf("audit line of a refusal says %q, want it to name the budget", r.Detail)
			}
		}
	}
	if refused != 991+3 {
		t.Errorf("audited refusals = %d, want %d", refused, 991+3)
	}
}

// TestBackendErrorTextOnlyToAdmins: when the root of trust refuses (its
// root key is disabled), a client gets the code, a generic message and its
// request id, not the backend's text; an admin gets the text; the audit
// line keeps it either way.
func TestBackendErrorTextOnlyToAdmins(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "hsm", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_BACKEND, RootKey: "softkms:hsm-aes", Labels: map[string]string{"app": "billing"}}); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if err := e.soft.SetEnabled(ctx, "hsm-aes", false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		kind       identity.Kind
		name       string
		wantDetail bool
	}{
		{identity.Client, "billing", false},
		{identity.Admin, "ops", true},
	} {
		kb := kbv1.NewKeyBrokerClient(e.conn(t, tc.kind, tc.name))
		// The caller's own id is kept as client_request_id; the node's id
		// is the one the message and the audit line give.
		crid := "rid-" + tc.name
		var hdr metadata.MD
		_, err := kb.Encrypt(metadata.AppendToOutgoingContext(ctx, "x-request-id", crid), &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("p")}, grpc.Header(&hdr))
		rid := ""
		if v := hdr.Get("x-request-id"); len(v) == 1 {
			rid = v[0]
		}
		code(t, "Encrypt on a disabled root key as "+tc.name, err, codes.FailedPrecondition)
		msg := status.Convert(err).Message()
		if got := strings.Contains(msg, "softkms"); got != tc.wantDetail {
			t.Errorf("Encrypt as %s: message %q; holds the backend's text: %v, want %v", tc.name, msg, got, tc.wantDetail)
		}
		if !tc.wantDetail && !strings.Contains(msg, rid) {
			t.Errorf("Encrypt as %s: message %q does not give the request id %s", tc.name, msg, rid)
		}
		var lines int
		for _, r := range auditLines(t, e.auditPath) {
			if r.RequestID == rid && r.ClientRequestID == crid {
				lines++
				if !strings.Contains(r.Detail, "softkms") {
					t.Errorf("audit line of %s's refused call: detail %q, want the backend's text", tc.name, r.Detail)
				}
			}
		}
		if lines != 1 {
			t.Errorf("audit lines for request %s = %d, want 1", rid, lines)
		}
	}
}
