// This file holds Mux, a Handler that dispatches on the method name.

package aegis

import (
	"context"
	"fmt"
	"sort"
	"strings"
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
