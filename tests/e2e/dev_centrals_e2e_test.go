package e2e

// The process test of `keybroker dev --centrals 3`: three central nodes
// on the etcd member dev runs, two edges, one process.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/etcdtest"
	"github.com/keybroker/keybroker/tests/framework"
)

// devCentralNodes parses every row of the ready summary's node table,
// central-2 and on included.
func devCentralNodes(stdout string) map[string]framework.DevNode {
	nodes := map[string]framework.DevNode{}
	for line := range strings.SplitSeq(stdout, "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && (strings.HasPrefix(f[0], "central") || strings.HasPrefix(f[0], "edge-")) {
			nodes[f[0]] = framework.DevNode{Region: f[1], GRPC: f[2], Ops: f[3]}
		}
	}
	return nodes
}

// etcdProcesses lists the etcd processes whose data directory is under
// dir, read from /proc.
func etcdProcesses(t *testing.T, dir string) []string {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	must(t, "listing processes", err)
	var found []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // gone meanwhile
		}
		args := strings.Split(string(b), "\x00")
		if i := slices.Index(args, "--data-dir"); i >= 0 && i+1 < len(args) && strings.HasPrefix(args[i+1], dir) {
			found = append(found, filepath.Base(filepath.Dir(p))+" "+strings.Join(args, " "))
		}
	}
	return found
}

// TestDevCentrals runs `keybroker dev --centrals 3`: the summary and the
// env file name the three centrals and dev's etcd; a key created through
// central-2 is described at every central and both edges, encrypts at
// edge-eu and decrypts at edge-us and at every central; LookupKey at an
// edge lists the three centrals; the commands the summary offers work.
// SIGINT stops dev with exit 0 and no etcd process left; a second start
// on the same directory still has the key, and killing it with SIGKILL
// leaves no etcd process either.
func TestDevCentrals(t *testing.T) {
	t.Parallel()
	etcdtest.SkipIfMissing(t)
	dir := filepath.Join(t.TempDir(), "dev")
	p := framework.StartDev(t, dir, "--port", "0", "--centrals", "3")
	env := p.WaitReady(t)
	stdout, _ := p.Output()
	nodes := devCentralNodes(stdout)
	centrals := []string{"central", "central-2", "central-3"}
	for _, name := range append(slices.Clone(centrals), "edge-us", "edge-eu") {
		if _, ok := nodes[name]; !ok {
			t.Fatalf("the summary lists no %s:\n%s", name, stdout)
		}
	}
	if want := "store:          etcd at http://127.0.0.1:"; !strings.Contains(stdout, want) {
		t.Errorf("the summary lacks %q:\n%s", want, stdout)
	}
	envFile, err := os.ReadFile(filepath.Join(dir, framework.DevEnvFile))
	must(t, "env file", err)
	for _, name := range centrals {
		if !strings.Contains(string(envFile), name+" "+nodes[name].GRPC) {
			t.Errorf("the env file does not name %s at %s:\n%s", name, nodes[name].GRPC, envFile)
		}
	}
	if len(etcdProcesses(t, dir)) != 1 {
		t.Errorf("etcd processes of %s: %q, want one", dir, etcdProcesses(t, dir))
	}

	at := func(name string) map[string]string { return framework.WithAddr(env, nodes[name].GRPC) }
	framework.WantCode(t, framework.CLI(t, at("central-2"), nil, "key", "create", "shared", "--type", "aes-256-gcm", "--mode", "derive"), 0)
	// The edges learn of it through whichever central they follow.
	for _, name := range append(slices.Clone(centrals), "edge-us", "edge-eu") {
		framework.Poll(t, "key shared described at "+name, func() (bool, string) {
			r := framework.CLI(t, at(name), nil, "key", "describe", "shared", "--output", "json")
			return r.Code == 0, r.Stderr
		})
	}
	r := framework.CLI(t, at("edge-eu"), []byte("hello"), "encrypt", "--key", "shared")
	framework.WantCode(t, r, 0)
	ct := []byte(r.Stdout)
	for _, name := range append(slices.Clone(centrals), "edge-us") {
		r := framework.CLI(t, at(name), ct, "decrypt")
		framework.WantCode(t, r, 0)
		if r.Stdout != "hello" {
			t.Errorf("decrypt at %s = %q, want hello", name, r.Stdout)
		}
	}

	// LookupKey at an edge lists every central, at its address.
	want := map[string]string{}
	for _, name := range centrals {
		want[name] = nodes[name].GRPC
	}
	framework.Poll(t, "lookup at edge-us lists the three centrals", func() (bool, string) {
		r := framework.CLI(t, at("edge-us"), nil, "lookup", "--key", "shared", "--op", "encrypt", "--output", "json")
		if r.Code != 0 {
			return false, r.Stderr
		}
		var found []lookupJSON
		if err := json.Unmarshal([]byte(r.Stdout), &found); err != nil {
			return false, err.Error()
		}
		got := map[string]string{}
		for _, n := range found {
			if n.Kind == "central" {
				got[n.NodeID] = n.Address
			}
		}
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprintf("centrals %v, want %v", got, want)
	})

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
	if !strings.Contains(string(out), "hello\n") {
		t.Errorf("the commands to try did not decrypt hello:\n%s", out)
	}

	p.Interrupt(t)
	if left := etcdProcesses(t, dir); len(left) != 0 {
		t.Errorf("etcd still running after dev stopped: %q", left)
	}

	// Again, on the same directory: the key is in etcd's data.
	p = framework.StartDev(t, dir, "--port", "0", "--centrals", "3")
	env = p.WaitReady(t)
	stdout, _ = p.Output()
	nodes = devCentralNodes(stdout)
	r = framework.CLI(t, at("central-3"), ct, "decrypt")
	framework.WantCode(t, r, 0)
	if r.Stdout != "hello" {
		t.Errorf("decrypt at central-3 after a restart = %q, want hello", r.Stdout)
	}
	// Killed outright, dev cannot stop etcd: the kernel does.
	must(t, "kill -9", p.Cmd.Process.Kill())
	framework.Poll(t, "no etcd left after kill -9 of dev", func() (bool, string) {
		left := etcdProcesses(t, dir)
		return len(left) == 0, fmt.Sprintf("still running: %q", left)
	})
}
