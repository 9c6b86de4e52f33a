package broker

import (
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
)

// FuzzValidateNode checks the validation of what an edge registers (the
// EdgeSync Register request: its region, labels, dialable address and
// sealing public key; the id comes from its certificate): no panic;
// refusals are InvalidArgument; an accepted node has a short, printable
// address clients can dial, a sealing key material can be sealed to, valid labels, and
// (given the UTF-8 strings gRPC delivers) is stored and read back from
// the inventory unchanged and still valid.
func FuzzValidateNode(f *testing.F) {
	edge, err := sealed.GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	pub := edge.PublicKey()
	f.Add("edge-eu-1", "eu", "edge-eu-1.example:7443", pub, "pci=yes\nzone=a")
	f.Add("edge-us-1", "", "[2001:db8::1]:443", pub, "")
	f.Add("e", "eu-west-1", "10.0.0.5:1", pub, "a/b.c-d_e=")
	f.Add("edge", "eu", "0.0.0.0:7443", pub, "")
	f.Add("edge", "eu", "[::]:7443", pub, "")
	f.Add("edge", "eu", "host:0", pub, "")
	f.Add("edge", "eu", "host:65536", pub, "")
	f.Add("edge", "eu", ":7443", pub, "")
	f.Add("edge", "EU", "host:1", pub, "")
	f.Add("-edge", "eu", "host:1", pub, "")
	f.Add("edge", "eu", "host:1", pub[:len(pub)-1], "")
	f.Add("edge", "eu", "host:+1", []byte{0x64, 0x7a}, "=x")
	f.Add("edge", "eu", "[fe80::1%eth0]:1", pub, "k="+strings.Repeat("v", 257))
	f.Add("edge", "eu", "edge\n.example:1", pub, "")
	f.Add("edge", "eu", strings.Repeat("a.", 200)+"example:1", pub, "")
	f.Fuzz(func(t *testing.T, id, region, address string, sealingKey []byte, labelsText string) {
		var labels map[string]string
		if labelsText != "" {
			labels = map[string]string{}
			for line := range strings.SplitSeq(labelsText, "\n") {
				k, v, _ := strings.Cut(line, "=")
				labels[k] = v
			}
		}
		n := &Node{ID: id, Region: region, Address: address, SealingKey: sealingKey, Labels: labels}
		err := n.validateEnrollment()
		if err == nil {
			err = n.validateRegistration()
		}
		if err != nil {
			if !errors.Is(err, managed.ErrInvalidArgument) {
				t.Fatalf("validate error %v is not InvalidArgument", err)
			}
			return
		}
		host, port, err := net.SplitHostPort(n.Address)
		p, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || perr != nil || p == 0 || host == "" {
			t.Fatalf("accepted address %q is not host:port (%v, %v)", n.Address, err, perr)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			t.Fatalf("accepted the wildcard address %q", n.Address)
		}
		if len(n.Address) > 300 || strings.ContainsFunc(n.Address, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			t.Fatalf("accepted an address of %d bytes or with control, space or non-ASCII characters: %q", len(n.Address), n.Address)
		}
		if _, err := sealed.ParsePublicKey(n.SealingKey); err != nil {
			t.Fatalf("accepted a sealing key that does not parse: %v", err)
		}
		if err := managed.ValidateLabels(n.Labels); err != nil {
			t.Fatalf("accepted invalid labels: %v", err)
		}
		if !utf8.ValidString(id + region + address) {
			return
		}
		for k, v := range labels {
			if !utf8.ValidString(k + v) {
				return
			}
		}
		raw, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeNode(store.Object{Kind: KindNodes, ID: n.ID, Value: raw})
		if err != nil {
			t.Fatalf("a stored node does not decode: %v", err)
		}
		if diff := cmp.Diff(n, back); diff != "" {
			t.Fatalf("node changed in the inventory (-registered +stored):\n%s", diff)
		}
		if err := back.validateEnrollment(); err != nil {
			t.Fatalf("a stored node no longer validates: %v", err)
		}
		if err := back.validateRegistration(); err != nil {
			t.Fatalf("a stored node no longer validates: %v", err)
		}
	})
}
