// This file holds the admin endpoint: a read-only JSON view of what a node
// knows (services, members, health) and a server-sent-event stream of its
// Events, for operators and the aegis command-line tool.

package aegis

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultHealthyShare is the share of known instances that must be healthy
// for the admin endpoint's /health to answer 200.
const DefaultHealthyShare = 0.8

// AdminOption adjusts AdminHandler.
type AdminOption func(*adminOptions)

type adminOptions struct {
	healthyShare float64
}

// WithHealthyShare sets the share of known instances (0 to 1) that must be
// healthy for /health to answer 200 (default DefaultHealthyShare, 80%).
// Values outside [0, 1] are clamped.
func WithHealthyShare(share float64) AdminOption {
	return func(o *adminOptions) { o.healthyShare = min(max(share, 0), 1) }
}

// AdminHandler returns a read-only HTTP handler that reports what n knows,
// as JSON:
//
//	GET /services[?service=NAME]  every known instance: status, role, node, address,
//	                              heartbeat age, ejection state (AdminServices)
//	GET /members                  every member and its memberlist state (AdminMembers)
//	GET /health                   200 while at least the healthy share (80% by default,
//	                              WithHealthyShare) of known instances is healthy, else
//	                              503; the body says why (AdminHealth)
//	GET /route?service=S[&method=M][&key=K]
//	                              which instance a call from n would reach now, and why
//	                              (AdminRoute; 404 with the reason when none)
//	GET /events                   a server-sent-event stream of n's Events (AdminEvent),
//	                              one "data:" line each, from the request on
//
// It changes nothing and has no authentication of its own: it names every
// node, instance and address of the cluster. Do not expose it beyond the
// operators' network without putting your own authentication in front of
// it (for example a handler that checks a token before calling this one).
// AdminHandlerWith takes options.
func AdminHandler(n *Node) http.Handler { return AdminHandlerWith(n) }

