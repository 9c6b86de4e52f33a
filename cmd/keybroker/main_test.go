package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
)

type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the command line in-process as main would, with env as the
// environment and stdin as standard input.
func runCLI(t *testing.T, env map[string]string, stdin []byte, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), args, func(k string) string { return env[k] }, bytes.NewReader(stdin), &stdout, &stderr)
	return result{code, stdout.String(), stderr.String()}
}

// runOnTerminal is runCLI with stdout taken for a terminal.
func runOnTerminal(t *testing.T, vars map[string]string, stdin []byte, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := execute(t.Context(), &env{
		stdin: bytes.NewReader(stdin), stdout: &stdout, stderr: &stderr,
		getenv: func(k string) string { return vars[k] }, stdoutIsTerminal: true,
	}, args)
	return result{code, stdout.String(), stderr.String()}
}

func (b *testBroker) run(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	return runCLI(t, b.env(), stdin, args...)
}

func wantCode(t *testing.T, r result, want int) {
	t.Helper()
	if r.code != want {
		t.Fatalf("exit code %d, want %d\nstdout: %q\nstderr: %s", r.code, want, r.stdout, r.stderr)
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sha(b []byte) []byte {
	d := sha256.Sum256(b)
	return d[:]
}

// TestRequests checks that each command sends the request it should, with
// exactly the fields that were given.
func TestRequests(t *testing.T) {
	t.Parallel()
	ec := map[string]string{"tenant": "42"}
	msg := []byte("release notes")
	digest := sha(msg)
	tests := []struct {
		name   string
		stdin  []byte
		files  map[string][]byte // written to $DIR first
		args   []string
		code   int // want exit code; 0 unless set
		method string
		want   proto.Message
	}{
		{
			name:   "encrypt",
			stdin:  []byte("hello"),
			args:   []string{"encrypt", "--key", "payments", "--context", "tenant=42", "--context", "app=web"},
			method: "KeyBroker/Encrypt",
			want:   &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("hello"), EncryptionContext: map[string]string{"tenant": "42", "app": "web"}},
		},
		{
			name:   "encrypt empty value in context",
			stdin:  []byte("hello"),
			args:   []string{"encrypt", "--key", "payments", "--context", "tenant=", "--context", "a=b=c"},
			method: "KeyBroker/Encrypt",
			want:   &kbv1.EncryptRequest{KeyId: "payments", Plaintext: []byte("hello"), EncryptionContext: map[string]string{"tenant": "", "a": "b=c"}},
		},
		{
			name:   "decrypt",
			stdin:  fakeSeal("payments", ec, []byte("hello")),
			args:   []string{"decrypt", "--key", "payments", "--context", "tenant=42"},
			method: "KeyBroker/Decrypt",
			want:   &kbv1.DecryptRequest{Ciphertext: fakeSeal("payments", ec, []byte("hello")), EncryptionContext: ec, KeyId: "payments"},
		},
		{
			name:   "reencrypt",
			stdin:  fakeSeal("payments", ec, []byte("hello")),
			args:   []string{"reencrypt", "--to-key", "payments-2", "--context", "tenant=42", "--to-context", "tenant=43"},
			method: "KeyBroker/ReEncrypt",
			want: &kbv1.ReEncryptRequest{
				Ciphertext:                   fakeSeal("payments", ec, []byte("hello")),
				SourceEncryptionContext:      ec,
				DestinationKeyId:             "payments-2",
				DestinationEncryptionContext: map[string]string{"tenant": "43"},
			},
		},
		{
			name:   "datakey",
			args:   []string{"datakey", "--key", "payments", "--context", "tenant=42"},
			method: "KeyBroker/GenerateDataKey",
			want:   &kbv1.GenerateDataKeyRequest{KeyId: "payments", EncryptionContext: ec},
		},
		{
			name:   "datakey without plaintext",
			args:   []string{"datakey", "--key", "payments", "--no-plaintext"},
			method: "KeyBroker/GenerateDataKeyWithoutPlaintext",
			want:   &kbv1.GenerateDataKeyRequest{KeyId: "payments"},
		},
		{
			name:   "sign message",
			stdin:  msg,
			args:   []string{"sign", "--key", "releases"},
			method: "KeyBroker/Sign",
			want:   &kbv1.SignRequest{KeyId: "releases", Input: &kbv1.SignRequest_Message{Message: msg}},
		},
		{
			name:   "sign digest",
			stdin:  digest,
			args:   []string{"sign", "--key", "releases", "--digest"},
			method: "KeyBroker/Sign",
			want:   &kbv1.SignRequest{KeyId: "releases", Input: &kbv1.SignRequest_Digest{Digest: digest}},
		},
		{
			name:   "verify message",
			stdin:  msg,
			files:  map[string][]byte{"sig": fakeSignature("releases", digest)},
			args:   []string{"verify", "--key", "releases", "--key-version", "2", "--signature", "$DIR/sig"},
			method: "KeyBroker/Verify",
			want: &kbv1.VerifyRequest{KeyId: "releases", KeyVersion: 2, Signature: fakeSignature("releases", digest),
				Input: &kbv1.VerifyRequest_Message{Message: msg}},
		},
		{
			name:   "verify digest from file, signature from stdin",
			stdin:  fakeSignature("releases", digest),
			files:  map[string][]byte{"digest": digest},
			args:   []string{"verify", "--key", "releases", "--digest", "--in", "$DIR/digest", "--signature", "-"},
			method: "KeyBroker/Verify",
			want: &kbv1.VerifyRequest{KeyId: "releases", Signature: fakeSignature("releases", digest),
				Input: &kbv1.VerifyRequest_Digest{Digest: digest}},
		},
		{
			name:   "mac",
			stdin:  msg,
			args:   []string{"mac", "--key", "tokens"},
			method: "KeyBroker/GenerateMac",
			want:   &kbv1.GenerateMacRequest{KeyId: "tokens", Message: msg},
		},
		{
			name:   "verify-mac",
			stdin:  msg,
			files:  map[string][]byte{"mac": fakeMAC("tokens", msg)},
			args:   []string{"verify-mac", "--key", "tokens", "--key-version", "1", "--mac", "$DIR/mac"},
			method: "KeyBroker/VerifyMac",
			want:   &kbv1.VerifyMacRequest{KeyId: "tokens", KeyVersion: 1, Message: msg, Mac: fakeMAC("tokens", msg)},
		},
		{
			name:   "random",
			args:   []string{"random", "--length", "32"},
			method: "KeyBroker/GenerateRandom",
			want:   &kbv1.GenerateRandomRequest{Length: 32},
		},
		{
			name: "key create, every flag",
			args: []string{"key", "create", "tokens", "--type", "hmac-sha256", "--mode", "wrap", "--derived",
				"--root-key", "pkcs11:token=kb;object=root-1", "--label", "team=auth", "--label", "env=prod",
				"--rotation-period", "2160h", "--description", "API tokens"},
			method: "KeyAdmin/CreateKey",
			want: &kbv1.CreateKeyRequest{
				KeyId: "tokens", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Derived: true,
				RootKey: "pkcs11:token=kb;object=root-1", Labels: map[string]string{"team": "auth", "env": "prod"},
				RotationPeriod: durationpb.New(2160 * time.Hour), Description: "API tokens",
			},
		},
		{
			name:   "key create with no flags: aes-256-gcm, derive",
			args:   []string{"key", "create", "plain"},
			method: "KeyAdmin/CreateKey",
			want:   &kbv1.CreateKeyRequest{KeyId: "plain", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE},
		},
		{
			name:   "key create, type and mode",
			args:   []string{"key", "create", "releases", "--type", "ed25519", "--mode", "backend"},
			method: "KeyAdmin/CreateKey",
			want:   &kbv1.CreateKeyRequest{KeyId: "releases", Type: kbv1.KeyType_KEY_TYPE_ED25519, Mode: kbv1.KeyMode_KEY_MODE_BACKEND},
		},
		{
			name:   "key create ecdsa-p256 derive",
			args:   []string{"key", "create", "k", "--type", "ecdsa-p256", "--mode", "derive"},
			method: "KeyAdmin/CreateKey",
			want:   &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: kbv1.KeyMode_KEY_MODE_DERIVE},
		},
		{
			name:   "key create aes-256-gcm",
			args:   []string{"key", "create", "k", "--type", "aes-256-gcm", "--mode", "wrap"},
			method: "KeyAdmin/CreateKey",
			want:   &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_WRAP},
		},
		{
			name:   "key list",
			args:   []string{"key", "list", "--label", "team=pay", "--page-size", "50"},
			method: "KeyBroker/ListKeys",
			want:   &kbv1.ListKeysRequest{PageSize: 50, LabelSelector: map[string]string{"team": "pay"}},
		},
		{
			name:   "key describe",
			args:   []string{"key", "describe", "payments"},
			method: "KeyBroker/DescribeKey",
			want:   &kbv1.DescribeKeyRequest{KeyId: "payments"},
		},
		{
			name:   "key rotate",
			args:   []string{"key", "rotate", "payments"},
			method: "KeyAdmin/RotateKey",
			want:   &kbv1.KeyRequest{KeyId: "payments"},
		},
		{
			name:   "key update description only",
			args:   []string{"key", "update", "payments", "--description", ""},
			method: "KeyAdmin/UpdateKey",
			want:   &kbv1.UpdateKeyRequest{KeyId: "payments", Description: proto.String("")},
		},
		{
			name:   "key update rotation off",
			args:   []string{"key", "update", "payments", "--rotation-period", "0"},
			method: "KeyAdmin/UpdateKey",
			want:   &kbv1.UpdateKeyRequest{KeyId: "payments", RotationPeriod: durationpb.New(0)},
		},
		{
			name: "key update labels, minimum version, revision",
			args: []string{"key", "update", "payments", "--replace-labels", "--label", "team=pay", "--label", "tier=1",
				"--min-decryption-version", "2", "--expected-revision", "17"},
			method: "KeyAdmin/UpdateKey",
			want: &kbv1.UpdateKeyRequest{KeyId: "payments", ExpectedRevision: 17, ReplaceLabels: true,
				Labels: map[string]string{"team": "pay", "tier": "1"}, MinDecryptionVersion: proto.Uint32(2)},
		},
		{
			name:   "node enroll",
			args:   []string{"node", "enroll", "edge-eu-1", "--region", "eu", "--label", "zone=a", "--label", "pci=yes"},
			method: "KeyAdmin/EnrollNode",
			want:   &kbv1.EnrollNodeRequest{NodeId: "edge-eu-1", Region: "eu", Labels: map[string]string{"zone": "a", "pci": "yes"}},
		},
		{
			name:   "node update region",
			args:   []string{"node", "update", "edge-eu-1", "--region", "us"},
			method: "KeyAdmin/UpdateNode",
			want:   &kbv1.UpdateNodeRequest{NodeId: "edge-eu-1", Region: proto.String("us")},
		},
		{
			name:   "node update replace labels",
			args:   []string{"node", "update", "edge-eu-1", "--replace-labels", "--label", "zone=b"},
			method: "KeyAdmin/UpdateNode",
			want:   &kbv1.UpdateNodeRequest{NodeId: "edge-eu-1", ReplaceLabels: true, Labels: map[string]string{"zone": "b"}},
		},
		{
			name:   "node remove",
			args:   []string{"node", "remove", "edge-eu-1"},
			method: "KeyAdmin/RemoveNode",
			want:   &kbv1.RemoveNodeRequest{NodeId: "edge-eu-1"},
		},
		{
			name:   "key update min decryption version 0",
			args:   []string{"key", "update", "payments", "--min-decryption-version", "0"},
			method: "KeyAdmin/UpdateKey",
			want:   &kbv1.UpdateKeyRequest{KeyId: "payments", MinDecryptionVersion: proto.Uint32(0)},
		},
		{
			name:   "key disable",
			args:   []string{"key", "disable", "payments"},
			method: "KeyAdmin/DisableKey",
			want:   &kbv1.KeyRequest{KeyId: "payments"},
		},
		{
			name:   "key enable",
			args:   []string{"key", "enable", "payments"},
			method: "KeyAdmin/EnableKey",
			want:   &kbv1.KeyRequest{KeyId: "payments"},
		},
		{
			name:   "key schedule-deletion, broker's default window",
			args:   []string{"key", "schedule-deletion", "payments"},
			method: "KeyAdmin/ScheduleKeyDeletion",
			want:   &kbv1.ScheduleKeyDeletionRequest{KeyId: "payments"},
		},
		{
			name:   "key schedule-deletion with window",
			args:   []string{"key", "schedule-deletion", "payments", "--pending-window", "168h"},
			method: "KeyAdmin/ScheduleKeyDeletion",
			want:   &kbv1.ScheduleKeyDeletionRequest{KeyId: "payments", PendingWindow: durationpb.New(168 * time.Hour)},
		},
		{
			name:   "key cancel-deletion",
			args:   []string{"key", "cancel-deletion", "payments"},
			method: "KeyAdmin/CancelKeyDeletion",
			want:   &kbv1.KeyRequest{KeyId: "payments"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := startBroker(t, brokerConfig{})
			dir := t.TempDir()
			for name, data := range tt.files {
				writeFile(t, dir, name, data)
			}
			args := slices.Clone(tt.args)
			for i := range args {
				args[i] = strings.ReplaceAll(args[i], "$DIR", dir)
			}
			r := b.run(t, tt.stdin, args...)
			wantCode(t, r, tt.code)
			calls := b.fake.recorded()
			if len(calls) != 1 {
				t.Fatalf("%d calls, want 1: %v", len(calls), calls)
			}
			c := calls[0]
			if want := "/keybroker.v1." + tt.method; c.method != want {
				t.Errorf("method %s, want %s", c.method, want)
			}
			if diff := cmp.Diff(tt.want, c.req, protocmp.Transform()); diff != "" {
				t.Errorf("request mismatch (-want +got):\n%s", diff)
			}
			if want := "spiffe://" + testTrustDomain + "/client/alice"; c.caller != want {
				t.Errorf("broker saw caller %q, want %q", c.caller, want)
			}
		})
	}
}

