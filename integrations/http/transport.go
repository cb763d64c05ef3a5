// Package aegishttp lets net/http clients reach services registered with
// Aegis: Transport, an http.RoundTripper, sends a request for
// http://SERVICE.aegis/PATH to the "http" endpoint (aegis.Service.Endpoints)
// of one of the service's healthy, non-ejected instances, fails idempotent
// requests over to another instance when one does not answer, and reports
// every outcome to Aegis's passive ejection (aegis.Node.ReportResult).
//
//	t := aegishttp.New(node)
//	defer t.Close()
//	client := &http.Client{Transport: t}
//	resp, err := client.Get("http://billing.aegis/invoices/17")
package aegishttp

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/aegisipc/aegis"
)

// HostSuffix marks the hosts Transport resolves: "SERVICE.aegis".
const HostSuffix = ".aegis"

// EndpointName is the key of the endpoint Transport reads from
// aegis.Instance.Endpoints: a base URL such as "http://10.0.0.5:8080"
// (https too; a path in it prefixes every request's path).
const EndpointName = "http"

// Transport is an http.RoundTripper for Aegis services. Requests to other
// hosts go to Base unchanged. Use New; a Transport is safe for concurrent
// use.
type Transport struct {
	node  *aegis.Node
	opts  options
	cache *routeCache
	stop  func()
}

// Option configures New.
type Option func(*options)

type options struct {
	base           http.RoundTripper
	maxAttempts    int
	attemptTimeout time.Duration
	hashHeader     string
}

// WithBase sets the RoundTripper that carries each attempt. Default: a
// clone of http.DefaultTransport with ResponseHeaderTimeout 5s (Aegis's
// AttemptTimeout), so that an instance that accepts connections but does
// not answer fails the attempt.
func WithBase(rt http.RoundTripper) Option { return func(o *options) { o.base = rt } }

// WithMaxAttempts sets how many distinct instances an idempotent request
// may be sent to. Default 3 (Aegis's MaxAttempts); 1 turns failover off.
func WithMaxAttempts(n int) Option { return func(o *options) { o.maxAttempts = max(n, 1) } }

// WithAttemptTimeout bounds each attempt's wait for response headers
// with a timer of its own, whatever the base RoundTripper; an idempotent
// request not answered in time moves to another instance. Default 0: only
// the base's own timeouts (the default base's ResponseHeaderTimeout, see
// WithBase) and the request's context. Reading the body is not bounded by
// it.
func WithAttemptTimeout(d time.Duration) Option {
	return func(o *options) { o.attemptTimeout = d }
}

// WithHashHeader spreads requests by consistent hash of the value of a
// request header (e.g. "X-User-Id") instead of round robin: requests with
// the same value go to the same instance, in every process (the ring is
// aegis.ConsistentHash). Requests without it are spread at random.
func WithHashHeader(name string) Option {
	return func(o *options) { o.hashHeader = http.CanonicalHeaderKey(name) }
}

// New returns a Transport routing with node's view of the cluster. It
// subscribes to node's events to keep its routing current; Close ends
// that.
func New(node *aegis.Node, opts ...Option) *Transport {
	o := options{maxAttempts: 3}
	for _, f := range opts {
		f(&o)
	}
	if o.base == nil {
		b := http.DefaultTransport.(*http.Transport).Clone()
		b.ResponseHeaderTimeout = 5 * time.Second
		o.base = b
	}
	bal := aegis.RoundRobin()
	if o.hashHeader != "" {
		bal = aegis.ConsistentHash()
	}
	t := &Transport{node: node, opts: o, cache: newRouteCache(node, bal)}
	t.stop = node.Subscribe(func(ev aegis.Event) { t.cache.invalidate(ev.Instance.Service) })
	return t
}

// Close stops following the node's events and closes Base's idle
// connections. The Transport must not be used afterwards.
func (t *Transport) Close() {
	t.stop()
	t.CloseIdleConnections()
}

// CloseIdleConnections closes Base's idle connections (http.Client calls
// it).
func (t *Transport) CloseIdleConnections() {
	if c, ok := t.opts.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// serviceOf returns the service a request is for, from a host
// "SERVICE.aegis" (any port ignored).
func serviceOf(req *http.Request) (string, bool) {
	host := req.URL.Hostname()
	svc, ok := strings.CutSuffix(host, HostSuffix)
	return svc, ok && svc != ""
}

// Idempotent reports whether Transport may send req to more than one
// instance: GET, HEAD, OPTIONS, PUT and DELETE requests, and any request
// with an Idempotency-Key header.
func Idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get("Idempotency-Key") != ""
}

// replayable reports whether req's body can be sent again.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

var errAttemptTimeout = errors.New("aegishttp: attempt timed out waiting for response headers")
