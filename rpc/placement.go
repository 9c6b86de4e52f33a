package rpc

import (
	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// Placement and routing are decided in package placement; this file only
// converts between its types and the wire's.

// operationActions is every operation LookupKey accepts, as the action it
// names. OPERATION_UNSPECIFIED is not one.
var operationActions = map[kbv1.Operation]policy.Action{
	kbv1.Operation_OPERATION_ENCRYPT:           policy.Encrypt,
	kbv1.Operation_OPERATION_DECRYPT:           policy.Decrypt,
	kbv1.Operation_OPERATION_REENCRYPT:         policy.ReEncrypt,
	kbv1.Operation_OPERATION_GENERATE_DATA_KEY: policy.GenerateDataKey,
	kbv1.Operation_OPERATION_SIGN:              policy.Sign,
	kbv1.Operation_OPERATION_VERIFY:            policy.Verify,
	kbv1.Operation_OPERATION_GET_PUBLIC_KEY:    policy.GetPublicKey,
	kbv1.Operation_OPERATION_GENERATE_MAC:      policy.GenerateMac,
	kbv1.Operation_OPERATION_VERIFY_MAC:        policy.VerifyMac,
	kbv1.Operation_OPERATION_DESCRIBE_KEY:      policy.DescribeKey,
	kbv1.Operation_OPERATION_DECRYPT_DATA_KEY:  policy.DecryptDataKey,
}

// operationAction is the action a LookupKey operation names; ok is false
// for OPERATION_UNSPECIFIED and values the API does not define.
func operationAction(op kbv1.Operation) (a policy.Action, ok bool) {
	a, ok = operationActions[op]
	return a, ok
}

var reasonsOnTheWire = [...]kbv1.LookupReason{
	placement.MaterialHeld:         kbv1.LookupReason_LOOKUP_REASON_MATERIAL_HELD,
	placement.PlacementAllowsFetch: kbv1.LookupReason_LOOKUP_REASON_PLACEMENT_ALLOWS_FETCH,
	placement.ForwardOnly:          kbv1.LookupReason_LOOKUP_REASON_FORWARD_ONLY,
	placement.RootOfTrust:          kbv1.LookupReason_LOOKUP_REASON_ROOT_OF_TRUST,
	placement.Replica:              kbv1.LookupReason_LOOKUP_REASON_REPLICA,
}

// reasonToProto converts a lookup reason (UNSPECIFIED for an unknown one).
func reasonToProto(r placement.Reason) kbv1.LookupReason {
	if int(r) < len(reasonsOnTheWire) {
		return reasonsOnTheWire[r]
	}
	return kbv1.LookupReason_LOOKUP_REASON_UNSPECIFIED
}

// lookupToProto is a Lookup answer on the wire.
func lookupToProto(cs []placement.Candidate) []*kbv1.LookupNode {
	out := make([]*kbv1.LookupNode, len(cs))
	for i, c := range cs {
		out[i] = &kbv1.LookupNode{NodeId: c.Node.ID, Address: c.Node.Address, Kind: c.Node.Kind, Region: c.Node.Region,
			Reason: reasonToProto(c.Reason)}
	}
	return out
}
