package aegis

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aegisipc/aegis/internal/testutil"
)

// adminCluster is three nodes on loopback TCP with fast heartbeats, each
// hosting one instance of "svc", and an admin server on node 0.
func adminCluster(t *testing.T, opts ...AdminOption) (*cluster, *httptest.Server) {
	t.Helper()
	c := newCluster(t, 3, false, overTCP, func(cfg *Config) {
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout = 100*time.Millisecond, 600*time.Millisecond
		cfg.Balancer = ConsistentHash()
	})
	c.waitConverged(10 * time.Second)
	srv := httptest.NewServer(AdminHandlerWith(c.nodes[0], opts...))
	t.Cleanup(srv.Close)
	return c, srv
}

// getJSON GETs path from srv, decodes the body into v and returns the
// status code.
func getJSON(t *testing.T, srv *httptest.Server, path string, v any) int {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	return resp.StatusCode
}

func TestAdminServicesAndMembers(t *testing.T) {
	c, srv := adminCluster(t)
	var svcs AdminServices
	require.Equal(t, http.StatusOK, getJSON(t, srv, "/services", &svcs))
	require.Equal(t, "node-00", svcs.Node)
	require.Len(t, svcs.Instances, 3)
	for i, in := range svcs.Instances {
		assert.Equal(t, "svc", in.Service)
		assert.Equal(t, c.regs[i].Instance().ID, in.ID, "sorted by ID")
		assert.Equal(t, c.nodes[i].Name(), in.Node)
		assert.Equal(t, c.regs[i].Instance().Addr, in.Addr)
		assert.Equal(t, "healthy", in.Status)
		assert.Equal(t, "none", in.Role)
		assert.False(t, in.Ejected)
		assert.Less(t, in.HeartbeatAgeSeconds, 0.6, "fresh heartbeats every 100ms")
	}

	// Passive ejection shows, with the time it has left.
	in1, ok := c.nodes[0].reg.get(instKey{"svc", "inst-1"})
	require.True(t, ok)
	c.nodes[0].reg.eject(instKey{"svc", "inst-1"}, in1.load, time.Minute, time.Minute)
	require.Equal(t, http.StatusOK, getJSON(t, srv, "/services?service=svc", &svcs))
	require.Len(t, svcs.Instances, 3)
	assert.True(t, svcs.Instances[1].Ejected)
	assert.InDelta(t, 60, svcs.Instances[1].EjectedForSeconds, 5)
	require.Equal(t, http.StatusOK, getJSON(t, srv, "/services?service=nope", &svcs))
	assert.Empty(t, svcs.Instances)

	var ms AdminMembers
	require.Equal(t, http.StatusOK, getJSON(t, srv, "/members", &ms))
	require.Len(t, ms.Members, 3)
	for i, m := range ms.Members {
		assert.Equal(t, c.nodes[i].Name(), m.Name)
		assert.Equal(t, c.nodes[i].Addr(), m.Addr)
		assert.NotEmpty(t, m.CallAddr)
		assert.Equal(t, "alive", m.State)
		assert.Equal(t, i == 0, m.Self)
	}
}

func TestAdminHealth(t *testing.T) {
	c, srv := adminCluster(t)
	var h AdminHealth
	require.Equal(t, http.StatusOK, getJSON(t, srv, "/health", &h))
	assert.True(t, h.Healthy)
	assert.Equal(t, 3, h.Known)
	assert.Equal(t, 3, h.Up)
	assert.Equal(t, 0.8, h.Required)
	assert.Equal(t, "3 of 3 known instances healthy (at least 80% required)", h.Reason)

	c.regs[2].PauseHeartbeats()
	testutil.Eventually(t, 10*time.Second, func() bool { return status(c.nodes[0], "inst-2") == StatusUnhealthy }, "inst-2 unhealthy")
	require.Equal(t, http.StatusServiceUnavailable, getJSON(t, srv, "/health", &h))
	assert.False(t, h.Healthy)
	assert.Equal(t, 2, h.Up)
	assert.Equal(t, "only 2 of 3 known instances healthy (66.7%), below the required 80%", h.Reason)

	lenient := httptest.NewServer(AdminHandlerWith(c.nodes[0], WithHealthyShare(0.5)))
	defer lenient.Close()
	require.Equal(t, http.StatusOK, getJSON(t, lenient, "/health", &h))
	assert.Equal(t, 0.5, h.Required)

	c.regs[2].ResumeHeartbeats()
	testutil.Eventually(t, 10*time.Second, func() bool { return getJSON(t, srv, "/health", &h) == http.StatusOK }, "healthy again")

	require.NoError(t, c.nodes[0].Shutdown())
	require.Equal(t, http.StatusServiceUnavailable, getJSON(t, srv, "/health", &h))
	assert.Equal(t, "node is leaving or has stopped", h.Reason)
}

