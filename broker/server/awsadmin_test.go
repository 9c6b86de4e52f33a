package server

import (
	"errors"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/google/go-cmp/cmp"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
)

// TestAWSJSONKeyAdminWithTheSDK: the AWS SDK's KMS client, unmodified,
// manages keys as AWS tooling does: CreateKey (a UUID key id, the ARN,
// the key spec and usage, tags as labels), a key made so is usable over
// gRPC; TagResource, UntagResource and ListResourceTags; DisableKey and
// EnableKey; ScheduleKeyDeletion (DeletionDate, PendingDeletion, then
// KMSInvalidStateException on use) and CancelKeyDeletion (the key comes
// back Disabled); ListAliases of one key, paged over all, and refused to
// a client the policy does not allow ListKeys; the audit line of CreateKey carries the
// AWS request id; the errors are AWS's typed ones.
func TestAWSJSONKeyAdminWithTheSDK(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops, url := asOps(t, e), serveAWS(t, e)
	admin := ops.clientAs(url, "admin/ops")

	created, err := admin.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("made by the AWS SDK"),
		Tags: []types.Tag{{TagKey: aws.String("app"), TagValue: aws.String("billing")}, {TagKey: aws.String("env"), TagValue: aws.String("dev")}}})
	if err != nil {
		t.Fatal(err)
	}
	md := created.KeyMetadata
	id := aws.ToString(md.KeyId)
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(id) {
		t.Errorf("CreateKey's KeyId = %q, want a UUID as AWS makes", id)
	}
	arn := "arn:aws:kms:eu-west-1:111122223333:key/" + id
	if aws.ToString(md.Arn) != arn || md.KeySpec != types.KeySpecSymmetricDefault || md.KeyUsage != types.KeyUsageTypeEncryptDecrypt ||
		md.KeyState != types.KeyStateEnabled || aws.ToString(md.Description) != "made by the AWS SDK" {
		t.Errorf("CreateKey's KeyMetadata = %+v", md)
	}
	rid, _ := awsmiddleware.GetRequestIDMetadata(created.ResultMetadata)
	var line *audit.Record
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "CreateKey" && r.Key == id {
			line = &r
		}
	}
	if line == nil || rid == "" || line.RequestID != rid || line.Principal != "spiffe://kb.test/admin/ops" || line.Outcome != "ok" || line.Decision != audit.Allow {
		t.Errorf("CreateKey's audit line = %+v, want admin/ops's, allowed, ok, with the AWS request id %q", line, rid)
	}

	// A key made through the AWS API is a keybroker key: its labels and
	// type over gRPC, and client/billing (allowed keys labelled
	// app=billing) encrypts with it there.
	opsKB := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	d, err := opsKB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id})
	if err != nil {
		t.Fatal(err)
	}
	meta := d.GetKey()
	if diff := cmp.Diff(map[string]string{"app": "billing", "env": "dev"}, meta.GetLabels()); diff != "" || meta.GetType() != kbv1.KeyType_KEY_TYPE_AES_256_GCM || meta.GetMode() != kbv1.KeyMode_KEY_MODE_DERIVE {
		t.Errorf("the key over gRPC: %v (labels -want +got %s)", meta, diff)
	}
	kb := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "billing"))
	if _, err := kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: id, Plaintext: []byte("hi")}); err != nil {
		t.Errorf("Encrypt over gRPC with a key made through the AWS API: %v", err)
	}

	for _, tc := range []struct {
		spec  types.KeySpec
		usage types.KeyUsageType
	}{{types.KeySpecHmac256, types.KeyUsageTypeGenerateVerifyMac}, {types.KeySpecEccNistP256, types.KeyUsageTypeSignVerify}} {
		k, err := admin.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: tc.spec, KeyUsage: tc.usage})
		if err != nil || k.KeyMetadata.KeySpec != tc.spec || k.KeyMetadata.KeyUsage != tc.usage {
			t.Errorf("CreateKey(%s, %s) = %+v, %v", tc.spec, tc.usage, k, err)
		}
	}

	// Tags.
	if _, err := admin.TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String(arn), Tags: []types.Tag{{TagKey: aws.String("env"), TagValue: aws.String("prod")}, {TagKey: aws.String("team"), TagValue: aws.String("a")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UntagResource(ctx, &kms.UntagResourceInput{KeyId: aws.String(id), TagKeys: []string{"team", "absent"}}); err != nil {
		t.Fatal(err)
	}
	lt, err := admin.ListResourceTags(ctx, &kms.ListResourceTagsInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tg := range lt.Tags {
		got[aws.ToString(tg.TagKey)] = aws.ToString(tg.TagValue)
	}
	if diff := cmp.Diff(map[string]string{"app": "billing", "env": "prod"}, got); diff != "" || lt.Truncated {
		t.Errorf("ListResourceTags after TagResource and UntagResource (-want +got):\n%s", diff)
	}

	// States.
	if _, err := admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	billing := ops.clientAs(url, "client/billing")
	var disabled *types.DisabledException
	if _, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")}); !errors.As(err, &disabled) {
		t.Errorf("Encrypt after DisableKey: %v, want DisabledException", err)
	}
	if _, err := admin.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(id)}); err != nil {
		t.Fatal(err)
	}
	if _, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")}); err != nil {
		t.Errorf("Encrypt after EnableKey: %v", err)
	}
	before := time.Now()
	sched, err := admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(id), PendingWindowInDays: aws.Int32(7)})
	if err != nil {
		t.Fatal(err)
	}
	if sched.KeyState != types.KeyStatePendingDeletion || aws.ToString(sched.KeyId) != arn || aws.ToInt32(sched.PendingWindowInDays) != 7 ||
		sched.DeletionDate == nil || sched.DeletionDate.Before(before.Add(7*24*time.Hour-time.Minute)) || sched.DeletionDate.After(time.Now().Add(7*24*time.Hour+time.Minute)) {
		t.Errorf("ScheduleKeyDeletion = %+v (DeletionDate %v), want PendingDeletion in 7 days", sched, sched.DeletionDate)
	}
	var invalidState *types.KMSInvalidStateException
	if _, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String(id), Plaintext: []byte("x")}); !errors.As(err, &invalidState) {
		t.Errorf("Encrypt of a key pending deletion: %v, want KMSInvalidStateException", err)
	}
	if _, err := admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(id)}); !errors.As(err, &invalidState) {
		t.Errorf("ScheduleKeyDeletion twice: %v, want KMSInvalidStateException", err)
	}
	if c, err := admin.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(id)}); err != nil || aws.ToString(c.KeyId) != arn {
		t.Fatalf("CancelKeyDeletion = %v, %v", c, err)
	}
	if d, err := admin.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)}); err != nil || d.KeyMetadata.KeyState != types.KeyStateDisabled {
		t.Errorf("after CancelKeyDeletion: %v, %v; want the key Disabled, as AWS leaves it", d, err)
	}

	// Aliases: every key is alias/<id>; listing them all is ListKeys.
	la, err := admin.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String(arn)})
	if err != nil || len(la.Aliases) != 1 || aws.ToString(la.Aliases[0].AliasName) != "alias/"+id ||
		aws.ToString(la.Aliases[0].AliasArn) != "arn:aws:kms:eu-west-1:111122223333:alias/"+id || aws.ToString(la.Aliases[0].TargetKeyId) != id {
		t.Errorf("ListAliases(KeyId) = %+v, %v", la, err)
	}
	var all []string
	p := kms.NewListAliasesPaginator(admin, &kms.ListAliasesInput{Limit: aws.Int32(1)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page.Aliases {
			all = append(all, aws.ToString(a.TargetKeyId))
		}
	}
	if len(all) != 3 {
		t.Errorf("ListAliases paged = %v, want the 3 keys once each", all)
	}
	if page, err := billing.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String(id)}); err != nil || len(page.Aliases) != 1 || aws.ToString(page.Aliases[0].TargetKeyId) != id {
		t.Errorf("client/billing's ListAliases of its key = %+v, %v", page, err)
	}
	var denied smithy.APIError
	if _, err := billing.ListAliases(ctx, &kms.ListAliasesInput{}); !errors.As(err, &denied) || denied.ErrorCode() != "AccessDeniedException" {
		t.Errorf("ListAliases of every key by a client the policy does not allow ListKeys: %v, want AccessDeniedException", err)
	}
}

