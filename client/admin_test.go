package client_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

// sharedKeys is the registry several fake centrals share, as centrals on
// one etcd do.
type sharedKeys struct {
	mu   sync.Mutex
	keys map[string]*kbv1.KeyMetadata
}

// adminNode is a fake central node: KeyAdmin's CreateKey and RotateKey and
// KeyBroker's DescribeKey over a shared registry. fail, when set, is the
// error it answers every admin call with — after carrying the call out
// when failAfter is set, as a node that dies between its commit and its
// answer does.
type adminNode struct {
	kbv1.UnimplementedKeyAdminServer
	kbv1.UnimplementedKeyBrokerServer
	reg       *sharedKeys
	fail      error
	failAfter bool

	mu    sync.Mutex
	calls int
}

func (n *adminNode) answer(do func() (*kbv1.KeyMetadata, error)) (*kbv1.KeyMetadata, error) {
	n.mu.Lock()
	n.calls++
	n.mu.Unlock()
	if n.fail != nil && !n.failAfter {
		return nil, n.fail
	}
	out, err := do()
	if n.fail != nil {
		return nil, n.fail
	}
	return out, err
}

func (n *adminNode) CreateKey(_ context.Context, in *kbv1.CreateKeyRequest) (*kbv1.KeyMetadata, error) {
	return n.answer(func() (*kbv1.KeyMetadata, error) {
		n.reg.mu.Lock()
		defer n.reg.mu.Unlock()
		if _, ok := n.reg.keys[in.GetKeyId()]; ok {
			return nil, status.Error(codes.AlreadyExists, "key exists")
		}
		k := &kbv1.KeyMetadata{KeyId: in.GetKeyId(), Type: in.GetType(), Mode: in.GetMode(), Labels: in.GetLabels(), PrimaryVersion: 1}
		n.reg.keys[k.KeyId] = k
		return k, nil
	})
}

func (n *adminNode) RotateKey(_ context.Context, in *kbv1.KeyRequest) (*kbv1.KeyMetadata, error) {
	return n.answer(func() (*kbv1.KeyMetadata, error) {
		n.reg.mu.Lock()
		defer n.reg.mu.Unlock()
		k, ok := n.reg.keys[in.GetKeyId()]
		if !ok {
			return nil, status.Error(codes.NotFound, "no such key")
		}
		k.PrimaryVersion++
		return k, nil
	})
}

func (n *adminNode) DescribeKey(_ context.Context, in *kbv1.DescribeKeyRequest) (*kbv1.DescribeKeyResponse, error) {
	n.reg.mu.Lock()
	defer n.reg.mu.Unlock()
	k, ok := n.reg.keys[in.GetKeyId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such key")
	}
	return &kbv1.DescribeKeyResponse{Key: k}, nil
}

func (n *adminNode) Calls() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.calls
}

