// This file holds Route: which instance a call from this node would reach
// and why, for operators (the admin endpoint's /route, aegis route).

package aegis

import (
	"fmt"
	"slices"
	"strings"
)

// RouteInfo explains one routing decision of a node (see Node.Route).
type RouteInfo struct {
	Service string `json:"service"`
	Method  string `json:"method,omitempty"`
	Key     string `json:"key,omitempty"`
	// Resource and Group are the call's WithResource and WithGroup.
	Resource string `json:"resource,omitempty"`
	Group    string `json:"group,omitempty"`
	// Epoch is the role group's epoch of the active picked (0 outside
	// role groups).
	Epoch uint64 `json:"epoch,omitempty"`
	// Balancer names the node's Balancer: "round-robin", "random",
	// "least-loaded", "consistent-hash", or the Go type of a custom one.
	Balancer string `json:"balancer"`
	// Instance, Node and Addr are the instance picked ("" when none).
	Instance string `json:"instance,omitempty"`
	Node     string `json:"node,omitempty"`
	Addr     string `json:"addr,omitempty"`
	// Known counts the service's instances in any status; Candidates are
	// the IDs routing chose among (Pool says whether they are the healthy
	// ones or, with none healthy, the degraded ones); Ejected are those
	// this node's passive ejection keeps out; Unroutable the others, as
	// "ID (status)".
	Known      int      `json:"known"`
	Pool       string   `json:"pool,omitempty"`
	Candidates []string `json:"candidates"`
	Ejected    []string `json:"ejected,omitempty"`
	Unroutable []string `json:"unroutable,omitempty"`
	// Reason says in a sentence why Instance was picked, or why none was.
	Reason string `json:"reason"`
}

// Route reports which instance of service a Call from this node with opts
// would reach now, and why. With ConsistentHash and WithKey the answer is
// the instance the call reaches while membership does not change; other
// balancers answer with one draw of their own (RoundRobin's turn moves on
// as for a call). WithExclude is honoured; WithResource answers with the
// resource's owner and WithGroup (or a role-group service) with the
// group's active. It errs as Call does when no
// instance can be picked, with the RouteInfo saying why.
func (n *Node) Route(service, method string, opts ...CallOption) (RouteInfo, error) {
	o := applyOptions(callOptions{}, opts)
	ri := RouteInfo{Service: service, Method: method, Key: o.key, Resource: o.resource, Group: o.group,
		Balancer: balancerName(n.cfg.Balancer), Candidates: []string{}}
	n.reg.explainPool(service, o.exclude, &ri)
	inst, err := n.caller.pick(service, method, &o)
	if err != nil {
		ri.Reason = err.Error()
		return ri, err
	}
	ri.Instance, ri.Node, ri.Addr = inst.ID, inst.Node, inst.Addr
	switch {
	case o.resource != "":
		ri.Reason = fmt.Sprintf("owner of resource %q (only the owner serves it)", o.resource)
		return ri, nil
	case inst.Role == RoleActive:
		ri.Epoch = inst.Epoch
		ri.Reason = fmt.Sprintf("the active of role group %s, epoch %d (calls to a role group go to its active only)", inst.Group, inst.Epoch)
		return ri, nil
	}
	how := map[string]string{"round-robin": "next in round-robin turn", "random": "drawn at random",
		"least-loaded": "fewest calls in flight from this node (of two drawn)"}[ri.Balancer]
	switch {
	case ri.Balancer == "consistent-hash" && o.key != "":
		how = fmt.Sprintf("owner of key %q on the hash ring", o.key)
	case ri.Balancer == "consistent-hash":
		how = "no key given: the ring's owner of the empty key"
	case how == "":
		how = "picked by " + ri.Balancer
	}
	ri.Reason = fmt.Sprintf("%s among %d %s candidate(s)", how, len(ri.Candidates), ri.Pool)
	if len(ri.Ejected) > 0 {
		ri.Reason += fmt.Sprintf("; %d ejected by this node skipped", len(ri.Ejected))
	}
	return ri, nil
}

// explainPool fills ri's Known, Pool, Candidates, Ejected and Unroutable
// the way routable and the balancer's exclusion decide them.
func (r *registry) explainPool(service string, exclude map[string]struct{}, ri *RouteInfo) {
	r.mu.RLock()
	var healthy, degraded []*entry
	for k, e := range r.entries {
		if k.service != service {
			continue
		}
		ri.Known++
		switch e.status {
		case StatusHealthy:
			healthy = append(healthy, e)
		case StatusDegraded:
			degraded = append(degraded, e)
		default:
			ri.Unroutable = append(ri.Unroutable, k.id+" ("+e.status.String()+")")
		}
	}
	pool := healthy
	ri.Pool = "healthy"
	if len(pool) == 0 {
		pool, ri.Pool = degraded, "degraded"
	} else {
		for _, e := range degraded {
			ri.Unroutable = append(ri.Unroutable, e.rec.ID+" (degraded, while healthy ones exist)")
		}
	}
	var kept, ejected []string
	for _, e := range pool {
		if e.ejectedUntil.IsZero() {
			kept = append(kept, e.rec.ID)
		} else {
			ejected = append(ejected, e.rec.ID)
		}
	}
	r.mu.RUnlock()
	if len(kept) == 0 {
		kept, ejected = ejected, nil // routable falls back to the ejected ones
	}
	for _, id := range kept {
		if _, ok := exclude[id]; ok {
			ri.Unroutable = append(ri.Unroutable, id+" (excluded)")
		} else {
			ri.Candidates = append(ri.Candidates, id)
		}
	}
	ri.Ejected = ejected
	slices.Sort(ri.Candidates)
	slices.Sort(ri.Ejected)
	slices.Sort(ri.Unroutable)
}

// balancerName names b for RouteInfo.
func balancerName(b Balancer) string {
	switch b.(type) {
	case *roundRobin:
		return "round-robin"
	case *random:
		return "random"
	case *leastLoaded:
		return "least-loaded"
	case *consistentHash:
		return "consistent-hash"
	}
	return strings.TrimPrefix(fmt.Sprintf("%T", b), "*")
}
