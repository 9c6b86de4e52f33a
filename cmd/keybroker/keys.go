package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// The CLI's names of the proto enums, in the order help lists them.
var (
	keyTypeNames = []string{"aes-256-gcm", "hmac-sha256", "ecdsa-p256", "ed25519"}
	keyTypes     = map[string]kbv1.KeyType{
		"aes-256-gcm": kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		"hmac-sha256": kbv1.KeyType_KEY_TYPE_HMAC_SHA256,
		"ecdsa-p256":  kbv1.KeyType_KEY_TYPE_ECDSA_P256,
		"ed25519":     kbv1.KeyType_KEY_TYPE_ED25519,
	}
	keyModeNames = []string{"derive", "wrap", "backend"}
	keyModes     = map[string]kbv1.KeyMode{
		"derive":  kbv1.KeyMode_KEY_MODE_DERIVE,
		"wrap":    kbv1.KeyMode_KEY_MODE_WRAP,
		"backend": kbv1.KeyMode_KEY_MODE_BACKEND,
	}
	keyStates = map[kbv1.KeyState]string{
		kbv1.KeyState_KEY_STATE_ENABLED:          "enabled",
		kbv1.KeyState_KEY_STATE_DISABLED:         "disabled",
		kbv1.KeyState_KEY_STATE_PENDING_DELETION: "pending-deletion",
	}
)

// What a plain `key create ID` makes: an AES-256-GCM key derived from the
// root, the common case and what other key managers give by default.
const (
	defaultKeyType = "aes-256-gcm"
	defaultKeyMode = "derive"
)

// enumName is the CLI name of v, or its proto name for values this build
// does not know.
func enumName[E comparable](names map[string]E, v E, protoName string) string {
	for n, e := range names {
		if e == v {
			return n
		}
	}
	return strings.ToLower(protoName)
}

func typeName(t kbv1.KeyType) string { return enumName(keyTypes, t, t.String()) }
func modeName(m kbv1.KeyMode) string { return enumName(keyModes, m, m.String()) }

func stateName(s kbv1.KeyState) string {
	if n, ok := keyStates[s]; ok {
		return n
	}
	return strings.ToLower(s.String())
}

const keyLong = `Create, change and inspect managed keys.

create, rotate, update, disable, enable, schedule-deletion and
cancel-deletion are KeyAdmin calls (the central tier; edges forward them);
list and describe are KeyBroker calls any node answers. Every command that
changes a key prints the key as it is afterwards.`

func (a *app) keyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Create, change and inspect managed keys",
		Long:  keyLong,
		Example: `  keybroker key create payments --label team=pay
  keybroker key list --label team=pay
  keybroker key describe payments --output json`,
		Args: subcommands,
		RunE: helpRun,
	}
	a.addClientFlags(cmd.PersistentFlags())
	cmd.AddCommand(
		a.keyCreateCmd(),
		a.keyListCmd(),
		a.keyDescribeCmd(),
		a.keySimpleCmd("rotate", "Add a key version and make it primary",
			`Add a version to the key and make it the primary: new ciphertexts, data
keys, signatures and MACs use it. Older versions still decrypt and verify
down to the key's minimum decryption version.`,
			`  keybroker key rotate payments`, kbv1.KeyAdminClient.RotateKey),
		a.keyUpdateCmd(),
		a.keySimpleCmd("disable", "Disable a key: no operation may use it until it is enabled", "",
			`  keybroker key disable payments`, kbv1.KeyAdminClient.DisableKey),
		a.keySimpleCmd("enable", "Enable a disabled key", "",
			`  keybroker key enable payments`, kbv1.KeyAdminClient.EnableKey),
		a.keyScheduleDeletionCmd(),
		a.keySimpleCmd("cancel-deletion", "Cancel a key's scheduled deletion", "",
			`  keybroker key cancel-deletion old-payments`, kbv1.KeyAdminClient.CancelKeyDeletion),
	)
	return cmd
}

