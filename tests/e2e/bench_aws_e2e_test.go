package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestBenchAWS drives keybroker bench --protocol awsjson and xks at a
// real central process serving both AWS front-ends, with an access key
// from the CLI: the AWS KMS API's calls and the gRPC path's are each
// counted exactly and all succeed (decrypts compared with what was
// encrypted), with the ratio of their rates; XKS requests at a fixed
// rate are all started and all succeed, with ordered percentiles.
func TestBenchAWS(t *testing.T) {
	f := framework.StartAWSFront(t)
	env := f.CLIEnv(t, f.Central.Addr, identity.Admin, "ops")
	env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_REGION"] = f.Key.ID, f.Key.Secret, framework.AWSRegion

	for _, op := range []string{"encrypt", "decrypt", "datakey"} {
		t.Run("awsjson/"+op, func(t *testing.T) {
			r := framework.CLI(t, env, nil, "bench", "--protocol", "awsjson", "--endpoint", f.KMSURL, "--op", op, "--key", framework.DemoKeyID,
				"--count", "120", "-c", "4", "--warmup", "0", "--size", "1KiB", "--context", "app=bench", "--output", "json")
			framework.WantCode(t, r, 0)
			var b struct {
				Protocol string                       `json:"protocol"`
				Result   struct{ Ops, Failed uint64 } `json:"result"`
				GRPC     struct{ Ops, Failed uint64 } `json:"grpc"`
				Calls    map[string]uint64            `json:"calls_by_op"`
				Ratio    float64                      `json:"ratio_to_grpc"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &b); err != nil {
				t.Fatalf("bench --output json printed %q: %v", r.Stdout, err)
			}
			if b.Protocol != "awsjson" || b.Result.Ops != 120 || b.Result.Failed != 0 || b.Calls[op] != 120 || b.GRPC.Ops != 120 || b.GRPC.Failed != 0 || b.Ratio <= 0 {
				t.Errorf("bench --protocol awsjson --op %s = %+v; want 120 good calls each way and a ratio", op, b)
			}
		})
	}
	for name, flags := range map[string][]string{"signer": {"--aws-client", "signer"}, "signer-http1": {"--aws-client", "signer", "--http1"}, "sdk-http1": {"--http1"}} {
		t.Run("awsjson/"+name, func(t *testing.T) {
			r := framework.CLI(t, env, nil, append([]string{"bench", "--protocol", "awsjson", "--endpoint", f.KMSURL, "--op", "encrypt:1,decrypt:1,datakey:1",
				"--key", framework.DemoKeyID, "--count", "90", "-c", "3", "--warmup", "0", "--output", "json"}, flags...)...)
			framework.WantCode(t, r, 0)
			var b struct {
				Client string                       `json:"aws_client"`
				Result struct{ Ops, Failed uint64 } `json:"result"`
				Calls  map[string]uint64            `json:"calls_by_op"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &b); err != nil {
				t.Fatalf("bench --output json printed %q: %v", r.Stdout, err)
			}
			client := "sdk"
			if flags[0] == "--aws-client" {
				client = flags[1]
			}
			if b.Client != client || b.Result.Ops != 90 || b.Result.Failed != 0 ||
				b.Calls["encrypt"]+b.Calls["decrypt"]+b.Calls["datakey"] != 90 || b.Calls["encrypt"] == 0 || b.Calls["decrypt"] == 0 || b.Calls["datakey"] == 0 {
				t.Errorf("bench --protocol awsjson %v = %+v; want 90 good calls of all three", flags, b)
			}
		})
	}
	t.Run("awsjson/text", func(t *testing.T) {
		r := framework.CLI(t, env, nil, "bench", "--protocol", "awsjson", "--endpoint", f.KMSURL, "--op", "encrypt", "--key", framework.DemoKeyID,
			"--duration", "1s", "--rounds", "2", "-c", "2", "--warmup", "0")
		framework.WantCode(t, r, 0)
		for _, want := range []string{"encrypt awsjson", "encrypt grpc", "awsjson ÷ grpc", "median of 2 alternating rounds"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("bench --protocol awsjson printed %q, without %q", r.Stdout, want)
			}
		}
	})
	t.Run("awsjson/cpu", func(t *testing.T) {
		// --metrics names the node's process: its CPU per call of each path is reported beside the bench's own.
		// Alternating rounds, and one run each (measured from the end of its warm-up).
		metrics := "https://" + f.Central.OpsAddr + "/metrics"
		for _, load := range [][]string{{"--duration", "2s", "--rounds", "2", "--warmup", "0"}, {"--count", "400", "--warmup", "200ms"}} {
			r := framework.CLI(t, env, nil, append([]string{"bench", "--protocol", "awsjson", "--endpoint", f.KMSURL, "--op", "encrypt", "--key", framework.DemoKeyID,
				"-c", "4", "--metrics", metrics, "--output", "json"}, load...)...)
			framework.WantCode(t, r, 0)
			var b struct {
				CPU struct {
					NodeAWS   float64 `json:"node_awsjson"`
					NodeGRPC  float64 `json:"node_grpc"`
					BenchAWS  float64 `json:"bench_awsjson"`
					BenchGRPC float64 `json:"bench_grpc"`
					Ratio     float64 `json:"node_ratio"`
					Error     string  `json:"node_error"`
				} `json:"cpu_us_per_call"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &b); err != nil {
				t.Fatalf("bench --output json printed %q: %v", r.Stdout, err)
			}
			c := b.CPU
			if c.Error != "" || c.NodeAWS <= 0 || c.NodeGRPC <= 0 || c.BenchAWS <= 0 || c.BenchGRPC <= 0 || c.Ratio != c.NodeGRPC/c.NodeAWS {
				t.Errorf("bench --metrics %v: CPU per call %+v; want every figure above 0 and the node's ratio", load, c)
			}
		}
	})
	t.Run("awsjson/wrong-secret", func(t *testing.T) {
		bad := map[string]string{}
		for k, v := range env {
			bad[k] = v
		}
		bad["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
		r := framework.CLI(t, bad, nil, "bench", "--protocol", "awsjson", "--endpoint", f.KMSURL, "--op", "encrypt", "--key", framework.DemoKeyID,
			"--count", "10", "-c", "1", "--warmup", "0", "--rounds", "1")
		if r.Code != 1 || !strings.Contains(r.Stderr, "Unauthenticated") {
			t.Errorf("bench with a wrong secret: exit %d, %q; want 1 and the failures counted as Unauthenticated", r.Code, r.Stderr)
		}
	})
	for _, op := range []string{"encrypt", "decrypt"} {
		t.Run("xks/"+op, func(t *testing.T) {
			r := framework.CLI(t, env, nil, "bench", "--protocol", "xks", "--endpoint", f.XKSURL, "--op", op, "--key", framework.DemoKeyID,
				"--rate", "200", "--duration", "1s", "-c", "8", "--warmup", "0", "--size", "32", "--output", "json")
			framework.WantCode(t, r, 0)
			var b struct {
				Result struct {
					Ops, Failed uint64
					Latency     map[string]float64 `json:"latency_us"`
				} `json:"result"`
				Rate float64 `json:"offered_per_s"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &b); err != nil {
				t.Fatalf("bench --output json printed %q: %v", r.Stdout, err)
			}
			l := b.Result.Latency
			if b.Result.Ops != 200 || b.Result.Failed != 0 || b.Rate != 200 || !(l["p50"] > 0 && l["p50"] <= l["p99"]) {
				t.Errorf("bench --protocol xks --op %s --rate 200 --duration 1s = %+v; want 200 good calls, p50 ≤ p99", op, b)
			}
		})
	}
	t.Run("xks/wrong-prefix", func(t *testing.T) {
		r := framework.CLI(t, env, nil, "bench", "--protocol", "xks", "--endpoint", f.XKSURL+"-not", "--op", "encrypt", "--key", framework.DemoKeyID,
			"--rate", "50", "--duration", "200ms", "--warmup", "0")
		if r.Code != 1 || !strings.Contains(r.Stderr, "NotFound") {
			t.Errorf("bench at a wrong XKS prefix: exit %d, %q; want 1 and the failures counted as NotFound", r.Code, r.Stderr)
		}
	})
}