// TestAWSJSONKeyAdminErrors: the AWS SDK's typed errors for the
// key-management calls: a client may not CreateKey (AccessDeniedException),
// an admin confined to some labels may not untag a key out of its reach,
// unknown keys, bad windows, tags that are not labels, and what keybroker
// does not do (key policies, imported material, multi-Region keys, key
// specs it has no type for).
func TestAWSJSONKeyAdminErrors(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops, url := asOps(t, e), serveAWS(t, e)
	ops.createKey("team-a-key", kbv1.KeyType_KEY_TYPE_AES_256_GCM, map[string]string{"team": "a"})
	admin, teamA, reader := ops.clientAs(url, "admin/ops"), ops.clientAs(url, "admin/team-a"), ops.clientAs(url, "client/reader")
	tags := func(kv ...string) []types.Tag {
		var out []types.Tag
		for i := 0; i < len(kv); i += 2 {
			out = append(out, types.Tag{TagKey: aws.String(kv[i]), TagValue: aws.String(kv[i+1])})
		}
		return out
	}
	long := func(n int) string { return string(make([]byte, n)) }
	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"a client creates a key", func() error { return errOf(reader.CreateKey(ctx, &kms.CreateKeyInput{})) }, "AccessDeniedException"},
		{"team-a creates another team's key", func() error { return errOf(teamA.CreateKey(ctx, &kms.CreateKeyInput{Tags: tags("team", "b")})) }, "AccessDeniedException"},
		{"team-a untags its key out of its reach", func() error {
			return errOf(teamA.UntagResource(ctx, &kms.UntagResourceInput{KeyId: aws.String("team-a-key"), TagKeys: []string{"team"}}))
		}, "AccessDeniedException"},
		{"team-a relabels its key to team b", func() error {
			return errOf(teamA.TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String("team-a-key"), Tags: tags("team", "b")}))
		}, "AccessDeniedException"},
		{"a client disables a key", func() error {
			return errOf(reader.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String("team-a-key")}))
		}, "AccessDeniedException"},
		{"an unknown key", func() error { return errOf(admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String("nope")})) }, "NotFoundException"},
		{"an unknown key's tags", func() error {
			return errOf(admin.ListResourceTags(ctx, &kms.ListResourceTagsInput{KeyId: aws.String("alias/nope")}))
		}, "NotFoundException"},
		{"a window of 6 days", func() error {
			return errOf(admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String("team-a-key"), PendingWindowInDays: aws.Int32(6)}))
		}, "ValidationException"},
		{"a window of 31 days", func() error {
			return errOf(admin.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String("team-a-key"), PendingWindowInDays: aws.Int32(31)}))
		}, "ValidationException"},
		{"cancelling what is not pending", func() error {
			return errOf(admin.CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String("team-a-key")}))
		}, "KMSInvalidStateException"},
		{"a tag key of 129 characters", func() error { return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{Tags: tags(long(129), "v")})) }, "TagException"},
		{"a tag value of 257 characters", func() error {
			return errOf(admin.TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String("team-a-key"), Tags: tags("k", long(257))}))
		}, "TagException"},
		{"a tag that is no label", func() error { return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{Tags: tags("cost center", "1")})) }, "TagException"},
		{"no tags", func() error {
			return errOf(admin.TagResource(ctx, &kms.TagResourceInput{KeyId: aws.String("team-a-key"), Tags: []types.Tag{}}))
		}, "ValidationException"},
		{"a usage the spec has not", func() error {
			return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecHmac256, KeyUsage: types.KeyUsageTypeEncryptDecrypt}))
		}, "ValidationException"},
		{"RSA", func() error { return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecRsa2048})) }, "UnsupportedOperationException"},
		{"a key policy", func() error { return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{Policy: aws.String("{}")})) }, "UnsupportedOperationException"},
		{"imported material", func() error {
			return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{Origin: types.OriginTypeExternal}))
		}, "UnsupportedOperationException"},
		{"a multi-Region key", func() error { return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{MultiRegion: aws.Bool(true)})) }, "UnsupportedOperationException"},
		{"a custom key store", func() error {
			return errOf(admin.CreateKey(ctx, &kms.CreateKeyInput{CustomKeyStoreId: aws.String("cks-1")}))
		}, "UnsupportedOperationException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ae smithy.APIError
			if err := tc.call(); !errors.As(err, &ae) || ae.ErrorCode() != tc.want {
				t.Errorf("got %v, want %s", err, tc.want)
			}
		})
	}
	// Nothing refused was made or changed.
	opsKB := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	d, err := opsKB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "team-a-key"})
	meta := d.GetKey()
	if err != nil || !cmp.Equal(meta.GetLabels(), map[string]string{"team": "a"}) || meta.GetState() != kbv1.KeyState_KEY_STATE_ENABLED {
		t.Errorf("team-a-key after the refusals: %v, %v", meta, err)
	}
	if l, err := opsKB.ListKeys(ctx, &kbv1.ListKeysRequest{}); err != nil || len(l.GetKeys()) != 1 {
		t.Errorf("keys after the refusals: %v, %v; want team-a-key alone", l, err)
	}
}