func (a *app) keyCreateCmd() *cobra.Command {
	var (
		typ         = newEnum(defaultKeyType, keyTypeNames...)
		mode        = newEnum(defaultKeyMode, keyModeNames...)
		derived     bool
		rootKey     string
		labels      pairsValue
		rotation    time.Duration
		description string
		placement   string
	)
	cmd := &cobra.Command{
		Use:   "create ID [--type TYPE] [--mode MODE]",
		Short: "Create a managed key (default: AES-256-GCM, derived)",
		Long: `Create a managed key with its first version.

Without --type and --mode, the key is an AES-256-GCM encryption key whose
material is derived from the root key (--type aes-256-gcm --mode derive),
as a plain create in Vault transit or AWS KMS makes an AES-256-GCM key.

--mode says where each version's material comes from:
  derive   computed inside the backend from the root key; nothing is stored
  wrap     random, stored only wrapped by the root key
  backend  never leaves the backend; every operation goes to it
--root-key is the backend URI of the root key (default: the node's default
for the mode); it must be declared in the central node's root_keys with the
mode's role (derive, wrap or backend), and policies see it as resource.root.
--rotation-period 0 (the default) means no automatic rotation; the broker
wants at least 24h otherwise.
--placement is a Cedar condition over the edge that may hold the key's
material, e.g. 'principal.region == "eu"'; it adds to the global
HoldMaterial policies (a forbid there still wins).`,
		Example: `  keybroker key create payments
  keybroker key create orders --derived --label team=pay
  keybroker key create eu-orders --type aes-256-gcm --mode derive --placement 'principal.region == "eu"'

  keybroker key create releases --type ecdsa-p256 --mode backend \
      --root-key 'pkcs11:token=kb;object=root-1' --description 'release signing'
  keybroker key create tokens --type hmac-sha256 --mode wrap \
      --label team=auth --label env=prod --rotation-period 2160h`,
		Args: exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rotation < 0 {
				return usageErrorf("--rotation-period must not be negative")
			}
			req := &kbv1.CreateKeyRequest{
				KeyId:       args[0],
				Type:        keyTypes[typ.value],
				Mode:        keyModes[mode.value],
				Derived:     derived,
				RootKey:     rootKey,
				Labels:      labels.m,
				Description: description,
				Placement:   placement,
			}
			if rotation != 0 {
				req.RotationPeriod = durationpb.New(rotation)
			}
			return a.keyCall(cmd, "key create", func(ctx context.Context, s *session) (*kbv1.KeyMetadata, error) {
				return s.admin.CreateKey(ctx, req)
			})
		},
	}
	fs := cmd.Flags()
	fs.Var(typ, "type", "key `TYPE`: "+strings.Join(keyTypeNames, ", "))
	fs.Var(mode, "mode", "key `MODE`: "+strings.Join(keyModeNames, ", "))
	// The defaults show in --help as (default "aes-256-gcm").
	fs.BoolVar(&derived, "derived", false, "wrap data keys under a per-encryption-context key derived from the material")
	fs.StringVar(&rootKey, "root-key", "", "backend URI of the root key (default: the node's default root)")
	fs.Var(&labels, "label", "label k=v; repeat for more")
	fs.DurationVar(&rotation, "rotation-period", 0, "rotate automatically this often (at least 24h); 0 means never")
	fs.StringVar(&description, "description", "", "free-text description")
	fs.StringVar(&placement, "placement", "", "Cedar condition over the edge that may hold the material (see --help)")
	return cmd
}

