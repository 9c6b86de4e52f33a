package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/identity"
)

// binary is the keybroker binary built once for the process tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keybroker-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "keybroker")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building keybroker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is a directory with a CA, certificates, a softkms keystore with
// root keys, a policy and a central config.
type cluster struct {
	dir    string
	ca     *identity.CA
	caFile string
	config string
}

const e2ePolicy = `
@id("admins")
permit (principal is Admin, action, resource);

@id("app-keys")
permit (principal is Client, action, resource is Key)
when { resource.hasTag("owner") && resource.getTag("owner") == principal.trust_domain };
`

func newCluster(t *testing.T) *cluster {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.crt"), config: filepath.Join(dir, "central.yaml")}
	if err := ca.WriteCA(c.caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueFiles(identity.Identity{TrustDomain: "kb.test", Kind: identity.Central, Name: "central-1"},
		[]string{"127.0.0.1", "localhost"}, time.Hour, dir, "central", c.caFile); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "kek"), bytes.Repeat([]byte("ab"), 32), 0o600)
	os.WriteFile(filepath.Join(dir, "policy.cedar"), []byte(e2ePolicy), 0o600)
	ks := "softkms:%s;path=" + filepath.Join(dir, "softkms.json") + ";kek-source=" + filepath.Join(dir, "kek")
	for name, alg := range map[string]string{"root-prf": "hmac-256", "root-aes": "aes-256"} {
		out, err := exec.Command(binary, "root", "create", fmt.Sprintf(ks, name), "--algorithm", alg).CombinedOutput()
		if err != nil {
			t.Fatalf("root create %s: %v\n%s", name, err, out)
		}
	}
	cfg := fmt.Sprintf(`node_id: central-1
trust_domain: kb.test
listen: 127.0.0.1:0
ops_listen: 127.0.0.1:0
tls: {ca: ca.crt, cert: central.crt, key: central.key}
data_dir: data
backends:
  - name: soft
    uri: "softkms:path=%s;kek-source=%s"
default_root_keys:
  derive: "softkms:root-prf"
  wrap: "softkms:root-aes"
policy:
  paths: [policy.cedar]
`, filepath.Join(dir, "softkms.json"), filepath.Join(dir, "kek"))
	os.WriteFile(c.config, []byte(cfg), 0o600)
	return c
}

// proc is a running keybroker central process.
type proc struct {
	cmd  *exec.Cmd
	addr string
	logs *bytes.Buffer
	done chan error
}

// startCentral runs the central process and waits for its "central ready"
// log line, which carries the listen address.
func (c *cluster) startCentral(t *testing.T) *proc {
	t.Helper()
	cmd := exec.Command(binary, "central", "--config", c.config)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: &bytes.Buffer{}, done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logs.WriteString(line + "\n")
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "central ready" {
				ready <- rec["grpc_addr"].(string)
			}
		}
		io.Copy(io.Discard, stderr)
		p.done <- cmd.Wait()
		close(ready)
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	select {
	case addr, ok := <-ready:
		if !ok {
			t.Fatalf("central exited before it was ready:\n%s", p.logs)
		}
		p.addr = addr
	case <-t.Context().Done():
		t.Fatal("test ended before central was ready")
	}
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.done; err != nil {
		t.Errorf("central exited with %v after SIGTERM:\n%s", err, p.logs)
	}
}

// cli runs the CLI in-process as identity kind/name.
func (c *cluster) cli(t *testing.T, addr string, kind identity.Kind, name string, stdin []byte, args ...string) (string, int) {
	t.Helper()
	files, err := c.ca.IssueFiles(identity.Identity{TrustDomain: "kb.test", Kind: kind, Name: name}, nil, time.Hour, c.dir, string(kind)+"-"+name, c.caFile)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"KEYBROKER_ADDR": addr, "KEYBROKER_CA": files.CA, "KEYBROKER_CERT": files.Cert, "KEYBROKER_KEY": files.Key}
	var out, errb bytes.Buffer
	code := run(t.Context(), args, func(k string) string { return env[k] }, bytes.NewReader(stdin), &out, &errb)
	if code != 0 {
		return out.String() + errb.String(), code
	}
	return out.String(), code
}

func TestCentralProcessEndToEnd(t *testing.T) {
	c := newCluster(t)
	p := c.startCentral(t)

	out, code := c.cli(t, p.addr, identity.Admin, "ops", nil, "key", "create", "payments", "--type", "aes-256-gcm", "--mode", "derive", "--label", "owner=kb.test")
	if code != 0 {
		t.Fatalf("key create: exit %d: %s", code, out)
	}
	ct, code := c.cli(t, p.addr, identity.Client, "billing", []byte("card 4111"), "encrypt", "--key", "payments", "--context", "order=7")
	if code != 0 {
		t.Fatalf("encrypt: exit %d: %s", code, ct)
	}
	pt, code := c.cli(t, p.addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=7")
	if code != 0 || pt != "card 4111" {
		t.Fatalf("decrypt = %q, exit %d", pt, code)
	}
	if out, code := c.cli(t, p.addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=8"); code != 6 {
		t.Errorf("decrypt with the wrong context: exit %d (%s), want 6", code, out)
	}
	if out, code := c.cli(t, p.addr, identity.Client, "billing", nil, "key", "rotate", "payments"); code != 3 {
		t.Errorf("client rotates: exit %d (%s), want 3 (denied)", code, out)
	}

	// Restart: every key, version and ciphertext survives.
	p.stop(t)
	p = c.startCentral(t)
	if out, code := c.cli(t, p.addr, identity.Admin, "ops", nil, "key", "rotate", "payments"); code != 0 {
		t.Fatalf("rotate after restart: exit %d: %s", code, out)
	}
	pt, code = c.cli(t, p.addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=7")
	if code != 0 || pt != "card 4111" {
		t.Errorf("decrypt after restart and rotation = %q, exit %d", pt, code)
	}
	p.stop(t)
	if out, code := c.cli(t, "", identity.Admin, "ops", nil, "audit", "verify", filepath.Join(c.dir, "data", "audit.jsonl")); code != 0 || !strings.Contains(out, "verified") {
		t.Errorf("audit verify: exit %d: %s", code, out)
	}
}
