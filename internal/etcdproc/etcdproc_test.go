package etcdproc_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keybroker/keybroker/internal/etcdproc"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

func put(t *testing.T, c *etcdproc.Cluster, k, v string) {
	t.Helper()
	cli := client(t, c)
	if _, err := cli.Put(t.Context(), k, v); err != nil {
		t.Fatalf("Put(%q): %v", k, err)
	}
}

func client(t *testing.T, c *etcdproc.Cluster) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// alive reports whether a process with pid exists.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// TestRestartKeepsData stops a one-member cluster and starts another on
// the same directory: the value written before is there, though the ports
// changed, and no member process outlives Stop.
func TestRestartKeepsData(t *testing.T) {
	etcdtest.SkipIfMissing(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := etcdproc.Start(ctx, etcdproc.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	put(t, c, "k", "v1")
	pid := c.Members[0].Pid()
	c.Stop()
	c.Stop() // twice is fine
	if alive(pid) {
		t.Errorf("member %d still running after Stop", pid)
	}

	c2, err := etcdproc.Start(ctx, etcdproc.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Stop()
	resp, err := client(t, c2).Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Errorf("Get(k) after a restart = %v, want v1", resp.Kvs)
	}
	if _, err := os.Stat(filepath.Join(dir, "m0.log")); err != nil {
		t.Errorf("member log: %v", err)
	}
}

// TestKill ends a member of a three-member cluster with SIGKILL: it is
// gone, and the other two serve writes again (after an election, when it
// led).
func TestKill(t *testing.T) {
	c := etcdtest.Start(t, 3)
	m := c.Members[0]
	m.Kill()
	select {
	case <-m.Done():
	default:
		t.Fatal("Kill returned before the member exited")
	}
	if alive(m.Pid()) {
		t.Errorf("member %d still running after Kill", m.Pid())
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints()[1:], DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// The killed member may have led: writes resume after an election.
	for {
		_, err := cli.Put(ctx, "k", "v")
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("Put with one member of three killed: %v", err)
		}
	}
}

// TestMissingBinary: a binary that does not exist is ErrNotInstalled,
// saying what to install, and nothing is started.
func TestMissingBinary(t *testing.T) {
	t.Setenv(etcdproc.BinaryEnv, filepath.Join(t.TempDir(), "no-etcd"))
	c, err := etcdproc.Start(t.Context(), etcdproc.Options{Dir: t.TempDir()})
	if !errors.Is(err, etcdproc.ErrNotInstalled) || c != nil {
		t.Fatalf("Start without etcd = %v, %v; want nil, ErrNotInstalled", c, err)
	}
	t.Setenv(etcdproc.BinaryEnv, "")
	t.Setenv("PATH", t.TempDir())
	_, err = etcdproc.Binary()
	if !errors.Is(err, etcdproc.ErrNotInstalled) || !contains(err.Error(), "apt-get install etcd-server") {
		t.Errorf("Binary() with no etcd on PATH = %v, want ErrNotInstalled naming etcd-server", err)
	}
}

// TestBadBinary: a binary that exits at once fails Start with its log,
// not a hang.
func TestBadBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "etcd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho broken etcd >&2\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := etcdproc.Start(ctx, etcdproc.Options{Dir: t.TempDir(), Binary: bin})
	if err == nil || c != nil || !contains(err.Error(), "broken etcd") {
		t.Fatalf("Start with a failing binary = %v, %v; want an error with its log", c, err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
