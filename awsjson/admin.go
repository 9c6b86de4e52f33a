package awsjson

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// The key-management operations AWS tooling (the CLI, Terraform's
// aws_kms_key) calls. Each is the pipeline's admin operation of the same
// name, so it is authorized by the caller's Cedar policy exactly as the
// gRPC KeyAdmin call is, and audited with the AWS request id; at a node
// with no admin (an edge) it answers UnsupportedOperationException.

// Tag limits of AWS KMS.
const (
	maxTagKey   = 128
	maxTagValue = 256
)

type tag struct {
	TagKey   string `json:"TagKey"`
	TagValue string `json:"TagValue"`
}

// labels are tags as keybroker labels: AWS's limits first (TagException,
// as AWS answers), then keybroker's own label rules (managed.ValidateLabels:
// keys of [A-Za-z0-9._/-], at most 63 bytes).
func labels(tags []tag) (map[string]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(tags))
	for _, t := range tags {
		switch {
		case len(t.TagKey) == 0 || len(t.TagKey) > maxTagKey:
			return nil, tagError("a TagKey must be 1 to %d characters", maxTagKey)
		case len(t.TagValue) > maxTagValue:
			return nil, tagError("the TagValue of %s is longer than %d characters", clipText(t.TagKey), maxTagValue)
		}
		if _, dup := out[t.TagKey]; dup {
			return nil, tagError("TagKey %s is given twice", clipText(t.TagKey))
		}
		out[t.TagKey] = t.TagValue
	}
	if err := managed.ValidateLabels(out); err != nil {
		return nil, tagError("the tags are not keybroker labels: %s", clipText(err.Error()))
	}
	return out, nil
}

func tagError(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "TagException", Message: fmt.Sprintf(format, args...)}
}

func unsupported(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "UnsupportedOperationException", Message: fmt.Sprintf(format, args...)}
}