// AdminHandlerWith is AdminHandler with options (WithHealthyShare).
func AdminHandlerWith(n *Node, opts ...AdminOption) http.Handler {
	o := adminOptions{healthyShare: DefaultHealthyShare}
	for _, opt := range opts {
		opt(&o)
	}
	a := &admin{n: n, opts: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /services", a.services)
	mux.HandleFunc("GET /members", a.members)
	mux.HandleFunc("GET /health", a.health)
	mux.HandleFunc("GET /route", a.route)
	mux.HandleFunc("GET /events", a.events)
	return mux
}

// admin serves AdminHandler's endpoints for one node.
type admin struct {
	n    *Node
	opts adminOptions
}

// AdminInstance is one instance as AdminHandler's /services reports it.
type AdminInstance struct {
	Service string `json:"service"`
	ID      string `json:"id"`
	Node    string `json:"node"`
	Addr    string `json:"addr"`
	Status  string `json:"status"`
	Role    string `json:"role"`
	// Group and Epoch are a role group member's group and the epoch at
	// which it last became active; Endpoints its other protocols'
	// addresses.
	Group     string            `json:"group,omitempty"`
	Epoch     uint64            `json:"epoch,omitempty"`
	Endpoints map[string]string `json:"endpoints,omitempty"`
	// HeartbeatAgeSeconds is how long ago, on the reporting node's clock,
	// the newest heartbeat arrived.
	HeartbeatAgeSeconds float64 `json:"heartbeat_age_s"`
	// Ejected: the reporting node's passive ejection keeps the instance out
	// of its routing pool for EjectedForSeconds more (it returns after a
	// fresh heartbeat once that time is up).
	Ejected           bool    `json:"ejected"`
	EjectedForSeconds float64 `json:"ejected_for_s,omitempty"`
	// InFlight counts the calls the reporting node has in flight to it.
	InFlight int64             `json:"in_flight"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// AdminServices is the body of /services.
type AdminServices struct {
	Node      string          `json:"node"`
	Instances []AdminInstance `json:"instances"` // by service, then ID
}

// AdminMember is one member as /members reports it. State is "alive",
// "suspect" (memberlist's failure detector suspects it and is waiting for
// it to refute) or "failed".
type AdminMember struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	CallAddr string `json:"call_addr,omitempty"`
	State    string `json:"state"`
	Self     bool   `json:"self,omitempty"`
}

// AdminMembers is the body of /members.
type AdminMembers struct {
	Node    string        `json:"node"`
	Members []AdminMember `json:"members"`
}

// AdminHealth is the body of /health.
type AdminHealth struct {
	Node     string  `json:"node"`
	Healthy  bool    `json:"healthy"`
	Known    int     `json:"known"`             // instances known, any status
	Up       int     `json:"healthy_instances"` // of which healthy
	Required float64 `json:"required_share"`
	Reason   string  `json:"reason"`
}

// AdminEvent is one Event on the /events stream.
type AdminEvent struct {
	Type      string    `json:"type"`
	Service   string    `json:"service"`
	Instance  string    `json:"instance"`
	Node      string    `json:"node"`
	Addr      string    `json:"addr"`
	OldStatus string    `json:"old_status"`
	NewStatus string    `json:"new_status"`
	Reason    string    `json:"reason"`
	Time      time.Time `json:"time"`
}

func (a *admin) services(w http.ResponseWriter, r *http.Request) {
	svc := r.URL.Query().Get("service")
	writeJSON(w, http.StatusOK, AdminServices{Node: a.n.name, Instances: a.n.reg.adminInstances(svc, a.n.clk.Now())})
}

func (a *admin) members(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, AdminMembers{Node: a.n.name, Members: a.n.adminMembers()})
}

func (a *admin) health(w http.ResponseWriter, _ *http.Request) {
	h := a.n.adminHealth(a.opts.healthyShare)
	code := http.StatusOK
	if !h.Healthy {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

func (a *admin) route(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	svc := q.Get("service")
	if svc == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "aegis: /route needs ?service=NAME"})
		return
	}
	var opts []CallOption
	if k := q.Get("key"); k != "" {
		opts = append(opts, WithKey(k))
	}
	if res := q.Get("resource"); res != "" {
		opts = append(opts, WithResource(res))
	}
	if g := q.Get("group"); g != "" {
		opts = append(opts, WithGroup(g))
	}
	rt, err := a.n.Route(svc, q.Get("method"), opts...)
	if err != nil {
		writeJSON(w, http.StatusNotFound, rt)
		return
	}
	writeJSON(w, http.StatusOK, rt)
}

// writeJSON writes v as indented JSON with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// adminInstances returns the instances of service ("" for all), sorted by
// service and ID, as /services reports them at now (this node's clock).
func (r *registry) adminInstances(service string, now time.Time) []AdminInstance {
	r.mu.RLock()
	out := make([]AdminInstance, 0, len(r.entries))
	for k, e := range r.entries {
		if service != "" && k.service != service {
			continue
		}
		ai := AdminInstance{Service: e.rec.Service, ID: e.rec.ID, Node: e.rec.Node, Addr: e.rec.Addr,
			Status: e.status.String(), Role: Role(e.rec.Role).String(),
			HeartbeatAgeSeconds: seconds(now.Sub(e.lastHeartbeat)), InFlight: e.load.inflight.Load(),
			Metadata: copyMeta(e.rec.Meta), Epoch: e.rec.Epoch, Endpoints: copyMeta(e.rec.Endpoints)}
		if e.rec.Role != uint8(RoleNone) {
			ai.Group = groupOf(&e.rec).group
		}
		if !e.ejectedUntil.IsZero() {
			ai.Ejected, ai.EjectedForSeconds = true, seconds(max(e.ejectedUntil.Sub(now), 0))
		}
		out = append(out, ai)
	}
	r.mu.RUnlock()
	sortAdmin(out)
	return out
}

// seconds returns d in seconds, rounded to the millisecond.
func seconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

func sortAdmin(insts []AdminInstance) {
	slices.SortFunc(insts, func(a, b AdminInstance) int {
		if c := strings.Compare(a.Service, b.Service); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// adminMembers returns Members with memberlist's suspicion folded in.
func (n *Node) adminMembers() []AdminMember {
	suspect := map[string]bool{}
	for _, m := range n.gossip.ml.Members() {
		if m.State == memberlist.StateSuspect {
			suspect[m.Name] = true
		}
	}
	ms := n.Members()
	out := make([]AdminMember, len(ms))
	for i, m := range ms {
		state := m.State.String()
		if m.State == MemberAlive && suspect[m.Name] {
			state = "suspect"
		}
		out[i] = AdminMember{Name: m.Name, Addr: m.Addr, CallAddr: m.CallAddr, State: state, Self: m.Name == n.name}
	}
	return out
}

// adminHealth judges the node's view of the cluster: healthy while at
// least share of the known instances is healthy (vacuously when none is
// known), and never once the node has stopped.
func (n *Node) adminHealth(share float64) AdminHealth {
	h := AdminHealth{Node: n.name, Required: share}
	if st := n.state.Load(); st != stateRunning {
		h.Reason = "node is leaving or has stopped"
		return h
	}
	n.reg.mu.RLock()
	for _, e := range n.reg.entries {
		h.Known++
		if e.status == StatusHealthy {
			h.Up++
		}
	}
	n.reg.mu.RUnlock()
	switch {
	case h.Known == 0:
		h.Healthy, h.Reason = true, "no instances known"
	case float64(h.Up) >= share*float64(h.Known):
		h.Healthy = true
		h.Reason = fmt.Sprintf("%d of %d known instances healthy (at least %s required)", h.Up, h.Known, percent(share))
	default:
		h.Reason = fmt.Sprintf("only %d of %d known instances healthy (%s), below the required %s", h.Up, h.Known,
			percent(float64(h.Up)/float64(h.Known)), percent(share))
	}
	return h
}

// percent formats a share as a percentage with at most one decimal.
func percent(f float64) string { return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + "%" }

// sseKeepAlive is how often an idle /events stream sends a comment line,
// so proxies and clients can tell a quiet cluster from a dead connection.
const sseKeepAlive = 15 * time.Second

// events streams n's Events as server-sent events until the client goes
// away or the node stops. The stream opens with a comment line, sent once
// the subscription is in place, so a client that has read it misses no
// later event.
func (a *admin) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "aegis: /events needs a streaming ResponseWriter"})
		return
	}
	ch := make(chan Event, 64)
	done := make(chan struct{})
	cancel := a.n.Subscribe(func(e Event) {
		select {
		case ch <- e:
		case <-done:
		}
	})
	defer cancel()
	defer close(done) // runs first: unblocks a subscriber waiting to send
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": aegis events of node %s\n\n", a.n.name)
	fl.Flush()
	tick := time.NewTicker(sseKeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.n.stopCh:
			return
		case <-tick.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case e := <-ch:
			b, _ := json.Marshal(adminEvent(e))
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, b)
		}
		fl.Flush()
	}
}

// adminEvent is e as the /events stream carries it.
func adminEvent(e Event) AdminEvent {
	return AdminEvent{Type: e.Type.String(), Service: e.Instance.Service, Instance: e.Instance.ID, Node: e.Instance.Node,
		Addr: e.Instance.Addr, OldStatus: e.OldStatus.String(), NewStatus: e.NewStatus.String(), Reason: e.Reason, Time: e.Time}
}