// TestBinaryOutput checks raw bytes to a pipe, base64 to a terminal and
// base64 fields in JSON.
func TestBinaryOutput(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	ct := fakeSeal("payments", nil, []byte("hello"))

	r := b.run(t, []byte("hello"), "encrypt", "--key", "payments")
	wantCode(t, r, 0)
	if r.stdout != string(ct) {
		t.Errorf("encrypt to a pipe wrote %q, want the raw ciphertext %q", r.stdout, ct)
	}

	r = runOnTerminal(t, b.env(), []byte("hello"), "encrypt", "--key", "payments")
	wantCode(t, r, 0)
	if want := base64.StdEncoding.EncodeToString(ct) + "\n"; r.stdout != want {
		t.Errorf("encrypt to a terminal wrote %q, want %q", r.stdout, want)
	}

	r = b.run(t, []byte("hello"), "encrypt", "--key", "payments", "--output", "json")
	wantCode(t, r, 0)
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("encrypt --output json wrote %q: %v", r.stdout, err)
	}
	want := map[string]any{"key_id": "payments", "key_version": float64(fakeVersion), "ciphertext": base64.StdEncoding.EncodeToString(ct)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("encrypt --output json mismatch (-want +got):\n%s", diff)
	}

	// Every byte value survives the trip to a pipe.
	r = b.run(t, nil, "random", "--length", "1024")
	wantCode(t, r, 0)
	if r.stdout != string(fakeRandom(1024)) {
		t.Errorf("random --length 1024 wrote %d bytes, not the broker's 1024", len(r.stdout))
	}
	r = runOnTerminal(t, b.env(), nil, "random", "--length", "4")
	wantCode(t, r, 0)
	if want := base64.StdEncoding.EncodeToString(fakeRandom(4)) + "\n"; r.stdout != want {
		t.Errorf("random on a terminal wrote %q, want %q", r.stdout, want)
	}

	// JSON is JSON on a terminal too.
	r = runOnTerminal(t, b.env(), nil, "random", "--length", "4", "--output", "json")
	wantCode(t, r, 0)
	if want := `{"random":"` + base64.StdEncoding.EncodeToString(fakeRandom(4)) + `"}` + "\n"; r.stdout != want {
		t.Errorf("random --output json wrote %q, want %q", r.stdout, want)
	}

	// An empty plaintext still has its field.
	r = b.run(t, fakeSeal("payments", nil, nil), "decrypt", "--output", "json")
	wantCode(t, r, 0)
	if want := `{"key_id":"payments","key_version":3,"plaintext":""}` + "\n"; r.stdout != want {
		t.Errorf("decrypt of an empty plaintext wrote %q, want %q", r.stdout, want)
	}
}

