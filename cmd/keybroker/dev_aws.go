package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/atomicfile"
)

// devAWSKeyFile holds, in the dev directory (mode 0600, like the CA's
// key beside it), the dev access key's id and secret: the secret is shown
// once when the key is made, and the env file needs it at every start.
const devAWSKeyFile = "aws-access-key.json"

// devAWSEdge is the edge the dev access key is scoped to and the env
// file's AWS endpoint: the us edge, where applications go.
const devAWSEdge = "edge-us"

// devAWSKey is the dev access key: it acts as client/app, scoped to the us
// edge, which verifies it and serves the demo key from what it holds.
type devAWSKey struct {
	ID     string `json:"access_key_id"`
	Secret string `json:"secret_access_key"`
}

// ensureDevAWSKey returns the dev access key kept in dir when the central
// tier still holds it active, and otherwise makes one through the central
// node's KeyAdmin API as the admin — authorized and audited like any
// other call — and keeps it.
func ensureDevAWSKey(ctx context.Context, c *devcluster.Cluster, dir string) (devAWSKey, error) {
	path := filepath.Join(dir, devAWSKeyFile)
	var kept devAWSKey
	switch b, err := os.ReadFile(path); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return devAWSKey{}, err
	default:
		if err := json.Unmarshal(b, &kept); err != nil {
			return devAWSKey{}, fmt.Errorf("%s: %w (remove it: dev makes a new access key)", path, err)
		}
	}
	tlsCfg, err := c.ClientFiles(devcluster.AdminName).ClientConfig("")
	if err != nil {
		return devAWSKey{}, err
	}
	conn, err := grpc.NewClient(c.Central.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return devAWSKey{}, err
	}
	defer conn.Close()
	admin := kbv1.NewKeyAdminClient(conn)
	if kept.ID != "" {
		keys, err := admin.ListAccessKeys(ctx, &kbv1.ListAccessKeysRequest{})
		if err != nil {
			return devAWSKey{}, fmt.Errorf("listing access keys: %w", err)
		}
		for _, k := range keys.GetAccessKeys() {
			if k.GetAccessKeyId() == kept.ID && k.GetState() == "active" {
				return kept, nil
			}
		}
	}
	app := identity.Identity{TrustDomain: c.TrustDomain(), Kind: identity.Client, Name: devcluster.AppName}
	k, err := admin.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: app.String(), Edges: []string{devAWSEdge}})
	if err != nil {
		return devAWSKey{}, fmt.Errorf("making the dev access key: %w", err)
	}
	made := devAWSKey{ID: k.GetAccessKeyId(), Secret: k.GetSecretAccessKey()}
	b, err := json.Marshal(made)
	if err != nil {
		return devAWSKey{}, err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return devAWSKey{}, err
	}
	return made, nil
}

// devAWSEndpoint is the us edge's AWS KMS API URL ("" when it serves none).
func devAWSEndpoint(c *devcluster.Cluster) string {
	for i, s := range c.EdgeSpecs() {
		if s.Name == devAWSEdge && c.Edges[i].AWSAddr() != "" {
			return "https://" + c.Edges[i].AWSAddr()
		}
	}
	return ""
}

// writeDevAWSEnv adds to the env file what the AWS tools read. The AWS
// CLI before 2.13 (Debian 12's 2.9 among them) ignores
// AWS_ENDPOINT_URL_KMS: without --endpoint-url it would send the request —
// plaintext included — to the real AWS KMS, which refuses the key, but
// after the plaintext has left. So the file also defines a shell function
// aws that adds --endpoint-url to `aws kms …` and leaves every other
// service alone; AWS_SESSION_TOKEN and AWS_PROFILE are unset, since a
// session token is refused and a profile's settings would mix in.
func writeDevAWSEnv(b *strings.Builder, endpoint, ca string, k devAWSKey) {
	b.WriteString("# The AWS KMS API at the us edge, as client/app (an access key scoped to edge-us):\n")
	for _, v := range [][2]string{
		{"AWS_ENDPOINT_URL_KMS", endpoint},
		{"AWS_CA_BUNDLE", ca},
		{"AWS_REGION", devcluster.DefaultAWSRegion},
		{"AWS_DEFAULT_REGION", devcluster.DefaultAWSRegion},
		{"AWS_ACCESS_KEY_ID", k.ID},
		{"AWS_SECRET_ACCESS_KEY", k.Secret},
	} {
		fmt.Fprintf(b, "export %s=%s\n", v[0], shellQuote(v[1]))
	}
	b.WriteString("unset AWS_SESSION_TOKEN AWS_PROFILE\n")
	b.WriteString("# AWS CLIs before 2.13 ignore AWS_ENDPOINT_URL_KMS: name the endpoint for `aws kms` explicitly.\n")
	b.WriteString(`aws() { if [ "$1" = kms ]; then command aws --endpoint-url "$AWS_ENDPOINT_URL_KMS" "$@"; else command aws "$@"; fi; }` + "\n")
}
