// This file holds RoundTrip: one attempt per instance, failover of
// idempotent requests, outcome reports.

package aegishttp

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/aegisipc/aegis"
)

// RoundTrip sends req to an instance of the service its host names
// (http://SERVICE.aegis/...), rewriting scheme, host and path prefix to the
// instance's "http" endpoint. A connection error, an attempt timeout or a
// 502, 503 or 504 answer counts as a failure of the instance (reported to
// Aegis's passive ejection; any other answer is a success); an idempotent
// request (see Idempotent) whose body can be replayed (nil, http.NoBody, or
// GetBody set, as http.NewRequest does for in-memory bodies) then moves to
// another instance, up to WithMaxAttempts instances. Other requests are
// sent once: the failure is returned as it is. When no instance can take a
// retry, the last answer or error is returned. Requests for other hosts go
// to the base RoundTripper unchanged.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	svc, ok := serviceOf(req)
	if !ok {
		return t.opts.base.RoundTrip(req)
	}
	to, err := t.pick(svc, req, nil)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	retry := Idempotent(req) && replayable(req)
	var buf [4]string
	tried := buf[:0]
	body := req.Body
	for {
		tried = append(tried, to.id)
		resp, failed, err := t.attempt(req, to, body)
		if !failed || !retry || len(tried) >= t.opts.maxAttempts || req.Context().Err() != nil {
			return resp, err
		}
		next, perr := t.pick(svc, req, tried)
		if perr != nil {
			return resp, err // nowhere else to go
		}
		if req.GetBody != nil {
			if body, perr = req.GetBody(); perr != nil {
				return resp, err
			}
		}
		discard(resp)
		to = next
	}
}

// target is the instance an attempt goes to.
type target struct {
	svc, id string
	url     *url.URL
	failed  *atomic.Bool // see routeCache.failed
}

// pick chooses an instance of svc not in tried.
func (t *Transport) pick(svc string, req *http.Request, tried []string) (target, error) {
	snap := t.cache.get(svc)
	rr := aegis.RouteRequest{Service: svc, Method: req.Method}
	if t.opts.hashHeader != "" {
		rr.Key = req.Header.Get(t.opts.hashHeader)
	}
	if len(tried) > 0 {
		rr.Exclude = make(map[string]struct{}, len(tried))
		for _, id := range tried {
			rr.Exclude[id] = struct{}{}
		}
	}
	inst, err := t.cache.bal.Pick(rr, snap.insts)
	if err != nil {
		return target{}, fmt.Errorf("aegishttp: service %q: %w", svc, err)
	}
	return target{svc: svc, id: inst.ID, url: snap.urls[inst.ID], failed: snap.failed[inst.ID]}, nil
}

// report tells Aegis's passive ejection how an attempt went. A success is
// reported only when this Transport reported a failure of the instance
// since its last reported success: it only clears the failure count, and
// a report costs a registry lookup.
func (t *Transport) report(to target, ok bool) {
	if ok && !to.failed.Swap(false) {
		return
	}
	if !ok {
		to.failed.Store(true)
	}
	t.node.ReportResult(to.svc, to.id, ok)
}

// attempt sends req with body to an instance and reports the outcome;
// failed says whether the instance failed it.
func (t *Transport) attempt(req *http.Request, to target, body io.ReadCloser) (*http.Response, bool, error) {
	ctx, cancel := req.Context(), context.CancelCauseFunc(nil)
	var timer *time.Timer
	if d := t.opts.attemptTimeout; d > 0 {
		ctx, cancel = context.WithCancelCause(ctx)
		timer = time.AfterFunc(d, func() { cancel(errAttemptTimeout) })
	}
	resp, err := t.opts.base.RoundTrip(rewrite(req, ctx, to.url, body))
	if timer != nil {
		fired := !timer.Stop()
		switch {
		case err != nil:
			cancel(nil)
			if fired || context.Cause(ctx) == errAttemptTimeout {
				err = fmt.Errorf("%w (%w)", errAttemptTimeout, err)
			}
		case fired: // answered just as the timeout hit: its body is cut off
			discard(resp)
			resp, err = nil, errAttemptTimeout
		default:
			resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
		}
	}
	if err != nil {
		if req.Context().Err() == nil { // not the caller giving up
			t.report(to, false)
		}
		return nil, true, err
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		t.report(to, false)
		return resp, true, nil
	}
	t.report(to, true)
	return resp, false, nil
}

// rewrite returns a shallow copy of req for the instance at u, with ctx
// and body.
func rewrite(req *http.Request, ctx context.Context, u *url.URL, body io.ReadCloser) *http.Request {
	out := req.WithContext(ctx)
	nu := *req.URL
	nu.Scheme, nu.Host = u.Scheme, u.Host
	if u.Path != "" {
		nu.Path = u.Path + nu.Path
		if nu.RawPath != "" {
			nu.RawPath = u.EscapedPath() + nu.RawPath
		}
	}
	out.URL = &nu
	out.Host = ""
	out.Body = body
	return out
}

// cancelOnClose ends an attempt's context when its response body is
// closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

// Close closes the body, then ends the attempt's context.
func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel(nil)
	return err
}

// discard drains a little of a response that will not be returned, so that
// its connection can be reused, and closes it.
func discard(resp *http.Response) {
	if resp == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	_ = resp.Body.Close()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
