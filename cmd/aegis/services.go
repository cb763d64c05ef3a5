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
	"github.com/aegisipc/aegis/internal/runlog"
)

// whoamiMethod is answered by every built-in service with the instance's
// identity, whatever its kind.
const whoamiMethod = "whoami"

// kind is what a built-in service does for every method but whoami.
type kind struct {
	name          string
	summary       string
	handle        func(ctx context.Context, in *instance, req *aegis.Request) ([]byte, error)
	nonIdempotent []string // methods registered as Service.NonIdempotent
}

// kinds are the built-in service kinds, in the order usage lists them.
var kinds = []kind{
	{"echo", "returns the payload", handleEcho, nil},
	{"sleep", "reads the payload as a Go duration (\"250ms\"), sleeps that long (or until the call's deadline), returns the payload", handleSleep, nil},
	{"fail", "returns an error (not retryable)", handleFail, nil},
	{"count", `returns {"instance","node","service","count"}, count being how many calls this instance has run so far (this one included); method "` + onceMethod + `" is registered non-idempotent; with -runs-file each run is written down`, handleCount, []string{onceMethod}},
}

// onceMethod is the count service's non-idempotent method: CallWithFailover
// never hedges it and moves it to another instance only when the request
// provably never reached the first one.
const onceMethod = "once"

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
	runs              atomic.Int64   // handler runs of the count kind
	record            *runlog.Writer // where the count kind writes its runs down, when not nil
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

func handleCount(_ context.Context, in *instance, req *aegis.Request) ([]byte, error) {
	n := in.runs.Add(1)
	if in.record != nil {
		if err := in.record.Write(runlog.Run{Instance: in.id, Run: n, Method: req.Method, MessageID: req.MessageID}); err != nil {
			return nil, fmt.Errorf("count: write run %d down: %w", n, err)
		}
	}
	return json.Marshal(identity{Instance: in.id, Node: in.node, Service: in.service, Count: n})
}

// registerServices registers one instance per spec on node, with ID
// instanceID or, when that is empty, "<service>-<node name>"; count
// instances write their runs to record when it is not nil. On error the
// ones registered so far stay (the caller shuts the node down).
func registerServices(ctx context.Context, node *aegis.Node, specs []serveSpec, instanceID string, record *runlog.Writer) ([]*aegis.Registration, error) {
	regs := make([]*aegis.Registration, 0, len(specs))
	for _, s := range specs {
		k, _ := kindNamed(s.kind)
		id := instanceID
		if id == "" {
			id = s.service + "-" + node.Name()
		}
		in := &instance{service: s.service, id: id, node: node.Name(), record: record}
		reg, err := node.Register(ctx, aegis.Service{Name: s.service, InstanceID: id, Handler: in.handler(k),
			NonIdempotent: k.nonIdempotent, Metadata: map[string]string{"kind": k.name}})
		if err != nil {
			return regs, fmt.Errorf("serve %s as service %q: %w", s.kind, s.service, err)
		}
		regs = append(regs, reg)
	}
	return regs, nil
}
