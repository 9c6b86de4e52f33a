package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/tests/framework"
)

// EnvAWSCLI names the AWS CLI executables TestAWSCLI runs, separated by
// colons; by default every distinct `aws` found: the one on PATH and
// Debian's /usr/bin/aws (awscli 2.9). EnvRequireAWSCLI=1 (make test sets
// it) turns the skip when none is found into a failure.
const (
	EnvAWSCLI        = "KEYBROKER_AWS_CLI"
	EnvRequireAWSCLI = "KEYBROKER_REQUIRE_AWSCLI"
)

// awsCLIs finds the AWS CLIs to test, keyed by what `aws --version`
// prints, so that one CLI reached by two paths runs once.
func awsCLIs(t *testing.T) map[string]string {
	t.Helper()
	var paths []string
	if v := os.Getenv(EnvAWSCLI); v != "" {
		paths = strings.Split(v, ":")
	} else {
		if p, err := exec.LookPath("aws"); err == nil {
			paths = append(paths, p)
		}
		paths = append(paths, "/usr/bin/aws")
	}
	found := map[string]string{}
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			continue
		}
		out, err := exec.CommandContext(t.Context(), p, "--version").CombinedOutput()
		if err != nil {
			t.Logf("%s --version: %v: %s", p, err, out)
			continue
		}
		found[strings.TrimSpace(string(out))] = p
	}
	if len(found) == 0 {
		const msg = "the AWS CLI is not installed: apt-get install awscli (make test installs it), or name it in " + EnvAWSCLI
		if os.Getenv(EnvRequireAWSCLI) == "1" {
			t.Fatal(msg + "; " + EnvRequireAWSCLI + "=1 makes this a failure")
		}
		t.Skip(msg)
	}
	return found
}

// awsCLIEnv is the environment the AWS CLI runs in: the test's own (PATH,
// and pyenv's variables for a CLI installed with pip) without any AWS_*
// variable, so no user configuration leaks in, then a config and
// credentials file that do not exist, the cluster's CA, the region (both
// names: CLI v1 reads only AWS_DEFAULT_REGION), an access key, no pager
// and no retries. AWS_ENDPOINT_URL_KMS is set as keybroker dev's env file
// is to set it, but awscli 2.9 (Debian's) ignores it and AWS_ENDPOINT_URL
// (checked: it went to kms.<region>.amazonaws.com) — per-service endpoint
// variables came with 2.13 — so every command also gets --endpoint-url.
func awsCLIEnv(dir, caFile, region, id, secret, endpoint string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	return append(env,
		"AWS_CONFIG_FILE="+filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(dir, "credentials"),
		"AWS_CA_BUNDLE="+caFile,
		"AWS_REGION="+region, "AWS_DEFAULT_REGION="+region,
		"AWS_ACCESS_KEY_ID="+id, "AWS_SECRET_ACCESS_KEY="+secret,
		"AWS_ENDPOINT_URL_KMS="+endpoint,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=", "AWS_MAX_ATTEMPTS=1", "AWS_RETRY_MODE=standard")
}

// awsCLIRun is one aws command's outcome.
type awsCLIRun struct {
	stdout, stderr string
	code           int
}

// runAWS runs the AWS CLI with --endpoint-url and JSON output.
func runAWS(t *testing.T, cli string, env []string, endpoint string, args ...string) awsCLIRun {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), cli, append([]string{"--endpoint-url", endpoint, "--output", "json"}, args...)...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := awsCLIRun{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("aws %s: %v", strings.Join(args, " "), err)
		}
		r.code = exit.ExitCode()
	}
	return r
}

