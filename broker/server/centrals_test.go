package server

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

// TestLookupListsOtherCentrals: with Config.Centrals (several centrals on
// one etcd store), LookupKey offers the other live central nodes after
// this one, never this one twice; when they cannot be listed, the answer
// still names this node.
func TestLookupListsOtherCentrals(t *testing.T) {
	var fail atomic.Bool
	e := start(t, func(c *Config) {
		c.Centrals = func(context.Context) ([]Central, error) {
			if fail.Load() {
				return nil, errors.New("etcd unreachable")
			}
			return []Central{{ID: c.NodeID, Address: "self-again:1"}, {ID: "central-2", Address: "127.0.0.1:7444"}}, nil
		}
	})
	ctx := t.Context()
	admin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	if _, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "aes", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP}); err != nil {
		t.Fatal(err)
	}
	l, err := kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "aes", Operation: kbv1.Operation_OPERATION_ENCRYPT})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range l.Nodes {
		got = append(got, n.Kind+"="+n.Address)
	}
	if len(got) != 2 || got[0] != "central="+e.srv.addr || got[1] != "central=127.0.0.1:7444" {
		t.Errorf("LookupKey nodes = %v, want this central, then central-2", got)
	}
	fail.Store(true)
	if l, err := kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: "aes", Operation: kbv1.Operation_OPERATION_ENCRYPT}); err != nil || len(l.Nodes) != 1 {
		t.Errorf("LookupKey with the other centrals unknown = %v, %v; want this central alone", l, err)
	}
}
