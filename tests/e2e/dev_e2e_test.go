package e2e

// The process tests of `keybroker dev`: the real binary, started with no
// set-up, used through the env file it writes, stopped with SIGINT and
// started again on the same directory.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/softhsm"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
	"github.com/keybroker/keybroker/tests/framework"
)

// describeDemo returns the demo key's metadata as `key describe --output
// json` prints it.
func describeDemo(t *testing.T, env map[string]string) keyJSON {
	t.Helper()
	r := framework.CLI(t, env, nil, "key", "describe", framework.DemoKeyID, "--output", "json")
	framework.WantCode(t, r, 0)
	var k keyJSON
	must(t, "decoding key describe", json.Unmarshal([]byte(r.Stdout), &k))
	return k
}

// TestDevEndToEnd starts `keybroker dev` on a fresh directory whose name
// needs quoting, uses it through its env file — the demo key through the
// us edge, key list, nodes, lookup, the ops endpoints and every command the
// summary offers, run by bash as printed — stops it with SIGINT, and
// starts it again on the same directory: same CA, the demo key not
// recreated, the first run's ciphertext still decrypting.
func TestDevEndToEnd(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "dev data's dir")
	p := framework.StartDev(t, dir, "--port", "0")
	env := p.WaitReady(t)
	stdout, _ := p.Output()

	// The env file: 0600, absolute paths, the us edge, the admin.
	envPath := filepath.Join(dir, framework.DevEnvFile)
	fi, err := os.Stat(envPath)
	must(t, "env file", err)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("env file mode %v, want 0600", fi.Mode().Perm())
	}
	wantFiles := map[string]string{framework.EnvCA: "ca.crt", framework.EnvCert: "certs/admin.crt", framework.EnvKey: "certs/admin.key"}
	for v, rel := range wantFiles {
		if want := filepath.Join(dir, rel); env[v] != want {
			t.Errorf("%s=%q, want %q", v, env[v], want)
		}
	}
	nodes := framework.DevNodes(t, stdout)
	for name, region := range map[string]string{"central": "-", "edge-us": "us", "edge-eu": "eu"} {
		n, ok := nodes[name]
		if !ok {
			t.Fatalf("the summary lists no %s:\n%s", name, stdout)
		}
		if n.Region != region || !strings.HasPrefix(n.Ops, "https://") {
			t.Errorf("%s: region %q, ops %q; want region %q and an https URL", name, n.Region, n.Ops, region)
		}
	}
	if env[framework.EnvAddr] != nodes["edge-us"].GRPC {
		t.Errorf("%s=%q, want the us edge %q", framework.EnvAddr, env[framework.EnvAddr], nodes["edge-us"].GRPC)
	}
	for _, want := range []string{
		"demo key:       demo (aes-256-gcm, derive, primary version 1): created now",
		"app identity:   " + filepath.Join(dir, "certs", "app.crt"),
		"data:           " + dir + " (kept across restarts)",
		"env:            " + envPath,
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("the summary lacks %q:\n%s", want, stdout)
		}
	}

	// The ops URLs answer, over mutual TLS with the admin's certificate.
	tlsCfg, err := identity.TLSFiles{CA: env[framework.EnvCA], Cert: env[framework.EnvCert], Key: env[framework.EnvKey]}.ClientConfig("")
	must(t, "TLS", err)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 30 * time.Second}
	for name, n := range nodes {
		resp, err := hc.Get(n.Ops + "/readyz")
		must(t, name+" /readyz", err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s %s/readyz: %s", name, n.Ops, resp.Status)
		}
	}

	// The demo key through the us edge, and the ciphertext everywhere.
	r := framework.CLI(t, env, []byte("hello"), "encrypt", "--key", framework.DemoKeyID)
	framework.WantCode(t, r, 0)
	ct := []byte(r.Stdout)
	for _, name := range []string{"edge-us", "edge-eu", "central"} {
		r := framework.CLI(t, framework.WithAddr(env, nodes[name].GRPC), ct, "decrypt")
		framework.WantCode(t, r, 0)
		if r.Stdout != "hello" {
			t.Errorf("decrypt at %s = %q, want hello", name, r.Stdout)
		}
	}
	r = framework.CLI(t, env, nil, "key", "list", "--output", "json")
	framework.WantCode(t, r, 0)
	var list keyListJSON
	must(t, "decoding key list", json.Unmarshal([]byte(r.Stdout), &list))
	if len(list.Keys) != 1 || list.Keys[0].KeyID != framework.DemoKeyID || list.Keys[0].Type != "aes-256-gcm" || list.Keys[0].Mode != "derive" {
		t.Errorf("key list = %+v, want the demo key alone, aes-256-gcm, derive", list.Keys)
	}
	r = framework.CLI(t, env, nil, "nodes", "--output", "json")
	framework.WantCode(t, r, 0)
	var listed []nodeJSON
	must(t, "decoding nodes", json.Unmarshal([]byte(r.Stdout), &listed))
	got := map[string]string{}
	for _, n := range listed {
		got[n.NodeID] = fmt.Sprintf("%s %s %s connected=%t", n.Kind, n.Region, n.Address, n.Connected)
	}
	want := map[string]string{
		"central": "central  " + nodes["central"].GRPC + " connected=true",
		"edge-us": "edge us " + nodes["edge-us"].GRPC + " connected=true",
		"edge-eu": "edge eu " + nodes["edge-eu"].GRPC + " connected=true",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nodes mismatch (-want +got):\n%s", diff)
	}
	r = framework.CLI(t, env, nil, "lookup", "--key", framework.DemoKeyID, "--op", "encrypt")
	framework.WantCode(t, r, 0)
	if first := strings.Fields(strings.Split(r.Stdout, "\n")[1]); len(first) == 0 || first[0] != "edge-us" {
		t.Errorf("lookup from the us edge does not put it first:\n%s", r.Stdout)
	}

	// Every command the summary offers works, pasted into bash as printed.
	tryCmds := framework.DevTry(t, stdout)
	if _, err := exec.LookPath("curl"); err != nil {
		tryCmds = tryCmds[:len(tryCmds)-1] // the curl line is last
	}
	cmd := exec.CommandContext(t.Context(), "bash", "-euo", "pipefail", "-c", strings.Join(tryCmds, "\n"))
	cmd.Dir = t.TempDir()
	cmd.Env = append(framework.WithoutKeybrokerVars(framework.ProcessEnv()), "PATH="+filepath.Dir(framework.Binary())+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the commands to try failed: %v\n%s\n%s", err, strings.Join(tryCmds, "\n"), out)
	}
	for _, want := range []string{"wrote", "hello\n", "edge-eu", "Primary version:        2"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the commands to try printed no %q:\n%s", want, out)
		}
	}

	before := describeDemo(t, env)
	caBefore, err := os.ReadFile(env[framework.EnvCA])
	must(t, "CA", err)
	p.Interrupt(t)
	if _, err := os.Stat(envPath); err != nil {
		t.Errorf("the env file is gone after the stop: %v", err)
	}
	if _, stderr := p.Output(); !strings.Contains(stderr, "msg=stopped") {
		t.Errorf("no stopped log line on stderr:\n%s", stderr)
	}

	// Again, on the same directory.
	p = framework.StartDev(t, dir, "--port", "0")
	env = p.WaitReady(t)
	stdout, _ = p.Output()
	if want := "demo key:       demo (aes-256-gcm, derive, primary version 2): exists, created " + before.CreatedAt.UTC().Format(time.RFC3339); !strings.Contains(stdout, want) {
		t.Errorf("the second summary lacks %q:\n%s", want, stdout)
	}
	if env[framework.EnvAddr] != framework.DevNodes(t, stdout)["edge-us"].GRPC {
		t.Errorf("the rewritten env file's %s=%q is not the us edge of this start", framework.EnvAddr, env[framework.EnvAddr])
	}
	caAfter, err := os.ReadFile(env[framework.EnvCA])
	must(t, "CA", err)
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("a restart made a new CA")
	}
	if diff := cmp.Diff(before, describeDemo(t, env)); diff != "" {
		t.Errorf("the demo key changed across the restart (-before +after):\n%s", diff)
	}
	r = framework.CLI(t, env, ct, "decrypt")
	framework.WantCode(t, r, 0)
	if r.Stdout != "hello" {
		t.Errorf("decrypt of the first run's ciphertext after a restart = %q, want hello", r.Stdout)
	}
	p.Interrupt(t)
}

