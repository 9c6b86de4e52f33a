package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/tests/framework"
)

// benchResult is the part of bench --output json the tests read.
type benchResult struct {
	Target string `json:"target"`
	Result struct {
		Ops     uint64             `json:"ops"`
		Rate    float64            `json:"ops_per_s"`
		Failed  uint64             `json:"failed"`
		Errors  map[string]uint64  `json:"errors"`
		Latency map[string]float64 `json:"latency_us"`
	} `json:"result"`
	Calls map[string]uint64 `json:"calls_by_op"`
	Noop  *struct {
		Ops uint64 `json:"ops"`
	} `json:"noop"`
	Ratio       float64   `json:"ratio_to_noop"`
	RoundRatios []float64 `json:"round_ratios"`
	Intervals   []struct {
		Ops       uint64 `json:"ops"`
		Processes []struct {
			Error      string  `json:"error"`
			RSS        float64 `json:"resident_bytes"`
			Goroutines float64 `json:"goroutines"`
		} `json:"processes"`
	} `json:"intervals"`
	Memory []struct {
		First float64 `json:"first_bytes"`
		Peak  float64 `json:"peak_bytes"`
	} `json:"memory"`
}

func decodeBench(t *testing.T, r framework.Result) benchResult {
	t.Helper()
	var b benchResult
	if err := json.Unmarshal([]byte(r.Stdout), &b); err != nil {
		t.Fatalf("bench --output json printed %q: %v (stderr %s)", r.Stdout, err, r.Stderr)
	}
	return b
}

