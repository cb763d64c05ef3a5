// This file holds the built-in test services an agent serves with -serve.

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis"
)

// whoamiMethod is answered by every built-in service with the instance's
// identity, whatever its kind.
const whoamiMethod = "whoami"

// kind is what a built-in service does for every method but whoami.
type kind struct {
	name    string
	summary string
	handle  func(ctx context.Context, in *instance, req *aegis.Request) ([]byte, error)
}

// kinds are the built-in service kinds, in the order usage lists them.
var kinds = []kind{
	{"echo", "returns the payload", handleEcho},
	{"sleep", "reads the payload as a Go duration (\"250ms\"), sleeps that long (or until the call's deadline), returns the payload", handleSleep},
	{"fail", "returns an error (not retryable)", handleFail},
	{"count", `returns {"instance","node","service","count"}, count being how many calls this instance has run so far`, handleCount},
}

func kindNamed(name string) (kind, bool) {
	i := slices.IndexFunc(kinds, func(k kind) bool { return k.name == name })
	if i < 0 {
		return kind{}, false
	}
	return kinds[i], true
}

func kindNames() string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

// serveSpec is one -serve item: a kind served as service name.
type serveSpec struct{ kind, service string }

// parseServe parses -serve items of the form KIND or KIND:SERVICE (the
// service is named after the kind when SERVICE is left out). Service names
// must be distinct.
func parseServe(items []string) ([]serveSpec, error) {
	var out []serveSpec
	seen := map[string]bool{}
	for _, item := range items {
		k, svc, _ := strings.Cut(item, ":")
		if svc == "" {
			svc = k
		}
		if _, ok := kindNamed(k); !ok {
			return nil, usagef("-serve %q: unknown kind %q (known: %s)", item, k, kindNames())
		}
		if seen[svc] {
			return nil, usagef("-serve %q: service %q is served twice", item, svc)
		}
		seen[svc] = true
		out = append(out, serveSpec{kind: k, service: svc})
	}
	return out, nil
}

// instance is one served built-in instance.
type instance struct {
	service, id, node string
	runs              atomic.Int64 // handler runs of the count kind
}

// identity is what whoami and count answer.
type identity struct {
	Instance string `json:"instance"`
	Node     string `json:"node"`
	Service  string `json:"service"`
	Count    int64  `json:"count,omitempty"`
}

// handler returns the Handler of in for kind k: whoami answers the
// identity, every other method runs k.
func (in *instance) handler(k kind) aegis.Handler {
	return func(ctx context.Context, req *aegis.Request) ([]byte, error) {
		if req.Method == whoamiMethod {
			return json.Marshal(identity{Instance: in.id, Node: in.node, Service: in.service})
		}
		return k.handle(ctx, in, req)
	}
}

func handleEcho(_ context.Context, _ *instance, req *aegis.Request) ([]byte, error) {
	return req.Payload, nil
}

func handleSleep(ctx context.Context, _ *instance, req *aegis.Request) ([]byte, error) {
	d, err := time.ParseDuration(string(req.Payload))
	if err != nil || d < 0 {
		return nil, fmt.Errorf("sleep: payload %q is not a non-negative Go duration such as 250ms", req.Payload)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return req.Payload, nil
	}
}

func handleFail(_ context.Context, in *instance, req *aegis.Request) ([]byte, error) {
	return nil, fmt.Errorf("fail: instance %s failed method %q as it always does", in.id, req.Method)
}

func handleCount(_ context.Context, in *instance, _ *aegis.Request) ([]byte, error) {
	n := in.runs.Add(1)
	return json.Marshal(identity{Instance: in.id, Node: in.node, Service: in.service, Count: n})
}

// registerServices registers one instance per spec on node, with ID
// instanceID or, when that is empty, "<service>-<node name>". On error the
// ones registered so far stay (the caller shuts the node down).
func registerServices(ctx context.Context, node *aegis.Node, specs []serveSpec, instanceID string) ([]*aegis.Registration, error) {
	regs := make([]*aegis.Registration, 0, len(specs))
	for _, s := range specs {
		k, _ := kindNamed(s.kind)
		id := instanceID
		if id == "" {
			id = s.service + "-" + node.Name()
		}
		in := &instance{service: s.service, id: id, node: node.Name()}
		reg, err := node.Register(ctx, aegis.Service{Name: s.service, InstanceID: id, Handler: in.handler(k),
			Metadata: map[string]string{"kind": k.name}})
		if err != nil {
			return regs, fmt.Errorf("serve %s as service %q: %w", s.kind, s.service, err)
		}
		regs = append(regs, reg)
	}
	return regs, nil
}
