package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/internal/clip"
)

func newRootKeyCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "root",
		Short: "Manage root keys inside a root of trust (run on the central host)",
		Long: `Root keys live inside a root of trust and never leave it. These commands open
the backend directly — not through a running node — so run them on the
central host with access to the token, keystore or cloud credentials, before
the node starts (a softkms keystore is locked while a node has it open).
docs/deploy.md sets up a SoftHSM2 token and the root keys of a central node.`,
		Example: `  keybroker root create 'softkms:root-prf;path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek' --algorithm hmac-256`,
		Args:    subcommands,
		RunE:    helpRun,
	}
	var alg string
	create := &cobra.Command{
		Use:   "create KEY-URI --algorithm aes-256|hmac-256|ecdsa-p256|ed25519",
		Short: "Create a root key (sensitive, never extractable)",
		Example: `  keybroker root create 'softkms:root-prf;path=/var/lib/keybroker/softkms.json;kek-source=/etc/keybroker/kek' --algorithm hmac-256
  keybroker root create 'pkcs11:token=kb;object=root-aes?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin' --algorithm aes-256`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a := backends.Algorithm(alg)
			if !a.Valid() {
				return usageErrorf("--algorithm %s is not aes-256, hmac-256, ecdsa-p256 or ed25519", clip.Quote(alg))
			}
			u, err := backends.ParseKeyURI(args[0])
			if err != nil {
				return usageError(err)
			}
			if u.Key() == "" {
				return usageErrorf("%s names no key", clip.Quote(args[0]))
			}
			b, err := central.Backends().Open(cmd.Context(), args[0], backends.Options{})
			if err != nil {
				return backendError(err)
			}
			defer b.Close()
			kc, ok := b.(backends.KeyCreator)
			if !ok {
				return fmt.Errorf("the %s backend cannot create keys", u.Scheme())
			}
			info, err := kc.CreateKey(cmd.Context(), u.Key(), a)
			if err != nil {
				return backendError(err)
			}
			fmt.Fprintf(e.stdout, "created %s root key %s\n", info.Algorithm, info.Key)
			return nil
		},
	}
	create.Flags().StringVar(&alg, "algorithm", "", "aes-256, hmac-256, ecdsa-p256 or ed25519 (required)")
	_ = create.MarkFlagRequired("algorithm")
	root.AddCommand(create)
	return root
}