// tags are a key's labels as AWS tags, by key.
func tags(l map[string]string) []tag {
	out := make([]tag, 0, len(l))
	for k, v := range l {
		out = append(out, tag{TagKey: k, TagValue: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TagKey < out[j].TagKey })
	return out
}

type createKeyRequest struct {
	Description                    *string `json:"Description"`
	KeySpec                        string  `json:"KeySpec"`
	CustomerMasterKeySpec          string  `json:"CustomerMasterKeySpec"`
	KeyUsage                       string  `json:"KeyUsage"`
	Origin                         string  `json:"Origin"`
	MultiRegion                    *bool   `json:"MultiRegion"`
	Policy                         *string `json:"Policy"`
	BypassPolicyLockoutSafetyCheck bool    `json:"BypassPolicyLockoutSafetyCheck"`
	CustomKeyStoreID               *string `json:"CustomKeyStoreId"`
	XksKeyID                       *string `json:"XksKeyId"`
	Tags                           []tag   `json:"Tags"`
}

// keySpecs are the AWS key specs keybroker has a key type for, with the
// one key usage each allows.
var keySpecs = map[string]struct {
	typ   managed.KeyType
	usage string
}{
	"SYMMETRIC_DEFAULT":     {managed.AES256GCM, "ENCRYPT_DECRYPT"},
	"HMAC_256":              {managed.HMACSHA256, "GENERATE_VERIFY_MAC"},
	"ECC_NIST_P256":         {managed.ECDSAP256, "SIGN_VERIFY"},
	"ECC_NIST_EDWARDS25519": {managed.Ed25519, "SIGN_VERIFY"},
}

// createKeyInput turns a CreateKey request into the pipeline's input: a
// new key, named by a random UUID as AWS names keys, in derive mode on the
// default derive root. What keybroker cannot do — key policies (Cedar
// decides), imported or custom-key-store material, multi-Region keys, key
// specs it has no type for — is refused as AWS refuses what it does not
// support.
func createKeyInput(in *createKeyRequest) (pipeline.CreateKeyInput, error) {
	spec := in.KeySpec
	switch {
	case spec != "" && in.CustomerMasterKeySpec != "":
		return pipeline.CreateKeyInput{}, validation("give KeySpec or CustomerMasterKeySpec, not both")
	case spec == "":
		spec = in.CustomerMasterKeySpec
	}
	if spec == "" {
		spec = "SYMMETRIC_DEFAULT"
	}
	switch {
	case in.Origin != "" && in.Origin != "AWS_KMS":
		return pipeline.CreateKeyInput{}, unsupported("Origin %s is not supported: keybroker makes its keys' material (AWS_KMS)", clipText(in.Origin))
	case in.CustomKeyStoreID != nil || in.XksKeyID != nil:
		return pipeline.CreateKeyInput{}, unsupported("custom key stores are not supported")
	case in.MultiRegion != nil && *in.MultiRegion:
		return pipeline.CreateKeyInput{}, unsupported("multi-Region keys are not supported: a keybroker key is served in every region of its cluster")
	case in.Policy != nil:
		return pipeline.CreateKeyInput{}, unsupported("key policies are not supported: keybroker authorizes every call with its Cedar policies")
	}
	ks, ok := keySpecs[spec]
	if !ok {
		return pipeline.CreateKeyInput{}, unsupported("KeySpec %s is not supported: keybroker has SYMMETRIC_DEFAULT, HMAC_256, ECC_NIST_P256 and ECC_NIST_EDWARDS25519 keys", clipText(spec))
	}
	if in.KeyUsage != "" && in.KeyUsage != ks.usage {
		return pipeline.CreateKeyInput{}, validation("KeyUsage %s is not valid for KeySpec %s, whose usage is %s", clipText(in.KeyUsage), spec, ks.usage)
	}
	l, err := labels(in.Tags)
	if err != nil {
		return pipeline.CreateKeyInput{}, err
	}
	var desc string
	if in.Description != nil {
		desc = *in.Description
	}
	return pipeline.CreateKeyInput{KeyID: uuid.NewString(), Type: ks.typ, Mode: managed.ModeDerive, Labels: l, Description: desc}, nil
}

func (s *Server) createKey(ctx context.Context, caller pipeline.Caller, in *createKeyRequest) (any, error) {
	ci, err := createKeyInput(in)
	if err != nil {
		return nil, err
	}
	k, err := s.cfg.Pipeline.CreateKey(ctx, caller, ci)
	if err != nil {
		return nil, err
	}
	return keyMetadataResponse{KeyMetadata: s.metadata(k)}, nil
}

type keyIDResponse struct {
	KeyID string `json:"KeyId"`
}

type empty struct{}

func (s *Server) enableKey(ctx context.Context, caller pipeline.Caller, in *keyRequest) (any, error) {
	return s.stateChange(ctx, caller, in, s.cfg.Pipeline.EnableKey)
}

func (s *Server) disableKey(ctx context.Context, caller pipeline.Caller, in *keyRequest) (any, error) {
	return s.stateChange(ctx, caller, in, s.cfg.Pipeline.DisableKey)
}

func (s *Server) stateChange(ctx context.Context, caller pipeline.Caller, in *keyRequest, change func(context.Context, pipeline.Caller, string) (*managed.Key, error)) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	if _, err := change(ctx, caller, id); err != nil {
		return nil, err
	}
	return empty{}, nil
}

