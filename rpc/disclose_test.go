package rpc_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
)

// listNode is a fakeNode that also lists its keys.
type listNode struct {
	fakeNode
	sorted []*managed.Key
}

func (n listNode) ListKeys(_ context.Context, sel map[string]string, size int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error) {
	return managed.Page(n.sorted, sel, size, token, visible)
}

const disclosePolicies = `
@id("list")
permit (principal, action == Action::"ListKeys", resource is Service);

@id("app-describe-payments")
permit (principal == Client::"app", action == Action::"DescribeKey", resource)
when { resource.hasTag("team") && resource.getTag("team") == "payments" };

@id("admin-describe")
permit (principal is Admin, action == Action::"DescribeKey", resource);
`

// newDiscloseServer serves 40 keys: even ones belong to payments, odd ones
// to security; only payments keys may be described by client app.
func newDiscloseServer(t *testing.T, classify func(error) (*status.Status, bool)) (*rpc.Server, *testServer) {
	t.Helper()
	n := listNode{fakeNode: fakeNode{keys: map[string]*managed.Key{}}}
	for i := range 40 {
		team := map[bool]string{true: "payments", false: "security"}[i%2 == 0]
		k := testKey(fmt.Sprintf("%s-%02d", team, i), managed.AES256GCM, managed.ModeDerive, map[string]string{"team": team, "env": "prod"}, "")
		n.keys[k.ID] = k
	}
	for _, k := range n.keys {
		n.sorted = append(n.sorted, k)
	}
	slices.SortFunc(n.sorted, func(a, b *managed.Key) int { return strings.Compare(a.ID, b.ID) })
	ts := newTestServerOn(t, disclosePolicies, n, classify)
	return ts.s, ts
}

// callerAs is the context a handler of s sees for a call by id.
func callerAs(t *testing.T, s *rpc.Server, id identity.Identity) context.Context {
	t.Helper()
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("x-request-id", "rid-"+id.Name))
	ctx = grpc.NewContextWithServerTransportStream(ctx, &transportStream{method: encryptMethod})
	ctx = peer.NewContext(ctx, peerFor(t, id))
	var out context.Context
	_, err := s.UnaryInterceptor()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: encryptMethod}, func(ctx context.Context, _ any) (any, error) {
		out = ctx
		return nil, nil
	})
	if err != nil {
		t.Fatalf("authenticating %s: %v", id, err)
	}
	return out
}

var (
	appID   = identity.Identity{TrustDomain: td, Kind: identity.Client, Name: "app"}
	adminID = identity.Identity{TrustDomain: td, Kind: identity.Admin, Name: "ops"}
)

// listAll pages through ListKeys with size, checking every page.
func listAll(t *testing.T, kb kbv1.KeyBrokerServer, ctx context.Context, sel map[string]string, size uint32) (ids, tokens []string) {
	t.Helper()
	token := ""
	for range 100 {
		resp, err := kb.ListKeys(ctx, &kbv1.ListKeysRequest{PageSize: size, PageToken: token, LabelSelector: sel})
		if err != nil {
			t.Fatalf("ListKeys(token %q) = %v", token, err)
		}
		for _, k := range resp.GetKeys() {
			ids = append(ids, k.GetKeyId())
		}
		if resp.GetNextPageToken() == "" {
			return ids, tokens
		}
		if uint32(len(resp.GetKeys())) != size {
			t.Errorf("ListKeys page of %d keys with a next token, want a full page of %d", len(resp.GetKeys()), size)
		}
		token = resp.GetNextPageToken()
		tokens = append(tokens, token)
	}
	t.Fatal("ListKeys did not finish in 100 pages")
	return nil, nil
}

