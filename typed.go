// This file holds the typed helpers: msgpack Marshal and Unmarshal,
// HandleTyped on the serving side and Invoke on the calling side.

package aegis

import (
	"context"
	"fmt"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

var msgpackHandle = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.WriteExt = true
	h.RawToString = true
	return h
}()

// Marshal encodes v with msgpack, the encoding of the typed helpers.
func Marshal(v any) ([]byte, error) {
	var b []byte
	if err := codec.NewEncoderBytes(&b, msgpackHandle).Encode(v); err != nil {
		return nil, fmt.Errorf("aegis: encode %T: %w", v, err)
	}
	return b, nil
}

// Unmarshal decodes msgpack data into v (a pointer).
func Unmarshal(data []byte, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("aegis: decode %T: %v", v, r)
		}
	}()
	if err := codec.NewDecoderBytes(data, msgpackHandle).Decode(v); err != nil {
		return fmt.Errorf("aegis: decode %T: %w", v, err)
	}
	return nil
}

// HandleTyped registers a typed method on m: the request payload is decoded
// from msgpack into Req, and fn's Resp is encoded back. A payload that does
// not decode fails with a *RemoteError of code "bad-request".
func HandleTyped[Req, Resp any](m *Mux, method string, fn func(ctx context.Context, req Req) (Resp, error)) {
	m.Handle(method, func(ctx context.Context, r *Request) ([]byte, error) {
		var in Req
		if err := Unmarshal(r.Payload, &in); err != nil {
			return nil, &RemoteError{Code: CodeBadRequest, Message: err.Error()}
		}
		out, err := fn(ctx, in)
		if err != nil {
			return nil, err
		}
		return Marshal(out)
	})
}

// Invoke calls a typed method with CallWithFailover: req is encoded with
// msgpack and the answer decoded into Resp.
func Invoke[Req, Resp any](ctx context.Context, n *Node, service, method string, req Req, opts ...CallOption) (Resp, error) {
	var zero Resp
	payload, err := Marshal(req)
	if err != nil {
		return zero, err
	}
	out, err := n.CallWithFailover(ctx, service, method, payload, opts...)
	if err != nil {
		return zero, err
	}
	var resp Resp
	if err := Unmarshal(out, &resp); err != nil {
		return zero, err
	}
	return resp, nil
}
