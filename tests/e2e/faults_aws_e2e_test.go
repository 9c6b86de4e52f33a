package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/backends/backendtest/awsfake"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// awsRoots keeps the root keys in the in-process AWS KMS fake f, which the
// central process reaches over HTTP with static credentials from the
// environment.
func awsRoots(f *awsfake.Fake) func(*testing.T, string) *framework.Roots {
	return func(t *testing.T, _ string) *framework.Roots {
		t.Setenv("AWS_ACCESS_KEY_ID", "AKIDKEYBROKERFAULTS")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "keybroker-fault-tests")
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
		for object, spec := range map[string]string{"root-prf": awsfake.HMAC256, "root-aes": awsfake.SymmetricDefault,
			"root-hsm-aes": awsfake.SymmetricDefault, "root-mac": awsfake.HMAC256, "root-ec": awsfake.ECCNISTP256} {
			f.Alias("alias/"+object, f.CreateKey(spec))
		}
		conn := "region=" + awsfake.Region + ";endpoint=" + f.URL()
		return &framework.Roots{
			Name:       "aws",
			BackendURI: "awskms:" + conn,
			CreateURI:  func(object string) string { return "awskms:key-id=alias/" + object + ";" + conn },
			Ref:        func(object string) string { return "awskms:key-id=alias/" + object + ";region=" + awsfake.Region },
		}
	}
}

