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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/tests/framework"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/softhsm"
	softhsmtest "github.com/keybroker/keybroker/softhsm-test"
)

// Bounds on the dev process: how long it may take to be ready (the race
// detector slows it several times), and to stop after SIGINT.
const (
	devProcReadyTimeout = 3 * time.Minute
	devStopTimeout      = time.Minute
)

// devProc is a running `keybroker dev`, its stdout and stderr collected as
// they arrive.
type devProc struct {
	dir string
	cmd *exec.Cmd

	mu             sync.Mutex
	stdout, stderr bytes.Buffer
	grew           chan struct{} // closed and replaced whenever output arrives

	exited  chan struct{} // closed once the process has exited
	waitErr error         // cmd.Wait's result, set before exited closes
}

// devOutput is one of devProc's streams.
type devOutput struct {
	p   *devProc
	buf *bytes.Buffer
}

func (w devOutput) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	w.buf.Write(b)
	close(w.p.grew)
	w.p.grew = make(chan struct{})
	return len(b), nil
}

// startDev runs `keybroker dev --data dir args...` from a scratch working
// directory.
func startDev(t *testing.T, dir string, args ...string) *devProc {
	t.Helper()
	p := &devProc{dir: dir, grew: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = exec.Command(framework.Binary(), append([]string{"dev", "--data", dir}, args...)...)
	p.cmd.Env = framework.ProcessEnv()
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout = devOutput{p, &p.stdout}
	p.cmd.Stderr = devOutput{p, &p.stderr}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

func (p *devProc) output() (stdout, stderr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String(), p.stderr.String()
}

// waitReady waits, at most devProcReadyTimeout, for the ready summary on
// stdout (printed after the env file is written), and returns the
// environment the env file sets, read by a POSIX shell.
func (p *devProc) waitReady(t *testing.T) map[string]string {
	t.Helper()
	deadline := time.NewTimer(devProcReadyTimeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		ready, grew := strings.Contains(p.stdout.String(), "\nCtrl-C stops the cluster"), p.grew
		p.mu.Unlock()
		if ready {
			return sourceEnv(t, filepath.Join(p.dir, devEnvFile))
		}
		select {
		case <-grew:
		case <-p.exited:
			stdout, stderr := p.output()
			t.Fatalf("keybroker dev exited (%v) before it was ready\nstdout:\n%s\nstderr:\n%s", p.waitErr, stdout, stderr)
		case <-deadline.C:
			stdout, stderr := p.output()
			t.Fatalf("keybroker dev not ready within %s\nstdout:\n%s\nstderr:\n%s", devProcReadyTimeout, stdout, stderr)
		}
	}
}

// interrupt sends SIGINT and wants a clean exit (0) within devStopTimeout.
func (p *devProc) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(devStopTimeout):
		t.Fatalf("keybroker dev still running %s after SIGINT", devStopTimeout)
	}
	if p.waitErr != nil {
		_, stderr := p.output()
		t.Errorf("keybroker dev exited with %v after SIGINT, want 0\nstderr:\n%s", p.waitErr, stderr)
	}
}

// devVars are the variables the env file must set.
var devVars = []string{framework.EnvAddr, framework.EnvCA, framework.EnvCert, framework.EnvKey}

// sourceEnv sources the env file in sh and returns what it set.
func sourceEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	script := `. "$1" && printf '%s\0' "$` + strings.Join(devVars, `" "$`) + `"`
	cmd := exec.CommandContext(t.Context(), "sh", "-c", script, "sh", path)
	cmd.Env = framework.WithoutKeybrokerVars(os.Environ())
	out, err := cmd.Output()
	if err != nil {
		data, _ := os.ReadFile(path)
		t.Fatalf("sourcing %s: %v\n%s", path, err, data)
	}
	vals := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if len(vals) != len(devVars) {
		t.Fatalf("sourcing %s gave %q", path, out)
	}
	env := map[string]string{}
	for i, v := range devVars {
		if vals[i] == "" {
			t.Errorf("%s does not set %s", path, v)
		}
		env[v] = vals[i]
	}
	return env
}

