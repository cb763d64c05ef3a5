package aegis

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// Mux builds a Handler that dispatches on Request.Method. Register methods
// before the Handler serves calls; a Mux is then safe for concurrent use.
type Mux struct {
	methods map[string]Handler
}

// NewMux returns an empty Mux.
func NewMux() *Mux { return &Mux{methods: make(map[string]Handler)} }

// Handle registers h for method. It panics on an empty method or a
// duplicate, which are programming errors.
func (m *Mux) Handle(method string, h Handler) {
	if method == "" || h == nil {
		panic("aegis: Mux.Handle needs a method name and a handler")
	}
	if _, dup := m.methods[method]; dup {
		panic(fmt.Sprintf("aegis: Mux.Handle: method %q registered twice", method))
	}
	m.methods[method] = h
}

// Handler returns the dispatching Handler. A call to an unregistered method
// fails with a *RemoteError of code CodeUnknownMethod naming the known ones.
func (m *Mux) Handler() Handler {
	return func(ctx context.Context, req *Request) ([]byte, error) {
		h, ok := m.methods[req.Method]
		if !ok {
			known := make([]string, 0, len(m.methods))
			for k := range m.methods {
				known = append(known, k)
			}
			sort.Strings(known)
			return nil, &RemoteError{Code: CodeUnknownMethod,
				Message: fmt.Sprintf("service %q has no method %q (known: %s)", req.Service, req.Method, strings.Join(known, ", "))}
		}
		return h(ctx, req)
	}
}

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
			return nil, &RemoteError{Code: "bad-request", Message: err.Error()}
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