// TestFaultAWSThrottlingAndOutage runs central on the awskms backend
// against the AWS KMS wire fake, with two prefetching edges. Eight
// workers load it: four at the edges with placed keys, four through the Go
// SDK at central with backend-mode keys, whose every operation is an AWS
// call (GenerateMac, VerifyMac, Sign, GenerateDataKey, Decrypt). First
// half of all AWS calls are throttled: everything must still succeed,
// admin calls included. Then AWS is down for 10 s: the edges keep serving
// placed keys with no error, calls that need AWS fail with Unavailable
// within their deadline, and nothing half-done is left behind. After the
// outage everything works again and every ciphertext and data key made
// under the faults opens.
func TestFaultAWSThrottlingAndOutage(t *testing.T) {
	rep := framework.NewFaultReport(t, "aws-throttling-outage")
	f := awsfake.New(t)
	// The load is one principal at full speed against backend-mode keys:
	// the budget is lifted, so that only AWS's throttling is tested here.
	c := framework.NewProcessesOn(t, awsRoots(f), nil, framework.UnboundedBudget,
		&framework.EdgeNode{Name: "edge-eu", Region: "eu", Prefetch: true, Staleness: time.Hour},
		&framework.EdgeNode{Name: "edge-us", Region: "us", Prefetch: true, Staleness: time.Hour},
	)
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	aes := kbv1.KeyType_KEY_TYPE_AES_256_GCM
	derive, wrap, backend := kbv1.KeyMode_KEY_MODE_DERIVE, kbv1.KeyMode_KEY_MODE_WRAP, kbv1.KeyMode_KEY_MODE_BACKEND
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "placed", Type: aes, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "placed-wrap", Type: aes, Mode: wrap, Labels: owner, Placement: "true"},
		{KeyId: "kms-aes", Type: aes, Mode: backend, Labels: owner},
		{KeyId: "kms-mac", Type: kbv1.KeyType_KEY_TYPE_HMAC_SHA256, Mode: backend, Labels: owner, RootKey: c.Roots.Ref("root-mac")},
		{KeyId: "kms-ec", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: backend, Labels: owner, RootKey: c.Roots.Ref("root-ec")},
	} {
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)
	atCentral := c.Dial(t, c.Central.Addr, identity.Client, "app")
	pk, err := atCentral.KB.GetPublicKey(ctx, &kbv1.GetPublicKeyRequest{KeyId: "kms-ec"})
	must(t, "GetPublicKey", err)
	pub, err := x509.ParsePKIXPublicKey(pk.GetPublicKey())
	must(t, "ParsePKIXPublicKey", err)
	ecPub := pub.(*ecdsa.PublicKey)
	refMAC := map[string][]byte{}
	for i := range 8 {
		msg := "message " + strconv.Itoa(i)
		m, err := atCentral.KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "kms-mac", Message: []byte(msg)})
		must(t, "GenerateMac", err)
		refMAC[msg] = m.GetMac()
	}

	edges := []string{"edge-eu", "edge-us"}
	node := map[string]*framework.Conn{}
	for _, name := range edges {
		node[name] = c.Dial(t, c.Edges[name].Proc.Addr, identity.Client, "app")
	}
	// The application's SDK client retries throttled calls (ResourceExhausted)
	// for up to 20 passes; see docs/reliability.md for why it needs them.
	sdk := c.SDKClientWith(t, client.Config{Addrs: []string{c.Central.Addr}, Direct: true, MaxAttempts: 20})
	var outage atomic.Bool
	var edgeRetries atomic.Uint64 // edge calls retried after ResourceExhausted
	var backendOps sync.RWMutex   // held by the SDK workers' backend-mode operations
	var sealed faultMsgs
	type dataKey struct {
		version       uint32
		plain, wraped []byte
	}
	var dataKeys []dataKey
	var dkMu = make(chan struct{}, 1)
	l := framework.StartLoad(ctx, 8, func(ctx context.Context, w, i int) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		pt := fmt.Appendf(nil, "worker %d op %d", w, i)
		ectx := map[string]string{"worker": strconv.Itoa(w)}
		atEdge := func() error { // placed keys at an edge
			key := []string{"placed", "placed-wrap"}[i%2]
			// An edge meeting a version whose material it does not hold yet
			// (placed-wrap is rotated under throttling) fetches it from
			// central, whose AWS call may be throttled five times running:
			// ResourceExhausted, which an application retries with backoff,
			// as the SDK workers below do (docs/reliability.md).
			for attempt := 1; ; attempt++ {
				ct, err := faultRoundTrip(ctx, node[edges[w%2]], node[edges[(w+1)%2]], key, pt, ectx)
				if err == nil {
					sealed.add(faultMsg{key, ct, pt, ectx})
					return nil
				}
				if status.Code(err) != codes.ResourceExhausted || outage.Load() || attempt == 20 {
					return err
				}
				edgeRetries.Add(1)
				time.Sleep(time.Duration(attempt) * 10 * time.Millisecond)
			}
		}
		if w < 4 {
			return atEdge()
		}
		// During the outage these workers use the edges too: calls that
		// need AWS are the test's own, below.
		backendOps.RLock()
		if outage.Load() {
			backendOps.RUnlock()
			return atEdge()
		}
		defer backendOps.RUnlock()
		// Backend-mode keys at central, through the SDK: every call is
		// an AWS call.
		switch i % 3 {
		case 0:
			msg := "message " + strconv.Itoa(i%8)
			m, err := sdk.GenerateMac(ctx, "kms-mac", []byte(msg))
			if err != nil {
				return fmt.Errorf("GenerateMac: %w", err)
			}
			if !bytes.Equal(m.MAC, refMAC[msg]) {
				return fmt.Errorf("GenerateMac(%q) = %x, want %x", msg, m.MAC, refMAC[msg])
			}
			if ok, err := sdk.VerifyMac(ctx, "kms-mac", 0, []byte(msg), m.MAC); err != nil || !ok {
				return fmt.Errorf("VerifyMac = %v, %v", ok, err)
			}
		case 1:
			s, err := sdk.Sign(ctx, "kms-ec", pt)
			if err != nil {
				return fmt.Errorf("Sign: %w", err)
			}
			d := sha256.Sum256(pt)
			if !ecdsa.VerifyASN1(ecPub, d[:], s.Signature) {
				return errors.New("a signature does not verify")
			}
		default:
			dk, err := sdk.GenerateDataKey(ctx, "kms-aes", nil)
			if err != nil {
				return fmt.Errorf("GenerateDataKey: %w", err)
			}
			got, err := sdk.DecryptDataKey(ctx, "kms-aes", dk.Version, dk.Wrapped, nil)
			if err != nil || !bytes.Equal(got, dk.Plaintext) {
				return fmt.Errorf("DecryptDataKey = %d bytes, %v", len(got), err)
			}
			dkMu <- struct{}{}
			dataKeys = append(dataKeys, dataKey{dk.Version, dk.Plaintext, dk.Wrapped})
			<-dkMu
		}
		return nil
	})
	defer l.Stop()
	l.WaitOps(t, 100)

	// Phase 1: half of all AWS calls throttled. The load goes on, and so
	// do admin calls, which the SDK does not retry: an operator's tool
	// retries those answered ResourceExhausted, after checking that the
	// refused call left nothing behind.
	callsBefore := f.TotalCalls()
	retriesBefore := c.OpsMetric(t, c.Central.OpsAddr, "keybroker_awskms_retries_total")
	exhaustedBefore := c.MetricAt(t, c.Central.OpsAddr, "keybroker_grpc_requests_total", `code="ResourceExhausted"`)
	opsBefore := l.Ops.Load()
	f.SetFaults(awsfake.Faults{ThrottleFraction: 0.5, Seed: 1})
	adminCalls, adminThrottled := 0, 0
	admin := func(what string, call func() error, nothingDone func() error) {
		for attempt := 1; ; attempt++ {
			adminCalls++
			err := call()
			if err == nil {
				return
			}
			if status.Code(err) != codes.ResourceExhausted || attempt == 50 {
				t.Errorf("%s with half the AWS calls throttled (attempt %d): %v", what, attempt, err)
				return
			}
			adminThrottled++
			if err := nothingDone(); err != nil {
				t.Errorf("%s answered ResourceExhausted but left something behind: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond) // the tool's pause before it retries
		}
	}
	versions := func() uint32 {
		d, err := atCentral.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "placed-wrap"})
		must(t, "DescribeKey placed-wrap", err)
		return uint32(len(d.GetKey().GetVersions()))
	}
	wantVersions := uint32(1)
	for i := range 20 {
		id := fmt.Sprintf("throttled-%d", i)
		admin("CreateKey", func() error {
			_, err := c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: aes, Mode: []kbv1.KeyMode{derive, wrap}[i%2], Labels: owner})
			return err
		}, func() error {
			if _, err := c.Admin.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id}); status.Code(err) != codes.NotFound {
				return fmt.Errorf("DescribeKey(%s) = %v, want NotFound", id, err)
			}
			return nil
		})
		admin("RotateKey", func() error {
			_, err := c.Admin.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "placed-wrap"})
			return err
		}, func() error {
			if got := versions(); got != wantVersions {
				return fmt.Errorf("placed-wrap has %d versions, want %d", got, wantVersions)
			}
			return nil
		})
		wantVersions++
	}
	l.WaitOps(t, opsBefore+800)
	f.SetFaults(awsfake.Faults{})
	throttledOps := l.Ops.Load() - opsBefore
	awsCalls := f.TotalCalls() - callsBefore
	retries := c.OpsMetric(t, c.Central.OpsAddr, "keybroker_awskms_retries_total") - retriesBefore
	exhausted := c.MetricAt(t, c.Central.OpsAddr, "keybroker_grpc_requests_total", `code="ResourceExhausted"`) - exhaustedBefore
	if n := l.Errs.Load(); n != 0 {
		first := l.Stop()
		t.Fatalf("%d of %d operations failed with half the AWS calls throttled; first: %v", n, l.Ops.Load(), errors.Join(first...))
	}
	if retries == 0 {
		t.Errorf("no AWS call was retried while half were throttled (%d calls reached the fake)", awsCalls)
	}
	t.Logf("throttling: %d AWS requests, %v retried by central; central answered %v calls ResourceExhausted (%d edge calls retried); %d of %d admin calls were",
		awsCalls, retries, exhausted, edgeRetries.Load(), adminThrottled, adminCalls)

	// The edges hold the material of placed-wrap's newest version before
	// AWS goes down: it was rotated under throttling just now, and a version
	// whose material reached no edge before the outage is one the central
	// tier cannot seal for them in it. Each edge acknowledges the revision
	// and encrypts under the primary version once (fetching its material if
	// its sealed copy was withheld under throttling).
	last, err := atCentral.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "placed-wrap"})
	must(t, "DescribeKey placed-wrap", err)
	c.WaitApplied(t, last.GetKey().GetRevision())
	for _, name := range edges {
		r, err := node[name].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "placed-wrap", Plaintext: []byte("warm")})
		must(t, "Encrypt placed-wrap at "+name+" before the outage", err)
		if r.GetKeyVersion() != last.GetKey().GetPrimaryVersion() {
			t.Fatalf("%s encrypted under version %d, want the primary %d", name, r.GetKeyVersion(), last.GetKey().GetPrimaryVersion())
		}
	}

	// Phase 2: AWS is down for 10 s (the fault's length, not a check).
	outage.Store(true)
	backendOps.Lock() // the backend-mode operations under way finish first
	opsAtOutage := l.Ops.Load()
	f.SetFaults(awsfake.Faults{Outage: true})
	backendOps.Unlock()
	outageEnds := time.Now().Add(10 * time.Second)
	needAWS := []struct {
		what string
		call func(ctx context.Context) error
	}{
		{"GenerateMac with a backend-mode key", func(ctx context.Context) error {
			_, err := atCentral.KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "kms-mac", Message: []byte("m")})
			return err
		}},
		{"Sign with a backend-mode key", func(ctx context.Context) error {
			_, err := atCentral.KB.Sign(ctx, &kbv1.SignRequest{KeyId: "kms-ec", Input: &kbv1.SignRequest_Message{Message: []byte("m")}})
			return err
		}},
		{"GenerateDataKey with a backend-mode key", func(ctx context.Context) error {
			_, err := atCentral.KB.GenerateDataKey(ctx, &kbv1.GenerateDataKeyRequest{KeyId: "kms-aes"})
			return err
		}},
		{"CreateKey", func(ctx context.Context) error {
			_, err := c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "during-outage", Type: aes, Mode: derive, Labels: owner})
			return err
		}},
		{"RotateKey of a wrap-mode key", func(ctx context.Context) error {
			_, err := c.Admin.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "placed-wrap"})
			return err
		}},
	}
	refused := 0
	var sample string
	for time.Now().Before(outageEnds) {
		for _, n := range needAWS {
			err := framework.FailsFast(ctx, func(ctx context.Context) error {
				err := n.call(ctx)
				if sample == "" && status.Code(err) == codes.Unavailable {
					sample = status.Convert(err).Message()
				}
				return err
			})
			if err != nil {
				t.Errorf("%s during the AWS outage: %v", n.what, err)
			}
			refused++
		}
	}
	opsOutage := l.Ops.Load() - opsAtOutage
	errsOutage := l.Errs.Load()
	f.SetFaults(awsfake.Faults{})
	outage.Store(false)

	// Recovery: every call that needs AWS succeeds again.
	for _, n := range needAWS[:3] {
		framework.Poll(t, n.what+" after the outage", func() (bool, string) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := n.call(cctx); err != nil {
				return false, err.Error()
			}
			return true, ""
		})
	}
	opsAfter := l.Ops.Load()
	l.WaitOps(t, opsAfter+200)
	first := l.Stop()
	if n := l.Errs.Load(); n != 0 {
		t.Fatalf("%d of %d operations failed (%d during the outage, all on placed keys at the edges); first: %v", n, l.Ops.Load(), errsOutage, errors.Join(first...))
	}

	// Nothing half-done: the outage's CreateKey and RotateKey left no
	// trace, the throttled ones all landed.
	if _, err := c.Admin.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "during-outage"}); status.Code(err) != codes.NotFound {
		t.Errorf("DescribeKey of the key whose CreateKey failed in the outage = %v, want NotFound", err)
	}
	d, err := atCentral.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "placed-wrap"})
	must(t, "DescribeKey placed-wrap", err)
	if got := d.GetKey().GetPrimaryVersion(); got != wantVersions || len(d.GetKey().GetVersions()) != int(wantVersions) {
		t.Errorf("placed-wrap has primary version %d and %d versions, want %d: only the acknowledged rotations", got, len(d.GetKey().GetVersions()), wantVersions)
	}
	list, err := c.Admin.KB.ListKeys(ctx, &kbv1.ListKeysRequest{})
	must(t, "ListKeys", err)
	if got, want := len(list.GetKeys()), 5+20; got != want {
		t.Errorf("ListKeys after the faults: %d keys, want %d", got, want)
	}
	// Everything sealed or wrapped under the faults opens, at central.
	msgs := sealed.all()
	if errs := faultDecryptAll(ctx, atCentral, msgs); len(errs) > 0 {
		t.Errorf("%d of %d ciphertexts made under the faults do not open at central; first: %v", len(errs), len(msgs), errs[0])
	}
	for _, dk := range dataKeys {
		got, err := atCentral.KB.DecryptDataKey(ctx, &kbv1.DecryptDataKeyRequest{KeyId: "kms-aes", KeyVersion: dk.version, WrappedDataKey: dk.wraped})
		if err != nil || !bytes.Equal(got.GetPlaintext(), dk.plain) {
			t.Errorf("DecryptDataKey of a data key made under the faults: %v", err)
			break
		}
	}
	t.Logf("unavailable message: %s", sample)
	rep.Set("half of all AWS calls throttled: %d operations (4 workers at the edges, 4 through the SDK on backend-mode keys at central), 0 errors reached the application; "+
		"%d AWS requests, %v of them retries by central; central answered %v calls ResourceExhausted after all their attempts were throttled, which the SDK retried away; %d of %d admin calls answered ResourceExhausted, left nothing behind and succeeded when retried; "+
		"10 s AWS outage: %d operations on placed keys at 2 edges, 0 errors; %d calls needing AWS (backend-mode MAC, Sign, data key; CreateKey; RotateKey) failed fast with Unavailable, none left a trace; "+
		"after the outage every call succeeded and all %d ciphertexts and %d data keys made under the faults opened at central",
		throttledOps, awsCalls, retries, exhausted, adminThrottled, adminCalls, opsOutage, refused, len(msgs), len(dataKeys))
}