// TestBenchEndToEnd drives every operation of keybroker bench at a real
// keybroker dev and checks what it reports: the exact count of calls, no
// failures, ordered percentiles, the no-op comparison, a weighted mix,
// periods with the process's memory, and failures counted by code.
func TestBenchEndToEnd(t *testing.T) {
	t.Parallel()
	p := framework.StartDev(t, filepath.Join(t.TempDir(), "kb"), "--port", "0")
	env := p.WaitReady(t)
	stdout, _ := p.Output()
	nodes := framework.DevNodes(t, stdout)
	framework.WantCode(t, framework.CLI(t, env, nil, "key", "create", "bench-mac", "--type", "hmac-sha256", "--mode", "derive"), 0)
	framework.WantCode(t, framework.CLI(t, env, nil, "key", "create", "bench-sign", "--type", "ecdsa-p256", "--mode", "wrap"), 0)
	keys := []string{"--key", framework.DemoKeyID, "--mac-key", "bench-mac", "--sign-key", "bench-sign"}

	for _, op := range []string{"encrypt", "decrypt", "datakey", "sign", "mac", "lookup", "batch-encrypt", "batch-decrypt", "noop"} {
		t.Run(op, func(t *testing.T) {
			r := framework.CLI(t, env, nil, append([]string{"bench", "--op", op, "--count", "150", "-c", "4", "--warmup", "0",
				"--size", "100", "--batch", "3", "--context", "app=bench", "--output", "json"}, keys...)...)
			framework.WantCode(t, r, 0)
			b := decodeBench(t, r)
			if b.Result.Ops != 150 || b.Result.Failed != 0 || b.Calls[op] != 150 || b.Result.Rate <= 0 {
				t.Errorf("ops %d, failed %d (%v), calls %v, rate %v; want 150 calls of %s, all good",
					b.Result.Ops, b.Result.Failed, b.Result.Errors, b.Calls, b.Result.Rate, op)
			}
			l := b.Result.Latency
			if !(l["p50"] > 0 && l["p50"] <= l["p90"] && l["p90"] <= l["p99"] && l["p99"] <= l["p99_9"] && l["p99_9"] <= l["max"]) {
				t.Errorf("latency %v: percentiles missing or out of order", l)
			}
		})
	}

	t.Run("compare-noop at another node", func(t *testing.T) {
		r := framework.CLI(t, framework.WithAddr(env, nodes["central"].GRPC), nil, "bench", "--key", framework.DemoKeyID, "--count", "200", "-c", "8",
			"--connections", "2", "--warmup", "0", "--compare-noop")
		framework.WantCode(t, r, 0)
		for _, want := range []string{"at " + nodes["central"].GRPC, "8 workers on 2 connections", "encrypt ", "no-op ", "encrypt ÷ no-op: ", "errors: none"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("bench --compare-noop printed:\n%s\nwant %q in it", r.Stdout, want)
			}
		}
		r = framework.CLI(t, env, nil, "bench", "--key", framework.DemoKeyID, "--count", "100", "--warmup", "0", "--compare-noop", "--output", "json")
		framework.WantCode(t, r, 0)
		if b := decodeBench(t, r); b.Noop == nil || b.Noop.Ops != 100 || b.Ratio <= 0 || len(b.RoundRatios) != 0 {
			t.Errorf("--compare-noop --count --output json: noop %+v ratio %v rounds %v", b.Noop, b.Ratio, b.RoundRatios)
		}
		// With a duration the two loads alternate in rounds.
		r = framework.CLI(t, env, nil, "bench", "--key", framework.DemoKeyID, "--duration", "600ms", "--rounds", "3", "--warmup", "0", "--compare-noop", "--output", "json")
		framework.WantCode(t, r, 0)
		if b := decodeBench(t, r); b.Noop == nil || b.Noop.Ops == 0 || b.Result.Ops == 0 || len(b.RoundRatios) != 3 || b.Ratio <= 0 {
			t.Errorf("--compare-noop --rounds 3: noop %+v ops %d ratio %v rounds %v", b.Noop, b.Result.Ops, b.Ratio, b.RoundRatios)
		}
	})

	t.Run("mix with periods and memory", func(t *testing.T) {
		r := framework.CLI(t, env, nil, append([]string{"bench", "--op", "encrypt:3,decrypt:2,mac:1", "--duration", "2s", "--interval", "200ms",
			"--warmup", "0", "-c", "6", "--metrics", nodes["central"].Ops + "/metrics", "--max-rss-growth", "1000", "--output", "json"}, keys...)...)
		framework.WantCode(t, r, 0)
		b := decodeBench(t, r)
		total := b.Calls["encrypt"] + b.Calls["decrypt"] + b.Calls["mac"]
		if b.Result.Ops == 0 || total < b.Result.Ops || total > b.Result.Ops+6 || b.Calls["encrypt"] < b.Calls["mac"] || b.Calls["decrypt"] < b.Calls["mac"] {
			t.Errorf("calls %v for %d ops: want the mix's 3:2:1 shares adding up", b.Calls, b.Result.Ops)
		}
		if len(b.Intervals) == 0 || len(b.Memory) != 1 || b.Memory[0].First <= 0 || b.Memory[0].Peak < b.Memory[0].First {
			t.Fatalf("intervals %+v memory %+v: want periods with the process's memory", b.Intervals, b.Memory)
		}
		if p := b.Intervals[0].Processes; len(p) != 1 || p[0].RSS <= 0 || p[0].Goroutines <= 0 {
			t.Errorf("first period's readings %+v", p)
		}
	})

	t.Run("failures are counted by code and fail the run", func(t *testing.T) {
		r := framework.CLI(t, env, nil, "bench", "--key", "no-such-key", "--count", "20", "--warmup", "0", "--output", "json")
		framework.WantCode(t, r, exitFailure)
		if b := decodeBench(t, r); b.Result.Failed != 20 || b.Result.Errors["NotFound"] != 20 || b.Result.Ops != 0 {
			t.Errorf("unknown key: ops %d failed %d %v; want 20 NotFound", b.Result.Ops, b.Result.Failed, b.Result.Errors)
		}
		if !strings.Contains(r.Stderr, "20 of 20 calls failed (NotFound 20)") {
			t.Errorf("stderr %q", r.Stderr)
		}
		// Decrypt prepares a ciphertext first; its failure ends the run.
		r = framework.CLI(t, env, nil, "bench", "--op", "decrypt", "--key", "no-such-key", "--count", "20")
		framework.WantCode(t, r, exitNotFound)
		if !strings.Contains(r.Stderr, "preparing decrypt") {
			t.Errorf("stderr %q", r.Stderr)
		}
	})
}
