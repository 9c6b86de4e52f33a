package framework

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

// AWSRegion and AWSAccount are the region and account StartAWSFront
// configures: key ARNs read arn:aws:kms:eu-west-1:111122223333:key/<id>.
const (
	AWSRegion  = "eu-west-1"
	AWSAccount = "111122223333"
)

// AccessKey is an AWS access key as `keybroker access-key create --output
// json` prints it.
type AccessKey struct {
	ID     string `json:"access_key_id"`
	Secret string `json:"secret_access_key"`
}

// AWSFront is a central process serving the AWS KMS API (aws_kms) and the
// XKS proxy API (xks, under the prefix /kb/xks) over HTTPS with its own
// certificate, for the tests of real AWS tools: the AWS CLI, the AWS
// Encryption SDK, keybroker bench --protocol awsjson|xks.
type AWSFront struct {
	*Processes
	// KMSURL is the AWS KMS API's endpoint (https://127.0.0.1:port) and
	// XKSURL the XKS proxy's, prefix included.
	KMSURL, XKSURL string
	// Key is an access key of admin/ops, made with the CLI.
	Key AccessKey
	// HTTP trusts the cluster's CA (c.CAFile).
	HTTP *http.Client
}

// StartAWSFront starts a central process (softkms, basic root keys) with
// aws_kms and xks listeners on free loopback ports, a derive-mode
// AES-256-GCM key DemoKeyID placed on every edge, and an access key for admin/ops made by the
// CLI as an operator would.
func StartAWSFront(t *testing.T) *AWSFront {
	t.Helper()
	kmsAddr, xksAddr := FreeAddr(t), FreeAddr(t)
	extra := "aws_kms: {listen: \"" + kmsAddr + "\", region: " + AWSRegion + ", account: \"" + AWSAccount + "\"}\n" +
		"xks: {listen: \"" + xksAddr + "\", region: " + AWSRegion + ", prefix: /kb/xks, health_key: " + DemoKeyID + "}\n"
	c := NewProcessesOn(t, SoftkmsRoots, BasicRoots, extra)
	if _, err := c.Admin.Admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: DemoKeyID, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: map[string]string{"owner": TrustDomain}, Placement: "true"}); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := c.CLIOut(t, c.Central.Addr, identity.Admin, "ops", "access-key", "create", "--principal", "admin/ops", "--output", "json")
	if code != 0 {
		t.Fatalf("access-key create: exit %d: %s", code, stderr)
	}
	f := &AWSFront{Processes: c, KMSURL: "https://" + kmsAddr, XKSURL: "https://" + xksAddr + "/kb/xks"}
	if err := json.Unmarshal([]byte(out), &f.Key); err != nil || f.Key.ID == "" || f.Key.Secret == "" {
		t.Fatalf("access-key create --output json printed %q (%v)", out, err)
	}
	f.HTTP = c.AWSHTTPClient(t)
	return f
}

// AWSHTTPClient is an HTTPS client for the AWS front-ends of c's nodes
// (aws_kms, xks): it trusts the cluster's CA (c.CAFile) and, as AWS tools
// do, presents no certificate.
func (c *Processes) AWSHTTPClient(t *testing.T) *http.Client {
	t.Helper()
	caPEM, err := os.ReadFile(c.CAFile)
	must(t, "reading the CA", err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s holds no certificate", c.CAFile)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// KMSClient is the AWS SDK's KMS client, unmodified, at url
// (https://host:port) in AWSRegion, signing with key over hc; optFns
// change its options as kms.New's do.
func KMSClient(url string, key AccessKey, hc *http.Client, optFns ...func(*kms.Options)) *kms.Client {
	return kms.New(kms.Options{Region: AWSRegion, BaseEndpoint: aws.String(url), HTTPClient: hc,
		Credentials: credentials.NewStaticCredentialsProvider(key.ID, key.Secret, "")}, optFns...)
}

// XKSPoster posts to an XKS proxy at base (https://host:port and the
// prefix, if any) as AWS KMS does: a JSON request signed by aws-sdk-go-v2's
// SigV4 signer for service kms-xks-proxy in AWSRegion with key, over hc.
// The function it returns answers the status and the decoded JSON body,
// failing t when the body is not JSON.
func XKSPoster(t *testing.T, hc *http.Client, base string, key AccessKey) func(path string, req any) (int, map[string]any) {
	return func(path string, req any) (int, map[string]any) {
		t.Helper()
		body, err := json.Marshal(req)
		must(t, "encoding the XKS request", err)
		r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+path, bytes.NewReader(body))
		must(t, "making the XKS request", err)
		r.Header.Set("Content-Type", "application/json")
		sum := sha256.Sum256(body)
		must(t, "signing", v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: key.ID, SecretAccessKey: key.Secret},
			r, hex.EncodeToString(sum[:]), "kms-xks-proxy", AWSRegion, time.Now()))
		resp, err := hc.Do(r)
		must(t, "XKS request", err)
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("%s: %d %q is not JSON", path, resp.StatusCode, data)
		}
		return resp.StatusCode, m
	}
}

// KeyARN is the ARN the AWS KMS API gives key id.
func KeyARN(id string) string {
	return "arn:aws:kms:" + AWSRegion + ":" + AWSAccount + ":key/" + id
}

// AddAWSEdge adds an edge process named name in region serving the AWS KMS
// API (the central's region and account) and returns its endpoint and an
// access key of client/app scoped to it, made with the CLI: requests
// signed with it are verified at that edge and served there for the keys
// it holds.
func (f *AWSFront) AddAWSEdge(t *testing.T, name, region string) (url string, key AccessKey) {
	t.Helper()
	addr := FreeAddr(t)
	f.AddEdge(t, &EdgeNode{Name: name, Region: region, Prefetch: true,
		Extra: "aws_kms: {listen: \"" + addr + "\", region: " + AWSRegion + ", account: \"" + AWSAccount + "\"}\n"})
	f.WaitSynced(t)
	out, stderr, code := f.CLIOut(t, f.Central.Addr, identity.Admin, "ops", "access-key", "create", "--principal", "client/app", "--edge", name, "--output", "json")
	if code != 0 {
		t.Fatalf("access-key create --edge %s: exit %d: %s", name, code, stderr)
	}
	if err := json.Unmarshal([]byte(out), &key); err != nil || key.ID == "" || key.Secret == "" {
		t.Fatalf("access-key create --output json printed %q (%v)", out, err)
	}
	return "https://" + addr, key
}