// TestAWSJSONAliasesWithTheSDK: named aliases as AWS tooling makes them
// (aws_kms_alias: CreateAlias, UpdateAlias, DeleteAlias, ListAliases):
// an alias and its ARN name the key in every operation and answers carry
// the key's ARN; a taken alias is AlreadyExistsException; moving an alias
// needs UpdateKey on both keys; a moved alias encrypts under the new key
// while the old key's ciphertexts still open; gRPC's DescribeKey lists
// the key's aliases; each change is audited under its own name.
func TestAWSJSONAliasesWithTheSDK(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops, url := asOps(t, e), serveAWS(t, e)
	for id, labels := range map[string]map[string]string{"k1": {"app": "billing"}, "k2": {"app": "billing"}, "team-a-key": {"team": "a"}} {
		ops.createKey(id, kbv1.KeyType_KEY_TYPE_AES_256_GCM, labels)
	}
	ops.createKey("mac", kbv1.KeyType_KEY_TYPE_HMAC_SHA256, nil)
	admin, teamA, billing := ops.clientAs(url, "admin/ops"), ops.clientAs(url, "admin/team-a"), ops.clientAs(url, "client/billing")
	const prefix = "arn:aws:kms:eu-west-1:111122223333:"
	code := awsErrorCode

	if _, err := admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/billing/prod"), TargetKeyId: aws.String("k1")}); err != nil {
		t.Fatal(err)
	}
	enc, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/billing/prod"), Plaintext: []byte("v1")})
	if err != nil || aws.ToString(enc.KeyId) != prefix+"key/k1" {
		t.Fatalf("Encrypt by the alias = %v, %v; want key k1", enc, err)
	}
	if d, err := billing.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(prefix + "alias/billing/prod")}); err != nil || aws.ToString(d.KeyMetadata.KeyId) != "k1" {
		t.Errorf("DescribeKey by the alias ARN = %v, %v; want k1", d, err)
	}
	opsKB := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	if d, err := opsKB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "k1"}); err != nil || !cmp.Equal(d.GetKey().GetAliases(), []string{"billing/prod"}) {
		t.Errorf("gRPC DescribeKey(k1) = %v, %v; want alias billing/prod listed", d, err)
	}
	var line *audit.Record
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "CreateAlias" {
			line = &r
		}
	}
	if line == nil || line.Key != "k1" || line.Detail != "alias/billing/prod" || line.Outcome != "ok" || line.Decision != audit.Allow {
		t.Errorf("CreateAlias's audit line = %+v", line)
	}

	for _, tc := range []struct {
		name string
		call func() error
		want string
	}{
		{"a taken alias", func() error {
			return errOf(admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/billing/prod"), TargetKeyId: aws.String("k2")}))
		}, "AlreadyExistsException"},
		{"an alias named as a key", func() error {
			return errOf(admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/k2"), TargetKeyId: aws.String("k1")}))
		}, "AlreadyExistsException"},
		{"an AWS reserved alias", func() error {
			return errOf(admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/aws/s3"), TargetKeyId: aws.String("k1")}))
		}, "InvalidAliasNameException"},
		{"no alias/ prefix", func() error {
			return errOf(admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("billing"), TargetKeyId: aws.String("k1")}))
		}, "InvalidAliasNameException"},
		{"a bad alias name", func() error {
			return errOf(admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/no spaces"), TargetKeyId: aws.String("k1")}))
		}, "InvalidAliasNameException"},
		{"an alias as the target", func() error {
			return errOf(admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/x"), TargetKeyId: aws.String("alias/billing/prod")}))
		}, "ValidationException"},
		{"an unknown target", func() error {
			return errOf(admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/x"), TargetKeyId: aws.String("nope")}))
		}, "NotFoundException"},
		{"a client creates an alias", func() error {
			return errOf(billing.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/mine"), TargetKeyId: aws.String("team-a-key")}))
		}, "AccessDeniedException"},
		{"team-a moves another team's alias to its key", func() error {
			return errOf(teamA.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String("alias/billing/prod"), TargetKeyId: aws.String("team-a-key")}))
		}, "AccessDeniedException"},
		{"team-a deletes another team's alias", func() error {
			return errOf(teamA.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String("alias/billing/prod")}))
		}, "AccessDeniedException"},
		{"an alias moved to a key of another type", func() error {
			return errOf(admin.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String("alias/billing/prod"), TargetKeyId: aws.String("mac")}))
		}, "KMSInvalidStateException"},
		{"an unknown alias deleted", func() error {
			return errOf(admin.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String("alias/nope")}))
		}, "NotFoundException"},
	} {
		if err := tc.call(); code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	if d, err := admin.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("alias/billing/prod")}); err != nil || aws.ToString(d.KeyMetadata.KeyId) != "k1" {
		t.Fatalf("after the refusals the alias names %v, %v; want k1 still", d, err)
	}

	if _, err := admin.UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String("alias/billing/prod"), TargetKeyId: aws.String(prefix + "key/k2")}); err != nil {
		t.Fatal(err)
	}
	if enc2, err := billing.Encrypt(ctx, &kms.EncryptInput{KeyId: aws.String("alias/billing/prod"), Plaintext: []byte("v2")}); err != nil || aws.ToString(enc2.KeyId) != prefix+"key/k2" {
		t.Errorf("Encrypt by the moved alias = %v, %v; want key k2", enc2, err)
	}
	if d, err := billing.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: enc.CiphertextBlob}); err != nil || string(d.Plaintext) != "v1" {
		t.Errorf("Decrypt of a ciphertext made under the alias's old key = %v, %v", d, err)
	}
	la, err := admin.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String("k2")})
	var names []string
	for _, a := range la.Aliases {
		names = append(names, aws.ToString(a.AliasName)+"→"+aws.ToString(a.TargetKeyId))
	}
	if err != nil || !cmp.Equal(names, []string{"alias/billing/prod→k2", "alias/k2→k2"}) {
		t.Errorf("ListAliases(k2) = %v, %v", names, err)
	}
	la, err = admin.ListAliases(ctx, &kms.ListAliasesInput{KeyId: aws.String("k1")})
	if err != nil || len(la.Aliases) != 1 {
		t.Errorf("ListAliases(k1) after the move = %+v, %v; want alias/k1 alone", la, err)
	}

	if _, err := admin.DeleteAlias(ctx, &kms.DeleteAliasInput{AliasName: aws.String("alias/billing/prod")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String("alias/billing/prod")}); code(err) != "NotFoundException" {
		t.Errorf("DescribeKey by a deleted alias: %v, want NotFoundException", err)
	}
	if _, err := admin.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/billing/prod"), TargetKeyId: aws.String("k1")}); err != nil {
		t.Errorf("CreateAlias of a deleted alias's name: %v", err)
	}
}