// TestFiles covers --in and --out with files, and a round trip.
func TestFiles(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	dir := t.TempDir()
	plain := writeFile(t, dir, "plain.txt", []byte("card 4111"))
	enc := filepath.Join(dir, "card.enc")
	dec := filepath.Join(dir, "card.txt")

	r := b.run(t, nil, "encrypt", "--key", "payments", "--context", "tenant=42", "--in", plain, "--out", enc)
	wantCode(t, r, 0)
	ct := fakeSeal("payments", map[string]string{"tenant": "42"}, []byte("card 4111"))
	if want := "encrypted under key payments version 3; wrote " + strconv.Itoa(len(ct)) + " bytes to " + enc + "\n"; r.stdout != want {
		t.Errorf("encrypt --out printed %q, want %q", r.stdout, want)
	}
	got, err := os.ReadFile(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ct) {
		t.Errorf("%s holds %q, want %q", enc, got, ct)
	}
	if fi, err := os.Stat(enc); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v (%v), want 0600", enc, fi.Mode().Perm(), err)
	}

	r = b.run(t, nil, "decrypt", "--context", "tenant=42", "--in", enc, "--out", dec)
	wantCode(t, r, 0)
	if got, _ := os.ReadFile(dec); string(got) != "card 4111" {
		t.Errorf("round trip gave %q, want %q", got, "card 4111")
	}
	// A link planted at the output's name is replaced, not written
	// through: the plaintext does not land in the link's target.
	victim := writeFile(t, t.TempDir(), "victim", []byte("precious"))
	linked := filepath.Join(dir, "linked.txt")
	if err := os.Symlink(victim, linked); err != nil {
		t.Fatal(err)
	}
	r = b.run(t, nil, "decrypt", "--context", "tenant=42", "--in", enc, "--out", linked)
	wantCode(t, r, 0)
	if got, _ := os.ReadFile(victim); string(got) != "precious" {
		t.Errorf("decrypt --out over a link wrote %q into its target", got)
	}
	if got, _ := os.ReadFile(linked); string(got) != "card 4111" {
		t.Errorf("decrypt --out over a link: %s holds %q", linked, got)
	}

	// Wrong context: the broker refuses, exit 6, and nothing is written.
	r = b.run(t, nil, "decrypt", "--context", "tenant=43", "--in", enc, "--out", filepath.Join(dir, "nope"))
	wantCode(t, r, exitInvalid)
	if _, err := os.Stat(filepath.Join(dir, "nope")); !os.IsNotExist(err) {
		t.Errorf("decrypt failed but wrote its --out file (%v)", err)
	}

	// With --out, the JSON object leaves the binary field out.
	sig := filepath.Join(dir, "sig")
	r = b.run(t, []byte("msg"), "sign", "--key", "releases", "--out", sig, "--output", "json")
	wantCode(t, r, 0)
	if want := `{"key_id":"releases","key_version":3}` + "\n"; r.stdout != want {
		t.Errorf("sign --out --output json printed %q, want %q", r.stdout, want)
	}
	r = b.run(t, []byte("msg"), "verify", "--key", "releases", "--signature", sig)
	wantCode(t, r, 0)
	if want := "signature is valid (key releases version 3)\n"; r.stdout != want {
		t.Errorf("verify printed %q, want %q", r.stdout, want)
	}

	r = b.run(t, nil, "encrypt", "--key", "payments", "--in", filepath.Join(dir, "missing"))
	wantCode(t, r, exitFailure)
}

