// This file holds the routing snapshots: per service, the instances with
// an "http" endpoint that routing may pick, rebuilt after events.

package aegishttp

import (
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aegisipc/aegis"
)

// snapshot is the immutable routing view of one service.
type snapshot struct {
	insts  []aegis.Instance // Service and ID only, sorted by ID
	urls   map[string]*url.URL
	failed map[string]*atomic.Bool // see routeCache.failed
}

// routeCache keeps a snapshot per service until an event about the
// service invalidates it; the next request rebuilds it.
type routeCache struct {
	node *aegis.Node
	bal  aegis.Balancer

	mu    sync.RWMutex
	snaps map[string]*snapshot
	gens  map[string]uint64 // bumped by every invalidation

	// failed maps "SERVICE/ID" to an *atomic.Bool: whether this Transport
	// reported a failure of the instance since its last reported success.
	failed sync.Map
}

// failedFlag returns the failure flag of an instance.
func (c *routeCache) failedFlag(service, id string) *atomic.Bool {
	k := service + "/" + id
	if f, ok := c.failed.Load(k); ok {
		return f.(*atomic.Bool)
	}
	f, _ := c.failed.LoadOrStore(k, new(atomic.Bool))
	return f.(*atomic.Bool)
}

// maxCached bounds the services cached; beyond it the cache starts over.
const maxCached = 1024

func newRouteCache(node *aegis.Node, bal aegis.Balancer) *routeCache {
	return &routeCache{node: node, bal: bal, snaps: map[string]*snapshot{}, gens: map[string]uint64{}}
}

// get returns the current snapshot of service.
func (c *routeCache) get(service string) *snapshot {
	c.mu.RLock()
	s, gen := c.snaps[service], c.gens[service]
	c.mu.RUnlock()
	if s != nil {
		return s
	}
	s = build(c.node, service)
	for _, in := range s.insts {
		s.failed[in.ID] = c.failedFlag(service, in.ID)
	}
	c.mu.Lock()
	if c.gens[service] == gen { // no event since: s is current
		if len(c.snaps) >= maxCached {
			clear(c.snaps)
		}
		c.snaps[service] = s
	}
	c.mu.Unlock()
	return s
}

// invalidate drops service's snapshot after an event about it.
func (c *routeCache) invalidate(service string) {
	c.mu.Lock()
	delete(c.snaps, service)
	c.gens[service]++
	if len(c.gens) > maxCached {
		clear(c.gens) // a snapshot racing with this is at worst rebuilt once more
	}
	c.mu.Unlock()
}

// build reads the routing set of service: the instances of HealthyInstances
// with a valid "http" endpoint. When none has one (those that do are all
// ejected, while instances without the endpoint are not), it falls back
// like Aegis's own routing does when every instance is ejected: to the
// healthy plain (RoleNone) instances with the endpoint, else the degraded
// ones.
func build(node *aegis.Node, service string) *snapshot {
	s := &snapshot{urls: map[string]*url.URL{}, failed: map[string]*atomic.Bool{}}
	add := func(in aegis.Instance) {
		if u := endpointURL(in.Endpoints[EndpointName]); u != nil {
			s.urls[in.ID] = u
			s.insts = append(s.insts, aegis.Instance{Service: service, ID: in.ID})
		}
	}
	for _, in := range node.HealthyInstances(service) {
		add(in)
	}
	if len(s.insts) == 0 {
		all := node.Instances(service)
		for _, st := range []aegis.Status{aegis.StatusHealthy, aegis.StatusDegraded} {
			for _, in := range all {
				if in.Status == st && in.Role == aegis.RoleNone {
					add(in)
				}
			}
			if len(s.insts) > 0 {
				break
			}
		}
	}
	slices.SortFunc(s.insts, func(a, b aegis.Instance) int { return strings.Compare(a.ID, b.ID) })
	return s
}

// endpointURL parses an "http" endpoint: an http or https URL with a host,
// or a bare host:port (taken as http). It returns nil for anything else.
func endpointURL(ep string) *url.URL {
	if ep == "" {
		return nil
	}
	if !strings.Contains(ep, "://") {
		ep = "http://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	return u
}