// cancelKeyDeletion leaves the key Disabled, as AWS KMS does (and
// keybroker's CancelKeyDeletion).
func (s *Server) cancelKeyDeletion(ctx context.Context, caller pipeline.Caller, in *keyRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	k, err := s.cfg.Pipeline.CancelKeyDeletion(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	return keyIDResponse{KeyID: s.arn(k.ID)}, nil
}

type scheduleKeyDeletionRequest struct {
	KeyID               string `json:"KeyId"`
	PendingWindowInDays *int   `json:"PendingWindowInDays"`
}

type scheduleKeyDeletionResponse struct {
	KeyID               string  `json:"KeyId"`
	DeletionDate        float64 `json:"DeletionDate"`
	KeyState            string  `json:"KeyState"`
	PendingWindowInDays int     `json:"PendingWindowInDays"`
}

// AWS KMS's pending windows, in days.
const (
	minPendingDays     = 7
	maxPendingDays     = 30
	defaultPendingDays = 30
)

func (s *Server) scheduleKeyDeletion(ctx context.Context, caller pipeline.Caller, in *scheduleKeyDeletionRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	days := defaultPendingDays
	if in.PendingWindowInDays != nil {
		days = *in.PendingWindowInDays
	}
	if days < minPendingDays || days > maxPendingDays {
		return nil, validation("PendingWindowInDays must be %d to %d, not %d", minPendingDays, maxPendingDays, days)
	}
	k, err := s.cfg.Pipeline.ScheduleKeyDeletion(ctx, caller, id, time.Duration(days)*24*time.Hour)
	if err != nil {
		return nil, err
	}
	return scheduleKeyDeletionResponse{KeyID: s.arn(k.ID), DeletionDate: float64(k.DeletionTime.UnixMilli()) / 1000,
		KeyState: "PendingDeletion", PendingWindowInDays: days}, nil
}

type tagResourceRequest struct {
	KeyID string `json:"KeyId"`
	Tags  []tag  `json:"Tags"`
}

// tagResource adds or changes labels: UpdateKey, authorized on the key as
// it is and as it will be.
func (s *Server) tagResource(ctx context.Context, caller pipeline.Caller, in *tagResourceRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	if len(in.Tags) == 0 {
		return nil, validation("Tags is required")
	}
	l, err := labels(in.Tags)
	if err != nil {
		return nil, err
	}
	if _, err := s.cfg.Pipeline.UpdateKey(ctx, caller, pipeline.UpdateKeyInput{KeyID: id, Labels: l}); err != nil {
		return nil, err
	}
	return empty{}, nil
}

type untagResourceRequest struct {
	KeyID   string   `json:"KeyId"`
	TagKeys []string `json:"TagKeys"`
}

// untagResource removes labels (absent ones are no error, as in AWS):
// UpdateKey, as tagResource.
func (s *Server) untagResource(ctx context.Context, caller pipeline.Caller, in *untagResourceRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	if len(in.TagKeys) == 0 {
		return nil, validation("TagKeys is required")
	}
	for _, k := range in.TagKeys {
		if len(k) == 0 || len(k) > maxTagKey {
			return nil, tagError("a TagKey must be 1 to %d characters", maxTagKey)
		}
	}
	if _, err := s.cfg.Pipeline.UpdateKey(ctx, caller, pipeline.UpdateKeyInput{KeyID: id, RemoveLabels: in.TagKeys}); err != nil {
		return nil, err
	}
	return empty{}, nil
}

type listRequest struct {
	KeyID  string `json:"KeyId"`
	Limit  int    `json:"Limit"`
	Marker string `json:"Marker"`
}

type listResourceTagsResponse struct {
	Tags      []tag `json:"Tags"`
	Truncated bool  `json:"Truncated"`
}

// listResourceTags answers a key's labels, authorized as DescribeKey
// (which shows them too), in one page: a key has at most managed.MaxLabels.
func (s *Server) listResourceTags(ctx context.Context, caller pipeline.Caller, in *listRequest) (any, error) {
	id, err := s.resolveKey(ctx, in.KeyID)
	if err != nil {
		return nil, err
	}
	if in.Limit < 0 || in.Limit > 50 {
		return nil, validation("Limit must be 1 to 50")
	}
	if in.Marker != "" {
		return nil, &Error{Status: http.StatusBadRequest, Type: "InvalidMarkerException", Message: "this key's tags fit in one page: there is no next one"}
	}
	k, err := s.cfg.Pipeline.DescribeKey(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	return listResourceTagsResponse{Tags: tags(k.Labels)}, nil
}

type aliasEntry struct {
	AliasName   string `json:"AliasName"`
	AliasArn    string `json:"AliasArn"`
	TargetKeyID string `json:"TargetKeyId"`
}

type listAliasesResponse struct {
	Aliases    []aliasEntry `json:"Aliases"`
	NextMarker string       `json:"NextMarker,omitempty"`
	Truncated  bool         `json:"Truncated"`
}

// listAliases lists the aliases of each key the caller may describe (its
// named aliases, then alias/<id>: every keybroker key is named so), or of
// the one key KeyId names; keybroker's page token is the Marker. Limit
// bounds the keys of a page: a page holds more entries than Limit when
// its keys have named aliases.
func (s *Server) listAliases(ctx context.Context, caller pipeline.Caller, in *listRequest) (any, error) {
	if in.Limit == 0 {
		in.Limit = 50
	}
	if in.Limit < 1 || in.Limit > 100 {
		return nil, validation("Limit must be 1 to 100")
	}
	out := listAliasesResponse{Aliases: []aliasEntry{}}
	add := func(k *managed.Key) {
		for _, a := range append(slices.Clone(k.Aliases), k.ID) {
			out.Aliases = append(out.Aliases, aliasEntry{AliasName: "alias/" + a, AliasArn: "arn:aws:kms:" + s.cfg.Region + ":" + s.cfg.Account + ":alias/" + a, TargetKeyID: k.ID})
		}
	}
	if in.KeyID != "" {
		id, err := s.resolveKey(ctx, in.KeyID)
		if err != nil {
			return nil, err
		}
		k, err := s.cfg.Pipeline.DescribeKey(ctx, caller, id)
		if err != nil {
			return nil, err
		}
		add(k)
		return out, nil
	}
	page, err := s.cfg.Pipeline.ListKeys(ctx, caller, pipeline.ListKeysInput{PageSize: in.Limit, PageToken: in.Marker})
	if err != nil {
		return nil, err
	}
	out.NextMarker, out.Truncated = page.NextPageToken, page.NextPageToken != ""
	for _, k := range page.Keys {
		add(k)
	}
	return out, nil
}

// AWS KMS's automatic rotation periods, in days.
const (
	minRotationDays     = 90
	maxRotationDays     = 2560
	defaultRotationDays = 365
)

type enableKeyRotationRequest struct {
	KeyID                string `json:"KeyId"`
	RotationPeriodInDays *int   `json:"RotationPeriodInDays"`
}

// enableKeyRotation gives a symmetric key a rotation period (UpdateKey):
// the central tier's sweep rotates it when the period has passed.
func (s *Server) enableKeyRotation(ctx context.Context, caller pipeline.Caller, in *enableKeyRotationRequest) (any, error) {
	days := defaultRotationDays
	if in.RotationPeriodInDays != nil {
		days = *in.RotationPeriodInDays
	}
	if days < minRotationDays || days > maxRotationDays {
		return nil, validation("RotationPeriodInDays must be %d to %d, not %d", minRotationDays, maxRotationDays, days)
	}
	return s.setRotation(ctx, caller, in.KeyID, time.Duration(days)*24*time.Hour)
}

// disableKeyRotation removes a key's rotation period (UpdateKey).
func (s *Server) disableKeyRotation(ctx context.Context, caller pipeline.Caller, in *keyRequest) (any, error) {
	return s.setRotation(ctx, caller, in.KeyID, 0)
}

func (s *Server) setRotation(ctx context.Context, caller pipeline.Caller, name string, period time.Duration) (any, error) {
	// Refused before the change as AWS refuses it.
	k, err := s.rotatableKey(ctx, caller, name)
	if err != nil {
		return nil, err
	}
	if _, err := s.cfg.Pipeline.UpdateKey(ctx, caller, pipeline.UpdateKeyInput{KeyID: k.ID, RotationPeriod: &period}); err != nil {
		return nil, err
	}
	return empty{}, nil
}

type keyRotationStatusResponse struct {
	KeyID                string   `json:"KeyId"`
	KeyRotationEnabled   bool     `json:"KeyRotationEnabled"`
	NextRotationDate     *float64 `json:"NextRotationDate,omitempty"`
	RotationPeriodInDays *int     `json:"RotationPeriodInDays,omitempty"`
}

// getKeyRotationStatus says whether a symmetric key rotates on a period
// (DescribeKey's authorization): Terraform's aws_kms_key reads it.
func (s *Server) getKeyRotationStatus(ctx context.Context, caller pipeline.Caller, in *keyRequest) (any, error) {
	k, err := s.rotatableKey(ctx, caller, in.KeyID)
	if err != nil {
		return nil, err
	}
	out := keyRotationStatusResponse{KeyID: s.arn(k.ID), KeyRotationEnabled: k.RotationPeriod > 0}
	if out.KeyRotationEnabled {
		// keybroker's periods are whole hours of at least a day; AWS's
		// whole days.
		days := max(1, int((k.RotationPeriod+12*time.Hour)/(24*time.Hour)))
		out.RotationPeriodInDays = &days
		if !k.NextRotation.IsZero() {
			next := float64(k.NextRotation.UnixMilli()) / 1000
			out.NextRotationDate = &next
		}
	}
	return out, nil
}

// rotatableKey is the key name names, read through DescribeKey (so
// authorized and audited as a read), when it is one AWS KMS rotates
// automatically: a symmetric encryption key. keybroker rotates every key;
// `keybroker key update --rotation-period` sets the others' periods.
func (s *Server) rotatableKey(ctx context.Context, caller pipeline.Caller, name string) (*managed.Key, error) {
	id, err := s.resolveKey(ctx, name)
	if err != nil {
		return nil, err
	}
	k, err := s.cfg.Pipeline.DescribeKey(ctx, caller, id)
	if err != nil {
		return nil, err
	}
	if k.Type != managed.AES256GCM {
		return nil, unsupported("automatic rotation through the AWS API is for symmetric encryption keys; %s is %s", k.ID, k.Type)
	}
	return k, nil
}
