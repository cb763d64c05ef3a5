// This file holds the built-in test services an agent serves with -serve.

package main

import (
	"context"
	"encoding/json"
	"flag"
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

// serveSpec is one -serve item: a kind served as service name, in role
// (aegis.RoleNone unless the item names one).
type serveSpec struct {
	kind, service string
	role          aegis.Role
}

// roleNames are the roles a -serve item may name.
var roleNames = map[string]aegis.Role{"active": aegis.RoleActive, "standby": aegis.RoleStandby}

// parseServe parses -serve items of the form KIND, KIND:SERVICE or
// KIND:SERVICE:ROLE (the service is named after the kind when SERVICE is
// left out; ROLE is active or standby). Service names must be distinct.
func parseServe(items []string) ([]serveSpec, error) {
	var out []serveSpec
	seen := map[string]bool{}
	for _, item := range items {
		k, svc, _ := strings.Cut(item, ":")
		svc, roleName, hasRole := strings.Cut(svc, ":")
		if svc == "" {
			svc = k
		}
		role, known := roleNames[roleName]
		if hasRole && !known {
			return nil, usagef("-serve %q: unknown role %q (want active or standby)", item, roleName)
		}
		if _, ok := kindNamed(k); !ok {
			return nil, usagef("-serve %q: unknown kind %q (known: %s)", item, k, kindNames())
		}
		if seen[svc] {
			return nil, usagef("-serve %q: service %q is served twice", item, svc)
		}
		seen[svc] = true
		out = append(out, serveSpec{kind: k, service: svc, role: role})
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
	Epoch    uint64 `json:"epoch,omitempty"` // the role group's epoch, for a role group's active
}

// handler returns the Handler of in for kind k: whoami answers the
// identity, every other method runs k.
func (in *instance) handler(k kind) aegis.Handler {
	return func(ctx context.Context, req *aegis.Request) ([]byte, error) {
		if req.Method == whoamiMethod {
			return json.Marshal(identity{Instance: in.id, Node: in.node, Service: in.service, Epoch: req.Epoch})
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
func registerServices(ctx context.Context, node *aegis.Node, specs []serveSpec, instanceID string, record *runlog.Writer, roles roleFlags) ([]*aegis.Registration, error) {
	regs := make([]*aegis.Registration, 0, len(specs))
	for _, s := range specs {
		k, _ := kindNamed(s.kind)
		id := instanceID
		if id == "" {
			id = s.service + "-" + node.Name()
		}
		in := &instance{service: s.service, id: id, node: node.Name(), record: record}
		svc := aegis.Service{Name: s.service, InstanceID: id, Handler: in.handler(k),
			NonIdempotent: k.nonIdempotent, Metadata: map[string]string{"kind": k.name}}
		if s.role != aegis.RoleNone {
			svc.Role, svc.Priority, svc.Promotion, svc.GroupSize = s.role, roles.priority, roles.promotion, roles.groupSize
		}
		reg, err := node.Register(ctx, svc)
		if err != nil {
			return regs, fmt.Errorf("serve %s as service %q: %w", s.kind, s.service, err)
		}
		regs = append(regs, reg)
	}
	return regs, nil
}

// roleFlags are the role-group settings of the services served with a
// role (-serve KIND:SERVICE:ROLE).
type roleFlags struct {
	priority  int
	promotion aegis.PromotionMode
	groupSize int
}

// register adds the role flags to fs; promotion is parsed from the
// string flag into r.promotion by parse.
func (r *roleFlags) register(fs *flag.FlagSet, promotion *string) {
	fs.IntVar(&r.priority, "priority", 0, "promotion `priority` of the services served with a role (higher is promoted first)")
	fs.StringVar(promotion, "promotion", "majority", "promotion `mode` of the services served with a role: majority (aegis.PromoteWithMajority) or always")
	fs.IntVar(&r.groupSize, "group-size", 0, "intended `members` of the role groups served (aegis.Service.GroupSize; 0: the members known)")
}

// parse sets r.promotion from the -promotion flag's value.
func (r *roleFlags) parse(promotion string) error {
	switch promotion {
	case "majority":
		r.promotion = aegis.PromoteWithMajority
	case "always":
		r.promotion = aegis.PromoteAlways
	default:
		return usagef("-promotion %q: want majority or always", promotion)
	}
	return nil
}
