// Package callinfo carries what a node's gRPC front-end learns of a call —
// its request ids, its method and request message, the edge that forwarded
// it — in the call's context, for the code that acts on the call's behalf:
// an edge forwarding or fetching for it (OutgoingRequestID, IncomingCall),
// the audit line (RequestID, ClientRequestID, Forwarder).
//
// It is its own package so that the edge's cache reads a call's
// information without importing the gRPC front-end (package rpc), which
// sets it.
//
// One context value holds the ids and the incoming call, so that a call
// costs one context value, not three.
package callinfo

import (
	"context"
	"crypto/rand"
	"encoding/hex"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// Metadata names of the request ids, on incoming and outgoing calls and
// in response headers.
const (
	RequestIDHeader       = "x-request-id"
	ClientRequestIDHeader = "x-client-request-id"
)

type infoKey struct{}

// Info is what authentication learns about a call.
type Info struct {
	// RequestID is the call's request id; ClientRequestID the one its
	// originating client chose, if any.
	RequestID, ClientRequestID string
	// Method is the full gRPC method; Request the unary request message
	// as the caller sent it (nil for streams).
	Method  string
	Request any
}

// NewContext returns ctx carrying in.
func NewContext(ctx context.Context, in *Info) context.Context {
	return context.WithValue(ctx, infoKey{}, in)
}

func from(ctx context.Context) *Info {
	in, _ := ctx.Value(infoKey{}).(*Info)
	return in
}

// RequestID returns the request id of a call.
func RequestID(ctx context.Context) string {
	if in := from(ctx); in != nil {
		return in.RequestID
	}
	return ""
}

// ClientRequestID returns the request id the call's originating client
// chose, if it sent one: its own correlation id, not the audit's.
func ClientRequestID(ctx context.Context) string {
	if in := from(ctx); in != nil {
		return in.ClientRequestID
	}
	return ""
}

// OutgoingRequestID returns ctx with the call's request id (and the
// client's, if any) set on outgoing gRPC metadata, so a call made on its
// behalf — an edge forwarding or fetching for it — carries the same ids.
// Only a node the receiver trusts to name requests gets its id taken.
func OutgoingRequestID(ctx context.Context) context.Context {
	if rid := RequestID(ctx); rid != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, RequestIDHeader, rid)
	}
	if crid := ClientRequestID(ctx); crid != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, ClientRequestIDHeader, crid)
	}
	return ctx
}

// IncomingCall returns the full method and the request message of the
// unary call ctx belongs to, as the caller sent them: what an edge forwards
// must be the call its client signed, not a rebuilt one.
func IncomingCall(ctx context.Context) (method string, req proto.Message, ok bool) {
	in := from(ctx)
	if in == nil || in.Request == nil {
		return "", nil, false
	}
	req, ok = in.Request.(proto.Message)
	return in.Method, req, ok
}

type viaKey struct{}

// WithForwarder marks ctx as a call forwarded by an edge on behalf of the
// identity ctx carries; the audit line names the edge.
func WithForwarder(ctx context.Context, edge string) context.Context {
	return context.WithValue(ctx, viaKey{}, edge)
}

// Forwarder returns the edge that forwarded the call, if any.
func Forwarder(ctx context.Context) string {
	v, _ := ctx.Value(viaKey{}).(string)
	return v
}

// MethodName is the last element of a full gRPC method name.
func MethodName(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

// NewRequestID is a fresh request id, 24 hex digits of crypto/rand: what
// every front-end (gRPC, the AWS KMS API, XKS) names a call by in the
// audit line, so one request's lines are found by one form of id.
func NewRequestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