// devNode is a row of the ready summary's node table.
type devNode struct{ region, grpc, ops string }

// devNodes parses the node table of the ready summary.
func devNodes(t *testing.T, stdout string) map[string]devNode {
	t.Helper()
	nodes := map[string]devNode{}
	for line := range strings.SplitSeq(stdout, "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && (f[0] == "central" || strings.HasPrefix(f[0], "edge-")) {
			nodes[f[0]] = devNode{f[1], f[2], f[3]}
		}
	}
	return nodes
}

// devTry returns the command lines the summary offers to try.
func devTry(t *testing.T, stdout string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(stdout, "Try, in another shell:\n")
	if !ok {
		t.Fatalf("no commands to try in:\n%s", stdout)
	}
	block, _, _ := strings.Cut(rest, "\n\n")
	var cmds []string
	for line := range strings.SplitSeq(block, "\n") {
		cmds = append(cmds, strings.TrimPrefix(line, "  "))
	}
	return cmds
}

// describeDemo returns the demo key's metadata as `key describe --output
// json` prints it.
func describeDemo(t *testing.T, env map[string]string) keyJSON {
	t.Helper()
	r := framework.CLI(t, env, nil, "key", "describe", demoKeyID, "--output", "json")
	framework.WantCode(t, r, 0)
	var k keyJSON
	must(t, "decoding key describe", json.Unmarshal([]byte(r.Stdout), &k))
	return k
}