// awsJSON runs an aws command that must succeed and decodes its JSON.
func awsJSON(t *testing.T, cli string, env []string, endpoint string, args ...string) map[string]any {
	t.Helper()
	r := runAWS(t, cli, env, endpoint, args...)
	if r.code != 0 {
		t.Fatalf("aws %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("aws %s printed %q: %v", strings.Join(args, " "), r.stdout, err)
	}
	return m
}

// blob decodes a base64 field of an aws command's JSON.
func blob(t *testing.T, m map[string]any, field string) []byte {
	t.Helper()
	s, _ := m[field].(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		t.Fatalf("%s = %q in %v: not base64 (%v)", field, s, m, err)
	}
	return b
}

// TestAWSCLI: the unmodified AWS CLI — Debian's awscli 2.9 and any other
// `aws` on PATH (pip's v1 here), each signing in its own way — against a
// real central process serving the AWS KMS API over HTTPS, with an access
// key made by `keybroker access-key create` and the cluster's CA as
// AWS_CA_BUNDLE: encrypt then decrypt with an encryption context (the
// plaintext comes back, KeyId is the key's ARN, the wrong context is
// refused), describe-key, generate-data-key whose blob decrypts to its
// plaintext, every call audited under the access key's principal with
// its request id; a wrong
// secret and an unknown access key are refused with AWS's exception names.
func TestAWSCLI(t *testing.T) {
	clis := awsCLIs(t)
	f := framework.StartAWSFront(t)
	arn := framework.KeyARN(framework.DemoKeyID)
	for version, cli := range clis {
		t.Run(strings.ReplaceAll(strings.Fields(version)[0], "/", "-"), func(t *testing.T) {
			t.Logf("%s: %s", cli, version)
			dir := t.TempDir()
			env := awsCLIEnv(dir, f.CAFile, framework.AWSRegion, f.Key.ID, f.Key.Secret, f.KMSURL)
			before := len(auditedDemo(t, f))

			pt := []byte("through the AWS CLI\x00\xff")
			ptFile := filepath.Join(dir, "plaintext")
			if err := os.WriteFile(ptFile, pt, 0o600); err != nil {
				t.Fatal(err)
			}
			enc := awsJSON(t, cli, env, f.KMSURL, "kms", "encrypt", "--key-id", "alias/"+framework.DemoKeyID,
				"--plaintext", "fileb://"+ptFile, "--encryption-context", "purpose=cli")
			if enc["KeyId"] != arn {
				t.Errorf("encrypt KeyId = %v, want %s", enc["KeyId"], arn)
			}
			ctFile := filepath.Join(dir, "ciphertext")
			if err := os.WriteFile(ctFile, blob(t, enc, "CiphertextBlob"), 0o600); err != nil {
				t.Fatal(err)
			}
			dec := awsJSON(t, cli, env, f.KMSURL, "kms", "decrypt", "--ciphertext-blob", "fileb://"+ctFile, "--encryption-context", "purpose=cli")
			if got := blob(t, dec, "Plaintext"); !bytes.Equal(got, pt) || dec["KeyId"] != arn {
				t.Errorf("decrypt = %q under %v, want %q under %s", got, dec["KeyId"], pt, arn)
			}
			if r := runAWS(t, cli, env, f.KMSURL, "kms", "decrypt", "--ciphertext-blob", "fileb://"+ctFile, "--encryption-context", "purpose=other"); r.code == 0 || !strings.Contains(r.stderr, "InvalidCiphertextException") {
				t.Errorf("decrypt under another encryption context: exit %d, %s; want a refusal naming InvalidCiphertextException", r.code, r.stderr)
			}

			desc := awsJSON(t, cli, env, f.KMSURL, "kms", "describe-key", "--key-id", framework.DemoKeyID)
			md, _ := desc["KeyMetadata"].(map[string]any)
			if md["Arn"] != arn || md["KeyId"] != framework.DemoKeyID || md["Enabled"] != true || md["KeyUsage"] != "ENCRYPT_DECRYPT" {
				t.Errorf("describe-key = %v, want %s enabled for ENCRYPT_DECRYPT", desc, arn)
			}

			dk := awsJSON(t, cli, env, f.KMSURL, "kms", "generate-data-key", "--key-id", arn, "--key-spec", "AES_256")
			plain := blob(t, dk, "Plaintext")
			if len(plain) != 32 || dk["KeyId"] != arn {
				t.Errorf("generate-data-key: %d-byte key under %v, want 32 bytes under %s", len(plain), dk["KeyId"], arn)
			}
			if err := os.WriteFile(ctFile, blob(t, dk, "CiphertextBlob"), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := blob(t, awsJSON(t, cli, env, f.KMSURL, "kms", "decrypt", "--ciphertext-blob", "fileb://"+ctFile), "Plaintext"); !bytes.Equal(got, plain) {
				t.Errorf("the data key's blob decrypts to %x, want %x", got, plain)
			}
			// encrypt, decrypt, the refused decrypt, describe-key,
			// generate-data-key and its decrypt: six lines, each with its
			// request id, one refused.
			recs := auditedDemo(t, f)[before:]
			refused := 0
			for _, r := range recs {
				if r.RequestID == "" {
					t.Errorf("audit line without a request id: %+v", r)
				}
				if r.Outcome != "ok" {
					refused++
				}
			}
			if len(recs) != 6 || refused != 1 {
				t.Errorf("%d audit lines for key %s by %s, %d refused; want 6, 1 refused: %+v", len(recs), framework.DemoKeyID, f.Admin.ID, refused, recs)
			}

			wrong := awsCLIEnv(dir, f.CAFile, framework.AWSRegion, f.Key.ID, strings.Repeat("x", len(f.Key.Secret)), f.KMSURL)
			if r := runAWS(t, cli, wrong, f.KMSURL, "kms", "encrypt", "--key-id", "alias/"+framework.DemoKeyID, "--plaintext", "fileb://"+ptFile); r.code == 0 ||
				!(strings.Contains(r.stderr, "InvalidSignatureException") || strings.Contains(r.stderr, "UnrecognizedClientException")) {
				t.Errorf("a wrong secret: exit %d, %q; want a refusal naming InvalidSignatureException or UnrecognizedClientException", r.code, r.stderr)
			} else {
				t.Logf("a wrong secret: exit %d, %s", r.code, strings.TrimSpace(r.stderr))
			}
			unknown := awsCLIEnv(dir, f.CAFile, framework.AWSRegion, "AKIA"+strings.Repeat("Z", 16), f.Key.Secret, f.KMSURL)
			if r := runAWS(t, cli, unknown, f.KMSURL, "kms", "describe-key", "--key-id", framework.DemoKeyID); r.code == 0 || !strings.Contains(r.stderr, "UnrecognizedClientException") {
				t.Errorf("an unknown access key: exit %d, %q; want a refusal naming UnrecognizedClientException", r.code, r.stderr)
			}
		})
	}
}

// auditedDemo is the central's audit lines of calls on the demo key by
// the access key's principal, admin/ops.
func auditedDemo(t *testing.T, f *framework.AWSFront) []audit.Record {
	t.Helper()
	return f.Audit(t, framework.CentralNode, func(r audit.Record) bool {
		return r.Key == framework.DemoKeyID && r.Principal == f.Admin.ID
	})
}
