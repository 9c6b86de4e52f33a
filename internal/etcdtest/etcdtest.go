// Package etcdtest runs real etcd members for the repository's tests:
// Debian's etcd binary (apt-get install etcd-server), each member a
// process with its own data directory under t.TempDir() and loopback
// ports, stopped with the test. The processes are internal/etcdproc's.
//
// A test that needs etcd calls [Start]; when the binary is missing the test
// is skipped with a message saying what to install, unless
// KEYBROKER_REQUIRE_ETCD=1 (as `make test` sets it), which makes it a
// failure instead.
package etcdtest

import (
	"context"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keybroker/keybroker/internal/etcdproc"
)

// RequireEnv names the variable that turns a missing etcd into a failure.
const RequireEnv = "KEYBROKER_REQUIRE_ETCD"

// Binary finds the etcd binary: $KEYBROKER_ETCD, else etcd on the PATH.
func Binary() (string, error) { return etcdproc.Binary() }

// Cluster is a running etcd cluster.
type Cluster struct {
	*etcdproc.Cluster
}

// Member is one etcd process (Stop, Kill, Done).
type Member = etcdproc.Member

// Client returns a client of the whole cluster, closed with the test.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// SkipIfMissing skips the test when the etcd binary is missing (fails it
// when KEYBROKER_REQUIRE_ETCD=1), with a message saying what to install.
func SkipIfMissing(t testing.TB) {
	t.Helper()
	if _, err := etcdproc.Binary(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("etcd is required (%s=1) but missing: %v", RequireEnv, err)
		}
		t.Skipf("%v (make test installs it)", err)
	}
}

// Start runs an n-member etcd cluster on loopback, stopped when the test
// ends, and waits (at most a minute) until it answers.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	SkipIfMissing(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := etcdproc.Start(ctx, etcdproc.Options{Dir: t.TempDir(), Members: n})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return &Cluster{c}
}