// TestDevPortInUse: a port another process holds stops dev at once with
// an error naming the port and saying how to choose others, before the
// data directory is made.
func TestDevPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, "listen", err)
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithTimeout(t.Context(), framework.DevStopTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, framework.Binary(), "dev", "--data", dir, "--port", strconv.Itoa(port))
	cmd.Env = framework.ProcessEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
		t.Fatalf("keybroker dev --port %d with the port held: %v, want exit %d\nstderr:\n%s", port, err, exitFailure, stderr.String())
	}
	for _, want := range []string{fmt.Sprintf("keybroker: port %d (central gRPC) is already in use", port), "--port N", "--port 0"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q, want nothing", stdout.String())
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the data directory was made (%v)", err)
	}
}

// TestDevSoftHSM runs dev with its root keys on a fresh SoftHSM2 token:
// dev creates them there, and the demo key works at the edges.
func TestDevSoftHSM(t *testing.T) {
	tok := softhsmtest.New(t) // sets SOFTHSM2_CONF, which the process inherits
	dir := t.TempDir()
	p := framework.StartDev(t, dir, "--port", "0", "--backend", tok.URI(""))
	env := p.WaitReady(t)
	stdout, _ := p.Output()
	if want := "root of trust:  " + tok.URI(""); !strings.Contains(stdout, want) {
		t.Errorf("the summary lacks %q:\n%s", want, stdout)
	}
	r := framework.CLI(t, env, []byte("hello"), "encrypt", "--key", framework.DemoKeyID)
	framework.WantCode(t, r, 0)
	r = framework.CLI(t, framework.WithAddr(env, framework.DevNodes(t, stdout)["edge-eu"].GRPC), []byte(r.Stdout), "decrypt")
	framework.WantCode(t, r, 0)
	if r.Stdout != "hello" {
		t.Errorf("decrypt at edge-eu = %q, want hello", r.Stdout)
	}
	if k := describeDemo(t, env); k.RootKey != "pkcs11:token="+tok.Label+";object=root-prf" {
		t.Errorf("the demo key's root is %q, want the token's root-prf", k.RootKey)
	}
	p.Interrupt(t)
}