// errOf is the error of a call's two results: it makes a refusal table's
// row one line.
func errOf[T any](_ T, err error) error { return err }

// awsErrorCode is the AWS error code of err (AccessDeniedException), or
// err itself as text when the SDK typed none.
func awsErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return fmt.Sprint(err)
}

// TestAWSJSONKeyRotationWithTheSDK: EnableKeyRotation sets the key's
// rotation period (365 days unless given, 90 to 2560), DisableKeyRotation
// clears it, GetKeyRotationStatus reads it, as Terraform's aws_kms_key
// does; AWS's range, a key that is not symmetric, a client and an admin
// of another team are refused, and each refusal leaves the key as it was.
func TestAWSJSONKeyRotationWithTheSDK(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops, url := asOps(t, e), serveAWS(t, e)
	ops.createKey("rotating", kbv1.KeyType_KEY_TYPE_AES_256_GCM, map[string]string{"team": "b"})
	ops.createKey("signer", kbv1.KeyType_KEY_TYPE_ECDSA_P256, nil)
	admin, teamA, reader := ops.clientAs(url, "admin/ops"), ops.clientAs(url, "admin/team-a"), ops.clientAs(url, "client/reader")
	opsKB := kbv1.NewKeyBrokerClient(e.conn(t, identity.Admin, "ops"))
	status := func(want bool, days int32) {
		t.Helper()
		got, err := admin.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String("rotating")})
		if err != nil {
			t.Fatal(err)
		}
		if got.KeyRotationEnabled != want || aws.ToInt32(got.RotationPeriodInDays) != days ||
			aws.ToString(got.KeyId) != "arn:aws:kms:eu-west-1:111122223333:key/rotating" {
			t.Fatalf("GetKeyRotationStatus = enabled %v, %d days, %q; want %v, %d days, the key's ARN",
				got.KeyRotationEnabled, aws.ToInt32(got.RotationPeriodInDays), aws.ToString(got.KeyId), want, days)
		}
		if want {
			next := time.Until(aws.ToTime(got.NextRotationDate))
			if period := time.Duration(days) * 24 * time.Hour; next < period-time.Hour || next > period {
				t.Errorf("NextRotationDate %v from now, want about %d days", next, days)
			}
		}
		d, err := opsKB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "rotating"})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := d.GetKey().GetRotationPeriod().AsDuration(), time.Duration(days)*24*time.Hour; got != want {
			t.Fatalf("the key's rotation period over gRPC: %v, want %v", got, want)
		}
	}
	status(false, 0)
	if _, err := admin.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String("rotating")}); err != nil {
		t.Fatal(err)
	}
	status(true, 365)
	if _, err := admin.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String("alias/rotating"), RotationPeriodInDays: aws.Int32(180)}); err != nil {
		t.Fatal(err)
	}
	status(true, 180)
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"89 days", errOf(admin.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String("rotating"), RotationPeriodInDays: aws.Int32(89)})), "ValidationException"},
		{"2561 days", errOf(admin.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String("rotating"), RotationPeriodInDays: aws.Int32(2561)})), "ValidationException"},
		{"a client enabling", errOf(reader.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String("rotating"), RotationPeriodInDays: aws.Int32(90)})), "AccessDeniedException"},
		{"a client disabling", errOf(reader.DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String("rotating")})), "AccessDeniedException"},
		{"team a's admin on team b's key", errOf(teamA.DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String("rotating")})), "AccessDeniedException"},
		{"a signing key's status", errOf(admin.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String("signer")})), "UnsupportedOperationException"},
		{"a signing key enabled", errOf(admin.EnableKeyRotation(ctx, &kms.EnableKeyRotationInput{KeyId: aws.String("signer")})), "UnsupportedOperationException"},
		{"an unknown key", errOf(admin.GetKeyRotationStatus(ctx, &kms.GetKeyRotationStatusInput{KeyId: aws.String("missing")})), "NotFoundException"},
	} {
		if got := awsErrorCode(tc.err); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
	status(true, 180)
	if _, err := admin.DisableKeyRotation(ctx, &kms.DisableKeyRotationInput{KeyId: aws.String("rotating")}); err != nil {
		t.Fatal(err)
	}
	status(false, 0)
}