func TestAdminRoute(t *testing.T) {
	c, srv := adminCluster(t)
	var first RouteInfo
	require.Equal(t, http.StatusOK, getJSON(t, srv, "/route?service=svc&key=order-7", &first))
	assert.Equal(t, "consistent-hash", first.Balancer)
	assert.Equal(t, []string{"inst-0", "inst-1", "inst-2"}, first.Candidates)
	assert.Equal(t, "healthy", first.Pool)
	assert.Equal(t, `owner of key "order-7" on the hash ring among 3 healthy candidate(s)`, first.Reason)
	for range 5 {
		var again RouteInfo
		getJSON(t, srv, "/route?service=svc&key=order-7", &again)
		assert.Equal(t, first.Instance, again.Instance, "a key keeps its instance")
	}
	var idx int
	for i, r := range c.regs {
		if r.Instance().ID == first.Instance {
			idx = i
		}
	}
	assert.Equal(t, c.nodes[idx].Name(), first.Node)

	c.regs[idx].SetStatus(StatusDraining)
	testutil.Eventually(t, 10*time.Second, func() bool { return status(c.nodes[0], first.Instance) == StatusDraining }, "draining seen")
	var moved RouteInfo
	require.Equal(t, http.StatusOK, getJSON(t, srv, "/route?service=svc&key=order-7", &moved))
	assert.NotEqual(t, first.Instance, moved.Instance)
	assert.Equal(t, []string{first.Instance + " (draining)"}, moved.Unroutable)

	var none RouteInfo
	require.Equal(t, http.StatusNotFound, getJSON(t, srv, "/route?service=nope", &none))
	assert.Contains(t, none.Reason, "service not found")
	var bad map[string]string
	require.Equal(t, http.StatusBadRequest, getJSON(t, srv, "/route", &bad))
}

func TestAdminEvents(t *testing.T) {
	c, srv := adminCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/events", nil)
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	rd := bufio.NewReader(resp.Body)
	line, err := rd.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, ": aegis events of node node-00\n", line, "the opening comment: subscribed")

	c.regs[1].SetStatus(StatusDegraded)
	var ev AdminEvent
	var name string
	for ev.Type == "" {
		line, err := rd.ReadString('\n')
		require.NoError(t, err)
		if after, ok := strings.CutPrefix(line, "event: "); ok {
			name = strings.TrimSpace(after)
		}
		if after, ok := strings.CutPrefix(line, "data: "); ok {
			require.NoError(t, json.Unmarshal([]byte(after), &ev))
		}
	}
	assert.Equal(t, "status-changed", name)
	assert.Equal(t, AdminEvent{Type: "status-changed", Service: "svc", Instance: "inst-1", Node: "node-01",
		Addr: c.regs[1].Instance().Addr, OldStatus: "healthy", NewStatus: "degraded", Reason: "self-reported", Time: ev.Time}, ev)
	assert.WithinDuration(t, time.Now(), ev.Time, 10*time.Second)

	// The stream ends when the node stops.
	require.NoError(t, c.nodes[0].Shutdown())
	_, err = rd.ReadString(0)
	require.Error(t, err) // io.EOF once the handler returns
}