// startAdminNode serves n over mutual TLS as central node name.
func startAdminNode(t *testing.T, ca *identity.CA, name string, n *adminNode) string {
	t.Helper()
	return serveTLS(t, ca, identity.Identity{TrustDomain: ca.TrustDomain, Kind: identity.Central, Name: name}, func(srv *grpc.Server) {
		kbv1.RegisterKeyAdminServer(srv, n)
		kbv1.RegisterKeyBrokerServer(srv, n)
	})
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestAdminFailsOver: admin calls move from a central node that is down
// or unavailable to the next configured one, and only then; a CreateKey
// whose first attempt took effect before its node failed answers with the
// key it made rather than AlreadyExists — but not with another's key.
func TestAdminFailsOver(t *testing.T) {
	t.Parallel()
	ca, files := testCA(t, identity.Admin, "ops")
	newAdmin := func(t *testing.T, addrs ...string) kbv1.KeyAdminClient {
		t.Helper()
		cl, err := client.New(t.Context(), client.Config{Addrs: addrs, CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key,
			MaxAttempts: 2, Backoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		adm, err := cl.Admin()
		if err != nil {
			t.Fatal(err)
		}
		return adm
	}
	aes := kbv1.KeyType_KEY_TYPE_AES_256_GCM
	labels := map[string]string{"team": "a"}
	unavailable := status.Error(codes.Unavailable, "central: cut off from the store")

	t.Run("down then up", func(t *testing.T) {
		reg := &sharedKeys{keys: map[string]*kbv1.KeyMetadata{}}
		up := &adminNode{reg: reg}
		adm := newAdmin(t, deadAddr(t), startAdminNode(t, ca, "central-2", up))
		k, err := adm.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "k", Type: aes, Labels: labels})
		if err != nil || k.GetPrimaryVersion() != 1 {
			t.Fatalf("CreateKey with the first central down = %v, %v; want the second's answer", k, err)
		}
		if _, err := adm.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: "k"}); err != nil {
			t.Fatalf("RotateKey with the first central down: %v", err)
		}
		if got := reg.keys["k"].GetPrimaryVersion(); got != 2 {
			t.Errorf("primary version %d, want 2", got)
		}
	})

	t.Run("committed then failed", func(t *testing.T) {
		reg := &sharedKeys{keys: map[string]*kbv1.KeyMetadata{}}
		dying := &adminNode{reg: reg, fail: unavailable, failAfter: true}
		up := &adminNode{reg: reg}
		adm := newAdmin(t, startAdminNode(t, ca, "central-1", dying), startAdminNode(t, ca, "central-2", up))
		k, err := adm.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "k", Type: aes, Labels: labels})
		if err != nil || k.GetKeyId() != "k" {
			t.Fatalf("CreateKey whose first attempt took effect = %v, %v; want the key it made", k, err)
		}
		if dying.Calls() != 1 || up.Calls() != 1 {
			t.Errorf("calls: %d at the failing central, %d at the next; want 1 and 1", dying.Calls(), up.Calls())
		}
		// Another's key of that id is not taken for ours.
		_, err = adm.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256})
		if !errors.Is(err, client.ErrAlreadyExists) || status.Code(err) != codes.AlreadyExists {
			t.Errorf("CreateKey of a key made otherwise = %v; want AlreadyExists", err)
		}
	})

	t.Run("final answers are final", func(t *testing.T) {
		reg := &sharedKeys{keys: map[string]*kbv1.KeyMetadata{}}
		denies := &adminNode{reg: reg, fail: status.Error(codes.PermissionDenied, "no")}
		up := &adminNode{reg: reg}
		adm := newAdmin(t, startAdminNode(t, ca, "central-1", denies), startAdminNode(t, ca, "central-2", up))
		_, err := adm.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "k", Type: aes})
		if !errors.Is(err, client.ErrPermissionDenied) || up.Calls() != 0 {
			t.Errorf("CreateKey denied = %v with %d calls at the next central; want PermissionDenied, none", err, up.Calls())
		}
	})

	t.Run("a revision conflict is final", func(t *testing.T) {
		reg := &sharedKeys{keys: map[string]*kbv1.KeyMetadata{}}
		conflict := &adminNode{reg: reg, fail: status.Error(codes.Aborted, "revision conflict: key \"k\" is at revision 9, not 7")}
		up := &adminNode{reg: reg}
		adm := newAdmin(t, startAdminNode(t, ca, "central-1", conflict), startAdminNode(t, ca, "central-2", up))
		_, err := adm.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: "k"})
		if status.Code(err) != codes.Aborted || conflict.Calls() != 1 || up.Calls() != 0 {
			t.Errorf("RotateKey answered Aborted = %v after %d and %d calls; want Aborted after one call", err, conflict.Calls(), up.Calls())
		}
	})

	t.Run("every central unavailable", func(t *testing.T) {
		reg := &sharedKeys{keys: map[string]*kbv1.KeyMetadata{}}
		a := &adminNode{reg: reg, fail: unavailable}
		b := &adminNode{reg: reg, fail: unavailable}
		adm := newAdmin(t, startAdminNode(t, ca, "central-1", a), startAdminNode(t, ca, "central-2", b))
		_, err := adm.RotateKey(t.Context(), &kbv1.KeyRequest{KeyId: "k"})
		var e *client.Error
		if !errors.Is(err, client.ErrUnavailable) || !errors.As(err, &e) || e.Attempts != 4 {
			t.Errorf("RotateKey with every central unavailable = %v; want Unavailable after 4 attempts (2 passes of 2)", err)
		}
	})
}
