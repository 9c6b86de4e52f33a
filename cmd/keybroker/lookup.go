package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/clip"
)

// lookupOps are the operations LookupKey answers for, by CLI name.
var lookupOps = map[string]kbv1.Operation{
	"encrypt": kbv1.Operation_OPERATION_ENCRYPT, "decrypt": kbv1.Operation_OPERATION_DECRYPT,
	"reencrypt": kbv1.Operation_OPERATION_REENCRYPT, "datakey": kbv1.Operation_OPERATION_GENERATE_DATA_KEY,
	"sign": kbv1.Operation_OPERATION_SIGN, "verify": kbv1.Operation_OPERATION_VERIFY,
	"public-key": kbv1.Operation_OPERATION_GET_PUBLIC_KEY, "mac": kbv1.Operation_OPERATION_GENERATE_MAC,
	"verify-mac": kbv1.Operation_OPERATION_VERIFY_MAC, "describe": kbv1.Operation_OPERATION_DESCRIBE_KEY,
	"decrypt-datakey": kbv1.Operation_OPERATION_DECRYPT_DATA_KEY,
}

func lookupOpNames() string {
	names := make([]string, 0, len(lookupOps))
	for n := range lookupOps {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

var reasonNames = map[kbv1.LookupReason]string{
	kbv1.LookupReason_LOOKUP_REASON_MATERIAL_HELD:          "material held",
	kbv1.LookupReason_LOOKUP_REASON_PLACEMENT_ALLOWS_FETCH: "placement allows fetch",
	kbv1.LookupReason_LOOKUP_REASON_FORWARD_ONLY:           "forwards to central",
	kbv1.LookupReason_LOOKUP_REASON_ROOT_OF_TRUST:          "root of trust",
	kbv1.LookupReason_LOOKUP_REASON_REPLICA:                "replica (no material needed)",
}

type lookupJSON struct {
	NodeID  string `json:"node_id"`
	Address string `json:"address"`
	Kind    string `json:"kind"`
	Region  string `json:"region,omitempty"`
	Reason  string `json:"reason"`
}

func (a *app) lookupCmd() *cobra.Command {
	var (
		key, op string
		labels  pairsValue
	)
	cmd := &cobra.Command{
		Use:   "lookup --key K --op OP",
		Short: "Ask which nodes can perform an operation with a key now, best first",
		Long: `Ask any node which nodes can perform an operation with a key now, in the
order a client should try them: edges that serve it locally in the client's
region, such edges elsewhere, edges in the client's region that forward to
the central tier, then the central tier. Each comes with why it qualifies.
The client's region is --label region=R, or else the answering node's. An
edge that has lost the central tier offers neither the central tier nor the
edges that would forward to it.

Operations: ` + lookupOpNames() + `.`,
		Example: `  keybroker lookup --key payments --op encrypt
  keybroker lookup --key payments --op decrypt --label region=eu --output json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			operation, ok := lookupOps[op]
			if !ok {
				return usageErrorf("--op must be one of %s, not %s", lookupOpNames(), clip.Quote(op))
			}
			if key == "" {
				return usageErrorf("--key is required")
			}
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			resp, err := invoke(s, "lookup", s.kb.LookupKey, &kbv1.LookupKeyRequest{KeyId: key, Operation: operation, ClientLabels: labels.m})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				out := []lookupJSON{}
				for _, n := range resp.GetNodes() {
					out = append(out, lookupJSON{n.GetNodeId(), n.GetAddress(), n.GetKind(), n.GetRegion(), reasonNames[n.GetReason()]})
				}
				return a.printJSON(out)
			}
			rows := [][]string{{"NODE", "KIND", "REGION", "ADDRESS", "REASON"}}
			for _, n := range resp.GetNodes() {
				rows = append(rows, []string{n.GetNodeId(), n.GetKind(), orDash(n.GetRegion()), n.GetAddress(), reasonNames[n.GetReason()]})
			}
			return a.printTable(rows)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "the managed key (required)")
	fs.StringVar(&op, "op", "", "the operation: "+lookupOpNames()+" (required)")
	fs.Var(&labels, "label", "a client label KEY=VALUE, e.g. region=eu (repeatable)")
	a.addClientFlags(fs)
	return cmd
}

type nodeJSON struct {
	NodeID          string            `json:"node_id"`
	Kind            string            `json:"kind"`
	Address         string            `json:"address"`
	Region          string            `json:"region,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Enrolled        bool              `json:"enrolled"`
	Connected       bool              `json:"connected"`
	Prefetch        bool              `json:"prefetch,omitempty"`
	LeaseExpires    *time.Time        `json:"lease_expires,omitempty"`
	AppliedRevision uint64            `json:"applied_revision,omitempty"`
}

func toNodeJSON(n *kbv1.Node) nodeJSON {
	j := nodeJSON{NodeID: n.GetNodeId(), Kind: n.GetKind(), Address: n.GetAddress(), Region: n.GetRegion(), Labels: n.GetLabels(),
		Enrolled: n.GetEnrolled(), Connected: n.GetConnected(), Prefetch: n.GetPrefetch(), AppliedRevision: n.GetAppliedRevision()}
	if n.LeaseExpires != nil {
		t := n.GetLeaseExpires().AsTime()
		j.LeaseExpires = &t
	}
	return j
}

func (a *app) nodesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the central node and the edges: enrolled, connected, lease, applied revision",
		Long: `List the central node and the edges: enrolled, connected, lease, applied revision.

Any node answers. An edge that cannot reach the central tier answers from its
replica, which holds the inventory, and the command says so on stderr, with the
revision and when the edge last heard from the central tier: the other nodes'
entries are as of then.`,
		Example: `  keybroker nodes
  keybroker nodes --output json | jq '.[] | select(.kind=="edge") | .applied_revision'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			resp, err := invoke(s, "nodes", s.admin.ListNodes, &kbv1.ListNodesRequest{})
			if err != nil {
				return err
			}
			if r := resp.GetFromReplica(); r != nil {
				// An edge that lost the central tier answered from its
				// replica: say so, on stderr (stdout keeps its shape).
				fmt.Fprintf(a.env.stderr, "keybroker: %s cannot reach the central tier: this is its replica's inventory at revision %d, last synchronised %s; other nodes' entries may be stale\n",
					r.GetNodeId(), r.GetRevision(), timeText(r.GetSyncedAt()))
			}
			if a.jsonOutput() {
				out := []nodeJSON{}
				for _, n := range resp.GetNodes() {
					out = append(out, toNodeJSON(n))
				}
				return a.printJSON(out)
			}
			rows := [][]string{{"NODE", "KIND", "REGION", "ADDRESS", "ENROLLED", "CONNECTED", "LEASE EXPIRES", "APPLIED"}}
			for _, n := range resp.GetNodes() {
				applied, enrolled := "-", "-"
				if n.GetKind() == "edge" {
					applied, enrolled = strconv.FormatUint(n.GetAppliedRevision(), 10), strconv.FormatBool(n.GetEnrolled())
				}
				rows = append(rows, []string{n.GetNodeId(), n.GetKind(), orDash(n.GetRegion()), orDash(n.GetAddress()),
					enrolled, strconv.FormatBool(n.GetConnected()), timeText(n.GetLeaseExpires()), applied})
			}
			return a.printTable(rows)
		},
	}
	a.addClientFlags(cmd.Flags())
	return cmd
}