// TestDevSoftHSMFlag: dev --softhsm makes its own SoftHSM2 token in
// DIR/softhsm and puts the root keys there; the demo key encrypts through
// the CLI at one edge and decrypts at the other; after a restart the
// token is reused (the PINs unchanged), and the first run's ciphertext
// still decrypts.
func TestDevSoftHSMFlag(t *testing.T) {
	t.Parallel()
	softhsmtest.Require(t)
	dir := filepath.Join(t.TempDir(), "dev")
	p := framework.StartDev(t, dir, "--port", "0", "--softhsm")
	env := p.WaitReady(t)
	stdout, _ := p.Output()
	if want := "root of trust:  pkcs11:token=keybroker-dev?module-path="; !strings.Contains(stdout, want) {
		t.Errorf("the summary lacks %q:\n%s", want, stdout)
	}
	r := framework.CLI(t, env, []byte("hello"), "encrypt", "--key", framework.DemoKeyID)
	framework.WantCode(t, r, 0)
	ct := r.Stdout
	r = framework.CLI(t, framework.WithAddr(env, framework.DevNodes(t, stdout)["edge-eu"].GRPC), []byte(ct), "decrypt")
	framework.WantCode(t, r, 0)
	if r.Stdout != "hello" {
		t.Errorf("decrypt at edge-eu = %q, want hello", r.Stdout)
	}
	if k := describeDemo(t, env); k.RootKey != "pkcs11:token=keybroker-dev;object=root-prf" {
		t.Errorf("the demo key's root is %q, want the dev token's root-prf", k.RootKey)
	}
	pinFile := filepath.Join(dir, "softhsm", "user.pin")
	pin, err := os.ReadFile(pinFile)
	must(t, "reading the PIN file", err)
	if fi, err := os.Stat(pinFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, %v; want mode 0600", pinFile, fi.Mode().Perm(), err)
	}
	p.Interrupt(t)

	p = framework.StartDev(t, dir, "--port", "0", "--softhsm")
	env = p.WaitReady(t)
	r = framework.CLI(t, env, []byte(ct), "decrypt")
	framework.WantCode(t, r, 0)
	if r.Stdout != "hello" {
		t.Errorf("decrypt after a restart = %q, want hello", r.Stdout)
	}
	if again, _ := os.ReadFile(pinFile); !bytes.Equal(again, pin) {
		t.Error("a restart made a new token (the PIN changed)")
	}
	p.Interrupt(t)
}

// TestDevSoftHSMMissing: without SoftHSM2, dev --softhsm stops at once
// naming the package to install, and makes nothing.
func TestDevSoftHSMMissing(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithTimeout(t.Context(), framework.DevStopTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, framework.Binary(), "dev", "--data", dir, "--port", "0", "--softhsm")
	cmd.Env = append(framework.ProcessEnv(), softhsm.ModuleEnv+"="+filepath.Join(t.TempDir(), "libsofthsm2.so"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := errors.AsType[*exec.ExitError](err); !ok || ee.ExitCode() != exitFailure {
		t.Fatalf("keybroker dev --softhsm without SoftHSM2: %v, want exit %d\nstderr:\n%s", err, exitFailure, stderr.String())
	}
	for _, want := range []string{"--softhsm: SoftHSM2 is not installed", "apt-get install softhsm2"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q, want nothing", stdout.String())
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the data directory was made (%v)", err)
	}
}
