package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// accessKeyLong explains access keys for `keybroker access-key --help`.
const accessKeyLong = `Make, list and revoke AWS access keys.

An access key lets an unmodified AWS client — an AWS SDK, the AWS CLI, the
AWS Encryption SDK — sign its requests (Signature Version 4) to keybroker's
AWS-compatible front-ends as a keybroker principal: a client or an admin of
the trust domain, under the same policy as that principal's gRPC calls.

Its secret is derived inside the central tier's root of trust and is shown
once, when the key is made; keybroker never stores it. A principal holds at
most two active keys: to rotate, make a new one, move the clients to it, and
revoke the old one. Revoking is for good.`

func (a *app) accessKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "access-key",
		Short: "Make, list and revoke the AWS access keys AWS clients sign with",
		Long:  accessKeyLong,
		Example: `  keybroker access-key create --principal client/app
  keybroker access-key list
  keybroker access-key revoke KBAKEXAMPLE234567ABC`,
		Args: subcommands,
		RunE: helpRun,
	}
	a.addClientFlags(cmd.PersistentFlags())
	cmd.AddCommand(a.accessKeyCreateCmd(), a.accessKeyListCmd(), a.accessKeyRevokeCmd())
	return cmd
}

func (a *app) accessKeyCreateCmd() *cobra.Command {
	var (
		principal string
		edges     []string
		env       bool
	)
	cmd := &cobra.Command{
		Use:   "create --principal KIND/NAME",
		Short: "Make an access key acting as a client or an admin; its secret is shown once",
		Long: `Make an access key acting as the principal given — client/NAME or admin/NAME
of this trust domain, or its full SPIFFE id. The secret access key is printed
once and never stored: keep it where the client reads it. With --env the key
is printed as the environment variables the AWS tools read.

With --edge (repeatable) the key is scoped to those edges: they verify it
themselves and serve its requests from what they hold, and the central tier's
own aws_kms and xks listeners refuse it. Only a client's key may be scoped.`,
		Example: `  keybroker access-key create --principal client/app
  keybroker access-key create --principal client/app --edge edge-us --edge edge-us-2
  keybroker access-key create --principal client/app --env >> app.env`,
		Args: exactly(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if principal == "" {
				return usageErrorf("--principal is required: client/NAME or admin/NAME")
			}
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			k, err := invoke(s, "access-key create", s.admin.CreateAccessKey, &kbv1.CreateAccessKeyRequest{Principal: principal, Edges: edges})
			if err != nil {
				return err
			}
			switch {
			case env:
				_, err := fmt.Fprintf(a.env.stdout, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n", k.GetAccessKeyId(), k.GetSecretAccessKey())
				return err
			case a.jsonOutput():
				return a.printJSON(toAccessKeyJSON(k))
			}
			return a.printFields([][2]string{{"access key id", k.GetAccessKeyId()}, {"secret access key", k.GetSecretAccessKey()},
				{"principal", k.GetPrincipal()}, {"edges", edgesText(k.GetEdges())}, {"note", "the secret is shown this once; keybroker does not keep it"}})
		},
	}
	cmd.Flags().StringVar(&principal, "principal", "", "the principal the key acts as: client/NAME or admin/NAME (required)")
	cmd.Flags().StringArrayVar(&edges, "edge", nil, "scope the key to this edge (node id); repeat for several. Clients only")
	cmd.Flags().BoolVar(&env, "env", false, "print AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY lines for an env file")
	return cmd
}

func (a *app) accessKeyListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the access keys, active and revoked (never their secrets)",
		Example: `  keybroker access-key list
  keybroker access-key list --output json`,
		Args: exactly(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			out, err := invoke(s, "access-key list", s.admin.ListAccessKeys, &kbv1.ListAccessKeysRequest{})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				for _, k := range out.GetAccessKeys() {
					if err := a.printJSON(toAccessKeyJSON(k)); err != nil {
						return err
					}
				}
				return nil
			}
			rows := [][]string{{"ACCESS KEY ID", "PRINCIPAL", "EDGES", "STATE", "CREATED", "CREATED BY"}}
			for _, k := range out.GetAccessKeys() {
				rows = append(rows, []string{k.GetAccessKeyId(), k.GetPrincipal(), edgesText(k.GetEdges()), k.GetState(),
					k.GetCreated().AsTime().Format(time.RFC3339), k.GetCreatedBy()})
			}
			return a.printTable(rows)
		},
	}
}

func (a *app) accessKeyRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "revoke ACCESS-KEY-ID",
		Short:   "Revoke an access key for good: every request signed with it is refused",
		Example: `  keybroker access-key revoke KBAKEXAMPLE234567ABC`,
		Args:    exactly("ACCESS-KEY-ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			k, err := invoke(s, "access-key revoke", s.admin.RevokeAccessKey, &kbv1.AccessKeyRequest{AccessKeyId: args[0]})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.printJSON(toAccessKeyJSON(k))
			}
			return a.printFields([][2]string{{"access key id", k.GetAccessKeyId()}, {"principal", k.GetPrincipal()}, {"state", k.GetState()}})
		},
	}
}

// accessKeyJSON is an access key in --output json.
type accessKeyJSON struct {
	AccessKeyID     string   `json:"access_key_id"`
	SecretAccessKey string   `json:"secret_access_key,omitempty"`
	Principal       string   `json:"principal"`
	State           string   `json:"state"`
	Created         string   `json:"created"`
	CreatedBy       string   `json:"created_by"`
	Revoked         string   `json:"revoked,omitempty"`
	RevokedBy       string   `json:"revoked_by,omitempty"`
	Edges           []string `json:"edges,omitempty"`
}

// edgesText is a key's scope in text output: its edges, or "central" for
// a key the central tier verifies.
func edgesText(edges []string) string {
	if len(edges) == 0 {
		return "central"
	}
	return strings.Join(edges, ",")
}

func toAccessKeyJSON(k *kbv1.AccessKey) accessKeyJSON {
	out := accessKeyJSON{AccessKeyID: k.GetAccessKeyId(), SecretAccessKey: k.GetSecretAccessKey(), Principal: k.GetPrincipal(),
		State: k.GetState(), Created: k.GetCreated().AsTime().Format(time.RFC3339), CreatedBy: k.GetCreatedBy(), RevokedBy: k.GetRevokedBy(),
		Edges: k.GetEdges()}
	if k.GetRevoked() != nil {
		out.Revoked = k.GetRevoked().AsTime().Format(time.RFC3339)
	}
	return out
}