// TestListKeysOnlyDescribable: a client that may describe only payments
// keys sees only payments keys in ListKeys, in full pages, and no page
// token names a key it may not see; an admin sees everything.
func TestListKeysOnlyDescribable(t *testing.T) {
	s, _ := newDiscloseServer(t, nil)
	kb := s.KeyBroker()
	for _, tc := range []struct {
		name string
		who  identity.Identity
		sel  map[string]string
		want func(id string) bool
	}{
		{"client", appID, nil, func(id string) bool { return strings.HasPrefix(id, "payments-") }},
		{"client selecting security", appID, map[string]string{"team": "security"}, func(string) bool { return false }},
		{"admin", adminID, nil, func(string) bool { return true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := callerAs(t, s, tc.who)
			var want []string
			for i := range 40 {
				team := map[bool]string{true: "payments", false: "security"}[i%2 == 0]
				id := fmt.Sprintf("%s-%02d", team, i)
				if tc.want(id) && (tc.sel == nil || tc.sel["team"] == team) {
					want = append(want, id)
				}
			}
			slices.Sort(want)
			got, tokens := listAll(t, kb, ctx, tc.sel, 3)
			if !slices.Equal(got, want) {
				t.Errorf("ListKeys as %s = %v, want %v", tc.who, got, want)
			}
			for _, tok := range tokens {
				if id, err := managed.PageAfter(tok, tc.sel); err != nil || !slices.Contains(want, id) {
					t.Errorf("ListKeys as %s gave page token %q naming %q (%v), a key it may not describe", tc.who, tok, id, err)
				}
			}
		})
	}
}

// TestRootKeyOnlyToAdmins: DescribeKey and ListKeys name a key's root key
// to an admin and to no one else.
func TestRootKeyOnlyToAdmins(t *testing.T) {
	s, _ := newDiscloseServer(t, nil)
	kb := s.KeyBroker()
	for _, tc := range []struct {
		who  identity.Identity
		want string
	}{
		{appID, ""},
		{adminID, "softkms:root-1"},
	} {
		ctx := callerAs(t, s, tc.who)
		d, err := kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "payments-00"})
		if err != nil {
			t.Fatalf("DescribeKey as %s = %v", tc.who, err)
		}
		if got := d.GetKey().GetRootKey(); got != tc.want {
			t.Errorf("DescribeKey as %s: root_key = %q, want %q", tc.who, got, tc.want)
		}
		l, err := kb.ListKeys(ctx, &kbv1.ListKeysRequest{})
		if err != nil || len(l.GetKeys()) == 0 {
			t.Fatalf("ListKeys as %s = %v, %v", tc.who, l, err)
		}
		for _, k := range l.GetKeys() {
			if got := k.GetRootKey(); got != tc.want {
				t.Errorf("ListKeys as %s: %s root_key = %q, want %q", tc.who, k.GetKeyId(), got, tc.want)
			}
		}
	}
}

var errToken = errors.New("pkcs11: CKR_TOKEN_NOT_PRESENT on slot 7 (token kb-prod)")

// TestBackendErrorOnlyToAdmins: a root of trust's error text reaches an
// admin; a client gets the code, a generic message and the request id; the
// audit line keeps the text either way.
func TestBackendErrorOnlyToAdmins(t *testing.T) {
	classify := func(err error) (*status.Status, bool) {
		if errors.Is(err, errToken) {
			return status.New(codes.Unavailable, err.Error()), true
		}
		return nil, false
	}
	for _, tc := range []struct {
		who        identity.Identity
		wantDetail bool
	}{
		{appID, false},
		{adminID, true},
	} {
		s, ts := newDiscloseServer(t, classify)
		ctx, c, err := s.Begin(callerAs(t, s, tc.who), policy.DescribeKey, "payments-00")
		if err != nil {
			t.Fatal(err)
		}
		err = s.End(ctx, c, fmt.Errorf("describe: %w", errToken))
		st := status.Convert(err)
		if st.Code() != codes.Unavailable {
			t.Errorf("End as %s: code %v, want Unavailable", tc.who, st.Code())
		}
		if got := strings.Contains(st.Message(), "CKR_"); got != tc.wantDetail {
			t.Errorf("End as %s: message %q; holds the backend's text: %v, want %v", tc.who, st.Message(), got, tc.wantDetail)
		}
		if !tc.wantDetail && !strings.Contains(st.Message(), c.RequestID()) {
			t.Errorf("End as %s: message %q does not give the request id", tc.who, st.Message())
		}
		recs := ts.records(t)
		if len(recs) != 1 || !strings.Contains(recs[0].Detail, "CKR_TOKEN_NOT_PRESENT") {
			t.Errorf("audit = %+v, want one record holding the backend's text", recs)
		}
	}
}