// withAddr is env with another KEYBROKER_ADDR.
func withAddr(env map[string]string, addr string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	out[framework.EnvAddr] = addr
	return out
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
	p := startDev(t, dir, "--port", "0")
	env := p.waitReady(t)
	stdout, _ := p.output()

	// The env file: 0600, absolute paths, the us edge, the admin.
	envPath := filepath.Join(dir, devEnvFile)
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
	nodes := devNodes(t, stdout)
	for name, region := range map[string]string{"central": "-", "edge-us": "us", "edge-eu": "eu"} {
		n, ok := nodes[name]
		if !ok {
			t.Fatalf("the summary lists no %s:\n%s", name, stdout)
		}
		if n.region != region || !strings.HasPrefix(n.ops, "https://") {
			t.Errorf("%s: region %q, ops %q; want region %q and an https URL", name, n.region, n.ops, region)
		}
	}
	if env[framework.EnvAddr] != nodes["edge-us"].grpc {
		t.Errorf("%s=%q, want the us edge %q", framework.EnvAddr, env[framework.EnvAddr], nodes["edge-us"].grpc)
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
		resp, err := hc.Get(n.ops + "/readyz")
		must(t, name+" /readyz", err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s %s/readyz: %s", name, n.ops, resp.Status)
		}
	}

	// The demo key through the us edge, and the ciphertext everywhere.
	r := framework.CLI(t, env, []byte("hello"), "encrypt", "--key", demoKeyID)
	framework.WantCode(t, r, 0)
	ct := []byte(r.Stdout)
	for _, name := range []string{"edge-us", "edge-eu", "central"} {
		r := framework.CLI(t, withAddr(env, nodes[name].grpc), ct, "decrypt")
		framework.WantCode(t, r, 0)
		if r.Stdout != "hello" {
			t.Errorf("decrypt at %s = %q, want hello", name, r.Stdout)
		}
	}
	r = framework.CLI(t, env, nil, "key", "list", "--output", "json")
	framework.WantCode(t, r, 0)
	var list keyListJSON
	must(t, "decoding key list", json.Unmarshal([]byte(r.Stdout), &list))
	if len(list.Keys) != 1 || list.Keys[0].KeyID != demoKeyID || list.Keys[0].Type != "aes-256-gcm" || list.Keys[0].Mode != "derive" {
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
		"central": "central  " + nodes["central"].grpc + " connected=true",
		"edge-us": "edge us " + nodes["edge-us"].grpc + " connected=true",
		"edge-eu": "edge eu " + nodes["edge-eu"].grpc + " connected=true",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nodes mismatch (-want +got):\n%s", diff)
	}
	r = framework.CLI(t, env, nil, "lookup", "--key", demoKeyID, "--op", "encrypt")
	framework.WantCode(t, r, 0)
	if first := strings.Fields(strings.Split(r.Stdout, "\n")[1]); len(first) == 0 || first[0] != "edge-us" {
		t.Errorf("lookup from the us edge does not put it first:\n%s", r.Stdout)
	}

	// Every command the summary offers works, pasted into bash as printed.
	tryCmds := devTry(t, stdout)
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
	p.interrupt(t)
	if _, err := os.Stat(envPath); err != nil {
		t.Errorf("the env file is gone after the stop: %v", err)
	}
	if _, stderr := p.output(); !strings.Contains(stderr, "msg=stopped") {
		t.Errorf("no stopped log line on stderr:\n%s", stderr)
	}

	// Again, on the same directory.
	p = startDev(t, dir, "--port", "0")
	env = p.waitReady(t)
	stdout, _ = p.output()
	if want := "demo key:       demo (aes-256-gcm, derive, primary version 2): exists, created " + before.CreatedAt.UTC().Format(time.RFC3339); !strings.Contains(stdout, want) {
		t.Errorf("the second summary lacks %q:\n%s", want, stdout)
	}
	if env[framework.EnvAddr] != devNodes(t, stdout)["edge-us"].grpc {
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
	p.interrupt(t)
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
	ctx, cancel := context.WithTimeout(t.Context(), devStopTimeout)
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
	p := startDev(t, dir, "--port", "0", "--backend", tok.URI(""))
	env := p.waitReady(t)
	stdout, _ := p.output()
	if want := "root of trust:  " + tok.URI(""); !strings.Contains(stdout, want) {
		t.Errorf("the summary lacks %q:\n%s", want, stdout)
	}
	r := framework.CLI(t, env, []byte("hello"), "encrypt", "--key", demoKeyID)
	framework.WantCode(t, r, 0)
	r = framework.CLI(t, withAddr(env, devNodes(t, stdout)["edge-eu"].grpc), []byte(r.Stdout), "decrypt")
	framework.WantCode(t, r, 0)
	if r.Stdout != "hello" {
		t.Errorf("decrypt at edge-eu = %q, want hello", r.Stdout)
	}
	if k := describeDemo(t, env); k.RootKey != "pkcs11:token="+tok.Label+";object=root-prf" {
		t.Errorf("the demo key's root is %q, want the token's root-prf", k.RootKey)
	}
	p.interrupt(t)
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
	p := startDev(t, dir, "--port", "0", "--softhsm")
	env := p.waitReady(t)
	stdout, _ := p.output()
	if want := "root of trust:  pkcs11:token=keybroker-dev?module-path="; !strings.Contains(stdout, want) {
		t.Errorf("the summary lacks %q:\n%s", want, stdout)
	}
	r := framework.CLI(t, env, []byte("hello"), "encrypt", "--key", demoKeyID)
	framework.WantCode(t, r, 0)
	ct := r.Stdout
	r = framework.CLI(t, withAddr(env, devNodes(t, stdout)["edge-eu"].grpc), []byte(ct), "decrypt")
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
	p.interrupt(t)

	p = startDev(t, dir, "--port", "0", "--softhsm")
	env = p.waitReady(t)
	r = framework.CLI(t, env, []byte(ct), "decrypt")
	framework.WantCode(t, r, 0)
	if r.Stdout != "hello" {
		t.Errorf("decrypt after a restart = %q, want hello", r.Stdout)
	}
	if again, _ := os.ReadFile(pinFile); !bytes.Equal(again, pin) {
		t.Error("a restart made a new token (the PIN changed)")
	}
	p.interrupt(t)
}

// TestDevSoftHSMMissing: without SoftHSM2, dev --softhsm stops at once
// naming the package to install, and makes nothing.
func TestDevSoftHSMMissing(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithTimeout(t.Context(), devStopTimeout)
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