// TestKeyOutput covers key metadata in text and JSON, and list paging.
func TestKeyOutput(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})

	r := b.run(t, nil, "key", "describe", "payments")
	wantCode(t, r, 0)
	for _, want := range []string{
		"Key:                    payments\n",
		"Type:                   aes-256-gcm\n",
		"Mode:                   derive\n",
		"State:                  enabled\n",
		"Primary version:        3\n",
		"Versions:               1, 2, 3\n",
		"Labels:                 team=pay\n",
		"Root key:               softkms:root-1\n",
		"Rotation period:        none\n",
		"Created:                2026-01-02T03:04:05Z\n",
		"Revision:               17\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("key describe output lacks %q:\n%s", want, r.stdout)
		}
	}

	r = b.run(t, nil, "key", "describe", "payments", "--output", "json")
	wantCode(t, r, 0)
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("key describe --output json wrote %q: %v", r.stdout, err)
	}
	want := map[string]any{
		"key_id": "payments", "type": "aes-256-gcm", "mode": "derive", "derived": false, "state": "enabled",
		"primary_version": 3.0, "min_decryption_version": 1.0,
		"versions": []any{
			map[string]any{"version": 1.0, "created_at": "2026-01-02T03:04:05Z"},
			map[string]any{"version": 2.0, "created_at": "2026-01-02T03:04:05Z"},
			map[string]any{"version": 3.0, "created_at": "2026-01-02T03:04:05Z"},
		},
		"labels": map[string]any{"team": "pay"}, "root_key": "softkms:root-1", "rotation_period": "0s",
		"next_rotation": nil, "deletion_time": nil,
		"created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:05Z",
		"revision": 17.0, "description": "", "placement": "",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("key describe --output json mismatch (-want +got):\n%s", diff)
	}

	r = b.run(t, nil, "key", "disable", "payments")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "State:                  disabled\n") {
		t.Errorf("key disable printed:\n%s", r.stdout)
	}

	// Paging: 7 keys, 3 per page, 3 requests, all keys printed in order.
	for _, id := range []string{"k1", "k2", "k3", "k4", "k5", "k6"} {
		b.fake.addKey(testKey(id))
	}
	ids := []string{"k1", "k2", "k3", "k4", "k5", "k6", "payments"}
	before := len(b.fake.recorded())
	r = b.run(t, nil, "key", "list", "--page-size", "3", "--output", "json")
	wantCode(t, r, 0)
	var list struct {
		Keys []struct {
			KeyID string `json:"key_id"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("key list --output json wrote %q: %v", r.stdout, err)
	}
	var listed []string
	for _, k := range list.Keys {
		listed = append(listed, k.KeyID)
	}
	if diff := cmp.Diff(ids, listed); diff != "" {
		t.Errorf("key list mismatch (-want +got):\n%s", diff)
	}
	calls := b.fake.recorded()[before:]
	var tokens []string
	for _, c := range calls {
		tokens = append(tokens, c.req.(*kbv1.ListKeysRequest).GetPageToken())
	}
	if diff := cmp.Diff([]string{"", "3", "6"}, tokens); diff != "" {
		t.Errorf("page tokens sent mismatch (-want +got):\n%s", diff)
	}

	r = b.run(t, nil, "key", "list", "--label", "team=nobody", "--output", "json")
	wantCode(t, r, 0)
	if want := `{"keys":[]}` + "\n"; r.stdout != want {
		t.Errorf("empty key list printed %q, want %q", r.stdout, want)
	}

	r = b.run(t, nil, "key", "list")
	wantCode(t, r, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != len(ids)+1 || !strings.HasPrefix(lines[0], "KEY") || !strings.HasPrefix(lines[1], "k1 ") {
		t.Errorf("key list printed:\n%s", r.stdout)
	}
}

func TestDatakeyOutput(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	edk := base64.StdEncoding.EncodeToString(fakeSeal("payments", nil, fakeDataKey))
	pt := base64.StdEncoding.EncodeToString(fakeDataKey)

	r := b.run(t, nil, "datakey", "--key", "payments")
	wantCode(t, r, 0)
	want := "key_id:             payments\nkey_version:        3\nplaintext:          " + pt + "\nencrypted_data_key: " + edk + "\n"
	if r.stdout != want {
		t.Errorf("datakey printed\n%s\nwant\n%s", r.stdout, want)
	}

	r = b.run(t, nil, "datakey", "--key", "payments", "--no-plaintext", "--output", "json")
	wantCode(t, r, 0)
	if want := `{"key_id":"payments","key_version":3,"encrypted_data_key":"` + edk + `"}` + "\n"; r.stdout != want {
		t.Errorf("datakey --no-plaintext --output json printed %q, want %q", r.stdout, want)
	}
	r = b.run(t, nil, "datakey", "--key", "payments", "--output", "json")
	wantCode(t, r, 0)
	if want := `{"key_id":"payments","key_version":3,"plaintext":"` + pt + `","encrypted_data_key":"` + edk + `"}` + "\n"; r.stdout != want {
		t.Errorf("datakey --output json printed %q, want %q", r.stdout, want)
	}
}

// TestVerification checks that an invalid signature or MAC exits 7.
func TestVerification(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	dir := t.TempDir()
	msg := []byte("release 1.2.3")
	goodSig := writeFile(t, dir, "good.sig", fakeSignature("releases", sha(msg)))
	badSig := writeFile(t, dir, "bad.sig", fakeSignature("releases", sha([]byte("release 6.6.6"))))
	goodMAC := writeFile(t, dir, "good.mac", fakeMAC("tokens", msg))
	badMAC := writeFile(t, dir, "bad.mac", fakeMAC("other", msg))

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"valid signature", []string{"verify", "--key", "releases", "--signature", goodSig}, 0,
			"signature is valid (key releases version 3)\n", ""},
		{"invalid signature", []string{"verify", "--key", "releases", "--signature", badSig}, exitVerifyFailed,
			"", "keybroker: signature is not valid for key releases version 3\n"},
		{"invalid signature json", []string{"verify", "--key", "releases", "--signature", badSig, "--output", "json"}, exitVerifyFailed,
			`{"valid":false,"key_id":"releases","key_version":3}` + "\n", "keybroker: signature is not valid for key releases version 3\n"},
		{"valid signature json", []string{"verify", "--key", "releases", "--key-version", "2", "--signature", goodSig, "--output", "json"}, 0,
			`{"valid":true,"key_id":"releases","key_version":2}` + "\n", ""},
		{"valid MAC", []string{"verify-mac", "--key", "tokens", "--mac", goodMAC}, 0,
			"MAC is valid (key tokens version 3)\n", ""},
		{"invalid MAC", []string{"verify-mac", "--key", "tokens", "--mac", badMAC}, exitVerifyFailed,
			"", "keybroker: MAC is not valid for key tokens version 3\n"},
		{"invalid MAC json", []string{"verify-mac", "--key", "tokens", "--mac", badMAC, "--output", "json"}, exitVerifyFailed,
			`{"valid":false,"key_id":"tokens","key_version":3}` + "\n", "keybroker: MAC is not valid for key tokens version 3\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.run(t, msg, tt.args...)
			wantCode(t, r, tt.code)
			if r.stdout != tt.stdout || r.stderr != tt.stderr {
				t.Errorf("got stdout %q stderr %q, want %q and %q", r.stdout, r.stderr, tt.stdout, tt.stderr)
			}
		})
	}
}

// TestBrokerErrors maps each status code the broker answers to an exit
// code, and checks that the message reaches stderr without the input.
func TestBrokerErrors(t *testing.T) {
	t.Parallel()
	const secret = "top secret plaintext"
	tests := []struct {
		code codes.Code
		exit int
	}{
		{codes.PermissionDenied, exitDenied},
		{codes.Unauthenticated, exitDenied},
		{codes.NotFound, exitNotFound},
		{codes.Unavailable, exitUnavailable},
		{codes.DeadlineExceeded, exitUnavailable},
		{codes.InvalidArgument, exitInvalid},
		{codes.FailedPrecondition, exitInvalid},
		{codes.Internal, exitFailure},
		{codes.ResourceExhausted, exitFailure},
		{codes.AlreadyExists, exitInvalid},
		{codes.Unimplemented, exitFailure},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			t.Parallel()
			b := startBroker(t, brokerConfig{})
			b.fake.setFail(status.Error(tt.code, "the broker says no"))
			r := b.run(t, []byte(secret), "encrypt", "--key", "payments")
			wantCode(t, r, tt.exit)
			if want := "keybroker: encrypt: " + codeText(tt.code) + ": the broker says no\n"; r.stderr != want {
				t.Errorf("stderr %q, want %q", r.stderr, want)
			}
			if strings.Contains(r.stderr+r.stdout, secret) {
				t.Errorf("the plaintext leaked into the output: %q %q", r.stdout, r.stderr)
			}
		})
	}
	t.Run("not found from the broker", func(t *testing.T) {
		t.Parallel()
		b := startBroker(t, brokerConfig{})
		r := b.run(t, nil, "key", "describe", "nope")
		wantCode(t, r, exitNotFound)
		if want := "keybroker: key describe: not found: key \"nope\" not found\n"; r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
	})
	t.Run("bad ciphertext", func(t *testing.T) {
		t.Parallel()
		b := startBroker(t, brokerConfig{})
		r := b.run(t, []byte("garbage"), "decrypt")
		wantCode(t, r, exitInvalid)
		if want := "keybroker: decrypt: invalid argument: not a keybroker ciphertext\n"; r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
	})
	t.Run("unauthenticated by the real interceptor", func(t *testing.T) {
		t.Parallel()
		b := startBroker(t, brokerConfig{trustDomain: "other.example"})
		r := b.run(t, []byte(secret), "encrypt", "--key", "payments")
		wantCode(t, r, exitDenied)
		if !strings.Contains(r.stderr, "unauthenticated") {
			t.Errorf("stderr %q does not say unauthenticated", r.stderr)
		}
		if len(b.fake.recorded()) != 0 {
			t.Error("the call reached the fake past the interceptor")
		}
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		b := startBroker(t, brokerConfig{})
		b.fake.setBlock()
		r := b.run(t, []byte(secret), "encrypt", "--key", "payments", "--timeout", "50ms")
		wantCode(t, r, exitUnavailable)
		if !strings.Contains(r.stderr, "deadline exceeded") || !strings.Contains(r.stderr, "--timeout 50ms ran out") {
			t.Errorf("stderr %q does not name the deadline and --timeout", r.stderr)
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		t.Parallel()
		b := startBroker(t, brokerConfig{})
		env := b.env()
		env[envAddr] = deadAddr(t)
		r := runCLI(t, env, []byte(secret), "encrypt", "--key", "payments")
		wantCode(t, r, exitUnavailable)
		if !strings.HasPrefix(r.stderr, "keybroker: encrypt: unavailable: ") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
}

// deadAddr is a loopback address nobody listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// TestConnectionSettings covers flags, the environment, precedence,
// missing TLS material and --server-name.
func TestConnectionSettings(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	other := startBroker(t, brokerConfig{}) // another CA
	flags := func(addr, ca, cert, key string) []string {
		return []string{"--addr", addr, "--ca", ca, "--cert", cert, "--tls-key", key}
	}
	good := flags(b.addr, b.tls.CA, b.tls.Cert, b.tls.Key)

	tests := []struct {
		name   string
		env    map[string]string
		flags  []string
		code   int
		stderr string // substring
	}{
		{name: "env only", env: b.env()},
		{name: "flags only", env: map[string]string{}, flags: good},
		{name: "flag --addr wins over env", env: with(b.env(), envAddr, deadAddr(t)), flags: []string{"--addr", b.addr}},
		{name: "env --addr loses to flag", env: b.env(), flags: []string{"--addr", deadAddr(t)}, code: exitUnavailable},
		{name: "flag --ca wins over env", env: b.env(), flags: []string{"--ca", other.tls.CA}, code: exitTLS,
			stderr: "is signed by a CA not in tls.ca"},
		{name: "flag --cert and --tls-key win over env", env: with(with(b.env(), envCert, other.tls.Cert), envKey, other.tls.Key),
			flags: []string{"--cert", b.tls.Cert, "--tls-key", b.tls.Key}},
		{name: "no settings", env: map[string]string{}, code: exitUsage,
			stderr: "missing --addr (or KEYBROKER_ADDR), --ca (or KEYBROKER_CA), --cert (or KEYBROKER_CERT), --tls-key (or KEYBROKER_KEY)"},
		{name: "missing addr", env: without(b.env(), envAddr), code: exitUsage, stderr: "missing --addr (or KEYBROKER_ADDR):"},
		{name: "missing ca", env: without(b.env(), envCA), code: exitUsage, stderr: "missing --ca (or KEYBROKER_CA):"},
		{name: "missing cert", env: without(b.env(), envCert), code: exitUsage, stderr: "missing --cert (or KEYBROKER_CERT):"},
		{name: "missing key", env: without(b.env(), envKey), code: exitUsage, stderr: "missing --tls-key (or KEYBROKER_KEY):"},
		{name: "empty flag does not fall back to env", env: b.env(), flags: []string{"--ca", ""}, code: exitUsage,
			stderr: "missing --ca (or KEYBROKER_CA)"},
		{name: "unreadable CA", env: with(b.env(), envCA, filepath.Join(t.TempDir(), "nope.crt")), code: exitUsage,
			stderr: "TLS client configuration"},
		{name: "key that is not the certificate's", env: with(b.env(), envKey, other.tls.Key), code: exitUsage,
			stderr: "TLS client configuration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"random", "--length", "8"}, tt.flags...)
			r := runCLI(t, tt.env, nil, args...)
			wantCode(t, r, tt.code)
			if !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.stderr)
			}
		})
	}

	// Missing TLS settings are refused before anything is read or sent.
	before := len(b.fake.recorded())
	r := runCLI(t, without(b.env(), envCA), []byte("x"), "encrypt", "--key", "payments")
	wantCode(t, r, exitUsage)
	if !strings.Contains(r.stderr, "Run 'keybroker encrypt --help' for usage.") {
		t.Errorf("stderr %q lacks the usage hint", r.stderr)
	}
	if n := len(b.fake.recorded()) - before; n != 0 {
		t.Errorf("%d calls reached the broker", n)
	}

	// The broker is known by its SPIFFE id: a certificate without the
	// dialled IP among its SANs serves (issue 14, point 3); a host name is
	// checked only when --server-name names one.
	t.Run("server name", func(t *testing.T) {
		t.Parallel()
		b := startBroker(t, brokerConfig{hosts: []string{"broker.internal"}})
		r := b.run(t, nil, "random", "--length", "8")
		wantCode(t, r, 0)
		r = b.run(t, nil, "random", "--length", "8", "--server-name", "broker.internal")
		wantCode(t, r, 0)
		r = b.run(t, nil, "random", "--length", "8", "--server-name", "other.internal")
		wantCode(t, r, exitTLS)
		if !strings.Contains(r.stderr, "does not name host other.internal") {
			t.Errorf("stderr %q does not say the certificate is not for other.internal", r.stderr)
		}
	})
}

func with(m map[string]string, k, v string) map[string]string {
	m[k] = v
	return m
}

func without(m map[string]string, k string) map[string]string {
	delete(m, k)
	return m
}

// countingReader is an endless input that counts what was read.
type countingReader struct{ n int }

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	r.n += len(p)
	return len(p), nil
}

// TestLimits checks the API's size limits are enforced locally.
func TestLimits(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	big := func(n int) []byte { return bytes.Repeat([]byte{'x'}, n) }
	tests := []struct {
		name   string
		stdin  []byte
		args   []string
		code   int
		stderr string
	}{
		{"ciphertext over 4 MiB + 1 KiB", big(maxCiphertext + 1), []string{"decrypt"}, exitInvalid,
			"keybroker: the ciphertext in stdin is larger than 4 MiB + 1 KiB, the most keybroker accepts\n"},
		{"reencrypt ciphertext over the limit", big(maxCiphertext + 1), []string{"reencrypt"}, exitInvalid, "larger than 4 MiB + 1 KiB"},
		{"MAC message over 64 KiB", big(maxMessage + 1), []string{"mac", "--key", "tokens"}, exitInvalid,
			"keybroker: the message in stdin is larger than 64 KiB, the most keybroker accepts\n"},
		{"signed message over 64 KiB", big(maxMessage + 1), []string{"sign", "--key", "releases"}, exitInvalid, "larger than 64 KiB"},
		{"digest of the wrong size", big(31), []string{"sign", "--key", "releases", "--digest"}, exitInvalid,
			"keybroker: --digest wants a 32-byte SHA-256 digest as input, got 31 bytes\n"},
		{"random 0", nil, []string{"random", "--length", "0"}, exitUsage, "--length must be 1 to 1024, not 0"},
		{"random 1025", nil, []string{"random", "--length", "1025"}, exitUsage, "--length must be 1 to 1024, not 1025"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(b.fake.recorded())
			r := b.run(t, tt.stdin, tt.args...)
			wantCode(t, r, tt.code)
			if !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.stderr)
			}
			if n := len(b.fake.recorded()) - before; n != 0 {
				t.Errorf("%d calls reached the broker", n)
			}
		})
	}

	t.Run("verify-mac message over 64 KiB in a file", func(t *testing.T) {
		dir := t.TempDir()
		mac := writeFile(t, dir, "mac", fakeMAC("tokens", nil))
		in := writeFile(t, dir, "msg", big(maxMessage+1))
		r := b.run(t, nil, "verify-mac", "--key", "tokens", "--mac", mac, "--in", in)
		wantCode(t, r, exitInvalid)
		if want := "keybroker: the message in " + in + " is larger than 64 KiB, the most keybroker accepts\n"; r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
	})

	t.Run("reads at most limit+1 bytes", func(t *testing.T) {
		in := &countingReader{}
		var stdout, stderr bytes.Buffer
		env := b.env()
		code := run(t.Context(), []string{"decrypt"}, func(k string) string { return env[k] }, in, &stdout, &stderr)
		if code != exitInvalid {
			t.Fatalf("exit code %d, want %d; stderr %s", code, exitInvalid, stderr.String())
		}
		if in.n != maxCiphertext+1 {
			t.Errorf("read %d bytes of an endless input, want %d", in.n, maxCiphertext+1)
		}
	})

	t.Run("exactly at the limits", func(t *testing.T) {
		pt := big(maxPlaintext)
		r := b.run(t, pt, "encrypt", "--key", "payments")
		wantCode(t, r, 0)
		r = b.run(t, []byte(r.stdout), "decrypt")
		wantCode(t, r, 0)
		if r.stdout != string(pt) {
			t.Errorf("a 4 MiB plaintext came back as %d bytes", len(r.stdout))
		}
		r = b.run(t, big(maxMessage), "mac", "--key", "tokens")
		wantCode(t, r, 0)
		r = b.run(t, nil, "random", "--length", "1")
		wantCode(t, r, 0)
	})
}

// TestUsageErrors checks that bad command lines exit 2 without calling the
// broker.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	b := startBroker(t, brokerConfig{})
	dir := t.TempDir()
	sig := writeFile(t, dir, "sig", []byte("sig"))
	tests := []struct {
		args   []string
		stderr string
	}{
		{[]string{"bogus"}, `unknown command "bogus" for "keybroker"`},
		{[]string{"key", "bogus"}, `unknown command "bogus" for "keybroker key"`},
		{[]string{"audit", "bogus"}, `unknown command "bogus" for "keybroker audit"`},
		{[]string{"key", "describe"}, "missing ID"},
		{[]string{"node", "enroll", "edge-1"}, "--region is required"},
		{[]string{"node", "update", "edge-1"}, "nothing to update"},
		{[]string{"node", "remove"}, "missing ID"},
		{[]string{"key", "describe", "a", "b"}, `unexpected argument "b"`},
		{[]string{"key", "create", "k", "--type", "rsa-2048", "--mode", "derive"},
			`"rsa-2048" is not one of aes-256-gcm, hmac-sha256, ecdsa-p256, ed25519`},
		{[]string{"key", "create", "k", "--type", "ed25519", "--mode", "AES"}, `"AES" is not one of derive, wrap, backend`},
		{[]string{"key", "create", "k", "--type", "AES-256-GCM", "--mode", "derive"}, `"AES-256-GCM" is not one of`},
		{[]string{"key", "create", "k", "--type", "ed25519", "--mode", "wrap", "--label", "team"}, `"team" is not k=v`},
		{[]string{"key", "create", "k", "--type", "ed25519", "--mode", "wrap", "--label", "=x"}, `"=x" has an empty key`},
		{[]string{"key", "create", "k", "--type", "ed25519", "--mode", "wrap", "--label", "a=1", "--label", "a=2"}, `"a" is given twice`},
		{[]string{"key", "create", "k", "--type", "ed25519", "--mode", "wrap", "--rotation-period", "-1h"}, "--rotation-period must not be negative"},
		{[]string{"key", "create", "k", "--type", "ed25519", "--mode", "wrap", "--rotation-period", "monthly"}, `invalid argument "monthly"`},
		{[]string{"key", "update", "k"}, "nothing to update"},
		{[]string{"key", "update", "k", "--expected-revision", "3"}, "nothing to update"},
		{[]string{"key", "schedule-deletion", "k", "--pending-window", "0s"}, "--pending-window must be positive"},
		{[]string{"key", "list", "--page-size", "-1"}, `invalid argument "-1"`},
		{[]string{"encrypt"}, `required flag(s) "key" not set`},
		{[]string{"encrypt", "--key", "k", "extra"}, `unexpected argument "extra"`},
		{[]string{"encrypt", "--key", "k", "--output", "yaml"}, `"yaml" is not one of text, json`},
		{[]string{"encrypt", "--key", "k", "--context", "tenant"}, `"tenant" is not k=v`},
		{[]string{"encrypt", "--key", "k", "--timeout", "-1s"}, "--timeout must not be negative"},
		{[]string{"encrypt", "--key", "k", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"datakey"}, `required flag(s) "key" not set`},
		{[]string{"verify", "--key", "k"}, `required flag(s) "signature" not set`},
		{[]string{"verify", "--key", "k", "--signature", "-"}, "--signature and --in cannot both be stdin"},
		{[]string{"verify-mac", "--key", "k", "--mac", "-", "--in", "-"}, "--mac and --in cannot both be stdin"},
		{[]string{"verify", "--key", "k", "--signature", sig, "--key-version", "v2"}, `invalid argument "v2"`},
		{[]string{"random"}, `required flag(s) "length" not set`},
		{[]string{"audit", "verify"}, "missing FILE"},
		{[]string{"version", "extra"}, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			before := len(b.fake.recorded())
			r := b.run(t, []byte("input"), tt.args...)
			wantCode(t, r, exitUsage)
			if !strings.HasPrefix(r.stderr, "keybroker: ") || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.stderr)
			}
			if !strings.Contains(r.stderr, "--help' for usage.") {
				t.Errorf("stderr %q lacks the usage hint", r.stderr)
			}
			if n := len(b.fake.recorded()) - before; n != 0 {
				t.Errorf("%d calls reached the broker", n)
			}
		})
	}
}

// TestHelp checks every command's help has examples and exits 0.
func TestHelp(t *testing.T) {
	t.Parallel()
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, sub := range c.Commands() {
			walk(sub, append(slices.Clone(path), sub.Name()))
		}
	}
	walk(newRootCmd(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: os.Getenv}), nil)
	if len(paths) < 20 {
		t.Fatalf("only %d commands found", len(paths))
	}
	for _, path := range paths {
		t.Run("keybroker "+strings.Join(path, " "), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, nil, nil, append(path, "--help")...)
			wantCode(t, r, 0)
			if !strings.Contains(r.stdout, "\nExamples:\n") {
				t.Errorf("help has no examples:\n%s", r.stdout)
			}
		})
	}

	r := runCLI(t, nil, nil, "--help")
	for _, want := range []string{"Exit codes:", "7  verification failed", "8  TLS:", "KEYBROKER_KEY", "--connect-timeout"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("root help lacks %q", want)
		}
	}
	r = runCLI(t, nil, nil, "key")
	wantCode(t, r, 0)
	if !strings.Contains(r.stdout, "schedule-deletion") {
		t.Errorf("keybroker key printed no command list:\n%s", r.stdout)
	}
}

func TestAuditVerify(t *testing.T) {
	t.Parallel()
	writeLog := func(t *testing.T) string {
		t.Helper()
		path := filepath.Join(t.TempDir(), "audit.log")
		l, err := audit.Open(path, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range []audit.Operation{"Encrypt", "Decrypt", "Sign"} {
			if err := l.Append(audit.Record{Operation: op, Key: "payments", Version: 3, Outcome: "ok", Principal: "spiffe://x/client/alice"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	editLines := func(t *testing.T, path string, edit func([]string) []string) {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitAfter(string(data), "\n")
		if err := os.WriteFile(path, []byte(strings.Join(edit(lines), "")), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("good", func(t *testing.T) {
		t.Parallel()
		path := writeLog(t)
		r := runCLI(t, nil, nil, "audit", "verify", path)
		wantCode(t, r, 0)
		if want := path + ": 3 lines verified; head file matched\n"; r.stdout != want {
			t.Errorf("stdout %q, want %q", r.stdout, want)
		}
		r = runCLI(t, nil, nil, "audit", "verify", path, "--output", "json", "--require-head")
		wantCode(t, r, 0)
		var got map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("%q: %v", r.stdout, err)
		}
		res, err := audit.VerifyFile(path)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"file": path, "valid": true, "lines": 3.0, "last_hash": res.LastHash, "head_matched": true}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("json mismatch (-want +got):\n%s", diff)
		}
	})
	t.Run("edited line", func(t *testing.T) {
		t.Parallel()
		path := writeLog(t)
		editLines(t, path, func(l []string) []string {
			l[1] = strings.Replace(l[1], `"Decrypt"`, `"Encrypt"`, 1)
			return l
		})
		r := runCLI(t, nil, nil, "audit", "verify", path)
		wantCode(t, r, exitVerifyFailed)
		if want := "keybroker: audit log " + path + " does not verify: line 2: hash mismatch (the line was edited)\n"; r.stderr != want {
			t.Errorf("stderr %q, want %q", r.stderr, want)
		}
		r = runCLI(t, nil, nil, "audit", "verify", path, "--output", "json")
		wantCode(t, r, exitVerifyFailed)
		if want := `{"file":"` + path + `","valid":false,"lines":1,"head_matched":false,"line":2,"reason":"hash mismatch (the line was edited)"}` + "\n"; r.stdout != want {
			t.Errorf("stdout %q, want %q", r.stdout, want)
		}
	})
	t.Run("dropped line", func(t *testing.T) {
		t.Parallel()
		path := writeLog(t)
		editLines(t, path, func(l []string) []string { return append(l[:1], l[2:]...) })
		r := runCLI(t, nil, nil, "audit", "verify", path)
		wantCode(t, r, exitVerifyFailed)
		if !strings.Contains(r.stderr, "line 2: sequence 3, want 2") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
	t.Run("cut short", func(t *testing.T) {
		t.Parallel()
		path := writeLog(t)
		editLines(t, path, func(l []string) []string { return l[:2] })
		r := runCLI(t, nil, nil, "audit", "verify", path)
		wantCode(t, r, exitVerifyFailed)
		if !strings.Contains(r.stderr, "lines were dropped from the end") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
	t.Run("malformed head file", func(t *testing.T) {
		t.Parallel()
		path := writeLog(t)
		writeFile(t, filepath.Dir(path), "audit.log.head", []byte("garbage\n"))
		r := runCLI(t, nil, nil, "audit", "verify", path)
		wantCode(t, r, exitVerifyFailed)
		if !strings.Contains(r.stderr, "malformed") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
	t.Run("no head file", func(t *testing.T) {
		t.Parallel()
		path := writeLog(t)
		if err := os.Remove(path + ".head"); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, nil, nil, "audit", "verify", path)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, "3 lines verified; no head file") {
			t.Errorf("stdout %q", r.stdout)
		}
		r = runCLI(t, nil, nil, "audit", "verify", "--require-head", path)
		wantCode(t, r, exitVerifyFailed)
		if !strings.Contains(r.stderr, "has no head file") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
	t.Run("head key: cut short and head rewritten", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		keyFile := writeFile(t, dir, "head.key", bytes.Repeat([]byte("k"), 32))
		path := filepath.Join(dir, "audit.log")
		l, err := audit.OpenConfig(audit.Config{Path: path, HeadKey: bytes.Repeat([]byte("k"), 32)})
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range []audit.Operation{"Encrypt", "Decrypt"} {
			if err := l.Append(audit.Record{Operation: op, Outcome: "ok"}); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		r := runCLI(t, nil, nil, "audit", "verify", "--head-key-file", keyFile, path)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, "2 lines verified; head file matched and its MAC checked") {
			t.Errorf("stdout %q", r.stdout)
		}
		// The attack: drop the last line, write the head that matches
		// what is left, without the key.
		editLines(t, path, func(l []string) []string { return l[:1] })
		var first audit.Record
		data, _ := os.ReadFile(path)
		if err := json.Unmarshal(bytes.TrimSpace(data), &first); err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir, "audit.log.head", fmt.Appendf(nil, "%d %s\n", first.Seq, first.Hash))
		r = runCLI(t, nil, nil, "audit", "verify", "--head-key-file", keyFile, path)
		wantCode(t, r, exitVerifyFailed)
		if !strings.Contains(r.stderr, "no MAC") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		r := runCLI(t, nil, nil, "audit", "verify", filepath.Join(t.TempDir(), "nope.log"))
		wantCode(t, r, exitFailure)
		if !strings.Contains(r.stderr, "no such file") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := runCLI(t, nil, nil, "version")
	wantCode(t, r, 0)
	if !strings.HasPrefix(r.stdout, "keybroker ") {
		t.Errorf("version printed %q", r.stdout)
	}
	r = runCLI(t, nil, nil, "version", "--output", "json")
	wantCode(t, r, 0)
	var v struct {
		Version   string `json:"version"`
		GoVersion string `json:"go_version"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Version == "" || v.GoVersion == "" {
		t.Errorf("version --output json printed %q (%v)", r.stdout, err)
	}
}

func TestSizeText(t *testing.T) {
	t.Parallel()
	for n, want := range map[int]string{
		maxPlaintext:  "4 MiB",
		maxCiphertext: "4 MiB + 1 KiB",
		maxMessage:    "64 KiB",
		maxRandom:     "1 KiB",
		1000:          "1000 bytes",
	} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestExitCode covers the classification of errors that reach execute.
func TestExitCode(t *testing.T) {
	t.Parallel()
	rpc := func(c codes.Code) error { return &rpcError{op: "x", st: status.New(c, "m")} }
	tests := []struct {
		name    string
		err     error
		started bool
		want    int
	}{
		{"cobra error before run", io.EOF, false, exitUsage},
		{"plain error in run", io.EOF, true, exitFailure},
		{"usage error in run", usageErrorf("x"), true, exitUsage},
		{"verification", verifyFailedf("x"), true, exitVerifyFailed},
		{"wrapped rpc error", fmt.Errorf("wrapped: %w", rpc(codes.NotFound)), true, exitNotFound},
		{"bare status error", status.Error(codes.PermissionDenied, "m"), true, exitDenied},
		{"canceled", rpc(codes.Canceled), true, exitFailure},
	}
	for _, tt := range tests {
		if got := exitCode(tt.err, tt.started); got != tt.want {
			t.Errorf("%s: exitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}