func (a *app) keyListCmd() *cobra.Command {
	var (
		labels   pairsValue
		pageSize uint32
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List keys, following every page",
		Long: `List the keys this node knows, optionally only those carrying every
--label given. All pages are fetched; --page-size sets how many keys each
request asks for (at most 1000; 0 means the broker's default, 100).`,
		Example: `  keybroker key list
  keybroker key list --label team=pay --label env=prod
  keybroker key list --output json | jq -r '.keys[].key_id'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			ctx, cancel := s.context()
			defer cancel()
			var keys []*kbv1.KeyMetadata
			seen := map[string]bool{}
			token := ""
			for {
				resp, err := s.kb.ListKeys(ctx, &kbv1.ListKeysRequest{
					PageSize:      pageSize,
					PageToken:     token,
					LabelSelector: labels.m,
				})
				if err != nil {
					return s.fail(ctx, "key list", err)
				}
				keys = append(keys, resp.GetKeys()...)
				token = resp.GetNextPageToken()
				if token == "" {
					break
				}
				if seen[token] {
					return fmt.Errorf("key list: the broker returned page token %q twice", token)
				}
				seen[token] = true
			}
			if a.jsonOutput() {
				out := keyListJSON{Keys: make([]keyJSON, 0, len(keys))}
				for _, k := range keys {
					out.Keys = append(out.Keys, keyToJSON(k))
				}
				return a.printJSON(out)
			}
			tw := tabwriter.NewWriter(a.env.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tTYPE\tMODE\tSTATE\tPRIMARY\tLABELS")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", k.GetKeyId(), typeName(k.GetType()),
					modeName(k.GetMode()), stateName(k.GetState()), k.GetPrimaryVersion(), labelsText(k.GetLabels(), ","))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().Var(&labels, "label", "only keys with label k=v; repeat for more (all must match)")
	cmd.Flags().Uint32Var(&pageSize, "page-size", 0, "keys per request (at most 1000; 0 means the broker's default)")
	return cmd
}

func (a *app) keyDescribeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "describe ID",
		Short: "Show a key's metadata",
		Example: `  keybroker key describe payments
  keybroker key describe payments --output json | jq .primary_version`,
		Args: exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.keyCall(cmd, "key describe", func(ctx context.Context, s *session) (*kbv1.KeyMetadata, error) {
				resp, err := s.kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: args[0]})
				return resp.GetKey(), err
			})
		},
	}
}

func (a *app) keyUpdateCmd() *cobra.Command {
	var (
		labels        pairsValue
		replaceLabels bool
		description   string
		rotation      time.Duration
		minVersion    uint32
		revision      uint64
		placement     string
	)
	cmd := &cobra.Command{
		Use:   "update ID",
		Short: "Change a key's labels, description, rotation period, minimum decryption version or placement",
		Long: `Change a key. Only the fields given change.

--label adds or replaces labels; with --replace-labels the key's labels
become exactly the --label pairs given (none: no labels).
--rotation-period 0 turns automatic rotation off.
--min-decryption-version N refuses ciphertexts, and MACs and signatures to
verify, from versions below N.
--placement EXPR replaces the placement condition; --placement '' removes it.
--expected-revision N applies the change only if the key is still at
revision N (see describe), so concurrent edits are not lost.`,
		Example: `  keybroker key update payments --label owner=pay-team --description 'card data'
  keybroker key update payments --replace-labels --label team=pay
  keybroker key update payments --rotation-period 0
  keybroker key update payments --min-decryption-version 3 --expected-revision 17`,
		Args: exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			fs := cmd.Flags()
			if !slices.ContainsFunc([]string{"label", "replace-labels", "description", "rotation-period", "min-decryption-version", "placement"}, fs.Changed) {
				return usageErrorf("nothing to update: give --label, --replace-labels, --description, --rotation-period, --min-decryption-version or --placement")
			}
			req := &kbv1.UpdateKeyRequest{
				KeyId:            args[0],
				ExpectedRevision: revision,
				ReplaceLabels:    replaceLabels,
				Labels:           labels.m,
			}
			if fs.Changed("description") {
				req.Description = &description
			}
			if fs.Changed("rotation-period") {
				if rotation < 0 {
					return usageErrorf("--rotation-period must not be negative")
				}
				req.RotationPeriod = durationpb.New(rotation)
			}
			if fs.Changed("min-decryption-version") {
				req.MinDecryptionVersion = &minVersion
			}
			if fs.Changed("placement") {
				req.Placement = &placement
			}
			return a.keyCall(cmd, "key update", func(ctx context.Context, s *session) (*kbv1.KeyMetadata, error) {
				return s.admin.UpdateKey(ctx, req)
			})
		},
	}
	fs := cmd.Flags()
	fs.Var(&labels, "label", "set label k=v; repeat for more")
	fs.BoolVar(&replaceLabels, "replace-labels", false, "make the key's labels exactly the --label pairs given")
	fs.StringVar(&description, "description", "", "new description")
	fs.DurationVar(&rotation, "rotation-period", 0, "new automatic rotation period (at least 24h); 0 turns rotation off")
	fs.Uint32Var(&minVersion, "min-decryption-version", 0, "oldest version that may still decrypt and verify")
	fs.Uint64Var(&revision, "expected-revision", 0, "apply only if the key is at this revision; 0 means any")
	fs.StringVar(&placement, "placement", "", "new placement condition; empty removes it")
	return cmd
}

func (a *app) keyScheduleDeletionCmd() *cobra.Command {
	var window time.Duration
	cmd := &cobra.Command{
		Use:   "schedule-deletion ID",
		Short: "Disable a key now and destroy it after a pending window",
		Long: `Disable the key and schedule its destruction after --pending-window
(7 to 30 days; the broker's default is 30 days). Until then,
cancel-deletion brings it back. After it, data encrypted under the key
cannot be decrypted by anyone.`,
		Example: `  keybroker key schedule-deletion old-payments
  keybroker key schedule-deletion old-payments --pending-window 168h`,
		Args: exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &kbv1.ScheduleKeyDeletionRequest{KeyId: args[0]}
			if cmd.Flags().Changed("pending-window") {
				if window <= 0 {
					return usageErrorf("--pending-window must be positive")
				}
				req.PendingWindow = durationpb.New(window)
			}
			return a.keyCall(cmd, "key schedule-deletion", func(ctx context.Context, s *session) (*kbv1.KeyMetadata, error) {
				return s.admin.ScheduleKeyDeletion(ctx, req)
			})
		},
	}
	cmd.Flags().DurationVar(&window, "pending-window", 0,
		"time until destruction, 168h to 720h (default: the broker's, 720h)")
	return cmd
}

// keySimpleCmd is a command "NAME ID" that makes one KeyAdmin call.
func (a *app) keySimpleCmd(name, short, long, example string,
	call func(kbv1.KeyAdminClient, context.Context, *kbv1.KeyRequest, ...grpc.CallOption) (*kbv1.KeyMetadata, error),
) *cobra.Command {
	return &cobra.Command{
		Use:     name + " ID",
		Short:   short,
		Long:    long,
		Example: example,
		Args:    exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.keyCall(cmd, "key "+name, func(ctx context.Context, s *session) (*kbv1.KeyMetadata, error) {
				return call(s.admin, ctx, &kbv1.KeyRequest{KeyId: args[0]})
			})
		},
	}
}

// keyCall connects, makes one call that returns a key and prints the key.
func (a *app) keyCall(cmd *cobra.Command, op string, call func(context.Context, *session) (*kbv1.KeyMetadata, error)) error {
	s, err := a.connect(cmd)
	if err != nil {
		return err
	}
	defer s.close()
	ctx, cancel := s.context()
	defer cancel()
	k, err := call(ctx, s)
	if err != nil {
		return s.fail(ctx, op, err)
	}
	return a.printKey(k)
}

func (a *app) printKey(k *kbv1.KeyMetadata) error {
	if a.jsonOutput() {
		return a.printJSON(keyToJSON(k))
	}
	versions := make([]string, 0, len(k.GetVersions()))
	for _, v := range k.GetVersions() {
		versions = append(versions, strconv.FormatUint(uint64(v.GetVersion()), 10))
	}
	rotation := "none"
	if d := k.GetRotationPeriod(); d != nil && d.AsDuration() != 0 {
		rotation = d.AsDuration().String()
	}
	return a.printFields([][2]string{
		{"Key", k.GetKeyId()},
		{"Type", typeName(k.GetType())},
		{"Mode", modeName(k.GetMode())},
		{"Derived", strconv.FormatBool(k.GetDerived())},
		{"State", stateName(k.GetState())},
		{"Primary version", strconv.FormatUint(uint64(k.GetPrimaryVersion()), 10)},
		{"Min decryption version", minVersionText(k.GetMinDecryptionVersion())},
		{"Versions", orDash(strings.Join(versions, ", "))},
		{"Labels", orDash(labelsText(k.GetLabels(), ", "))},
		{"Root key", orDash(k.GetRootKey())},
		{"Rotation period", rotation},
		{"Next rotation", timeText(k.GetNextRotation())},
		{"Deletion time", timeText(k.GetDeletionTime())},
		{"Created", timeText(k.GetCreatedAt())},
		{"Updated", timeText(k.GetUpdatedAt())},
		{"Revision", strconv.FormatUint(k.GetRevision(), 10)},
		{"Description", orDash(k.GetDescription())},
		{"Placement", orDash(k.GetPlacement())},
	})
}

// minVersionText says what a key's minimum decryption version allows: 0
// (never set) and 1 both let every version decrypt and verify.
func minVersionText(v uint32) string {
	if v <= 1 {
		return "none (every version decrypts)"
	}
	return fmt.Sprintf("%d (versions below %d are refused)", v, v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func labelsText(labels map[string]string, sep string) string {
	parts := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, sep)
}

func timeText(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// keyJSON is a key in --output json. Field names are stable; every field is
// always present (null for unset times).
type keyJSON struct {
	KeyID                string            `json:"key_id"`
	Type                 string            `json:"type"`
	Mode                 string            `json:"mode"`
	Derived              bool              `json:"derived"`
	State                string            `json:"state"`
	PrimaryVersion       uint32            `json:"primary_version"`
	MinDecryptionVersion uint32            `json:"min_decryption_version"`
	Versions             []keyVersionJSON  `json:"versions"`
	Labels               map[string]string `json:"labels"`
	RootKey              string            `json:"root_key"`
	RotationPeriod       string            `json:"rotation_period"` // Go duration; "0s" for none
	NextRotation         *time.Time        `json:"next_rotation"`
	DeletionTime         *time.Time        `json:"deletion_time"`
	CreatedAt            *time.Time        `json:"created_at"`
	UpdatedAt            *time.Time        `json:"updated_at"`
	Revision             uint64            `json:"revision"`
	Description          string            `json:"description"`
	Placement            string            `json:"placement"`
}

type keyVersionJSON struct {
	Version   uint32     `json:"version"`
	CreatedAt *time.Time `json:"created_at"`
}

type keyListJSON struct {
	Keys []keyJSON `json:"keys"`
}

func keyToJSON(k *kbv1.KeyMetadata) keyJSON {
	j := keyJSON{
		KeyID:                k.GetKeyId(),
		Type:                 typeName(k.GetType()),
		Mode:                 modeName(k.GetMode()),
		Derived:              k.GetDerived(),
		State:                stateName(k.GetState()),
		PrimaryVersion:       k.GetPrimaryVersion(),
		MinDecryptionVersion: k.GetMinDecryptionVersion(),
		Versions:             make([]keyVersionJSON, 0, len(k.GetVersions())),
		Labels:               make(map[string]string, len(k.GetLabels())),
		RootKey:              k.GetRootKey(),
		RotationPeriod:       k.GetRotationPeriod().AsDuration().String(),
		NextRotation:         jsonTime(k.GetNextRotation()),
		DeletionTime:         jsonTime(k.GetDeletionTime()),
		CreatedAt:            jsonTime(k.GetCreatedAt()),
		UpdatedAt:            jsonTime(k.GetUpdatedAt()),
		Revision:             k.GetRevision(),
		Description:          k.GetDescription(),
		Placement:            k.GetPlacement(),
	}
	maps.Copy(j.Labels, k.GetLabels())
	for _, v := range k.GetVersions() {
		j.Versions = append(j.Versions, keyVersionJSON{Version: v.GetVersion(), CreatedAt: jsonTime(v.GetCreatedAt())})
	}
	return j
}

func jsonTime(ts *timestamppb.Timestamp) *time.Time {
	if ts == nil {
		return nil
	}
	t := ts.AsTime().UTC()
	return &t
}
