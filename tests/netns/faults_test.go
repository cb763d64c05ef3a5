//go:build linux

// This file holds the fault scenarios: a node cut off and reconnected,
// packet loss on every link, and latency on one link.

package netns

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault scenario settings.
const (
	partitionFor  = 6 * time.Second // twice the heartbeat timeout
	recoverLimit  = 60 * time.Second
	lossPercent   = 10
	latency       = 200 * time.Millisecond
	latencyPhase  = 10 * time.Second
	beforeAndPast = 2 * time.Second // calls before a fault and after it is gone
)

// firstEvent returns the first of events for which match is true.
func firstEvent(events []event, match func(event) bool) (event, bool) {
	i := slices.IndexFunc(events, match)
	if i < 0 {
		return event{}, false
	}
	return events[i], true
}

// TestPartitionOneNode cuts n3 off for partitionFor, longer than the
// heartbeat timeout, then reconnects it. Every other agent must judge
// n3's instance unhealthy about a heartbeat timeout after the cut (not
// before its last heartbeat could have aged that much) and healthy again
// after the heal. The load client on another host must see no failed
// idempotent call throughout; a non-idempotent call (onceMethod) that was
// sent to n3 may fail, since whether it ran there cannot be known and it
// must not run twice, but no other.
func TestPartitionOneNode(t *testing.T) {
	c := newCluster(t)
	victim := c.lab.host("n3")
	id := instanceID(victim.name)
	var observers []*proc
	for _, a := range c.agents {
		if a != c.agent(victim.name) {
			observers = append(observers, a)
		}
	}
	ld := c.startLoad(0)
	hold(beforeAndPast)

	down := time.Now()
	c.lab.partition(victim)
	detected := map[string]event{}
	ok := waitFor(partitionFor, func() bool {
		for _, a := range observers {
			if _, seen := detected[a.Name]; seen {
				continue
			}
			if e, found := firstEvent(c.events(a), func(e event) bool {
				return e.instance == id && e.kind == "status-changed" && e.status == "unhealthy" && !e.at.Before(down)
			}); found {
				detected[a.Name] = e
			}
		}
		return len(detected) == len(observers)
	})
	require.True(t, ok, "every other agent judges %s unhealthy within %v of the cut; seen: %v", id, partitionFor, detected)
	hold(partitionFor - time.Since(down))

	up := time.Now()
	c.lab.heal(victim)
	recovered := map[string]event{}
	ok = waitFor(recoverLimit, func() bool {
		for _, a := range observers {
			if _, seen := recovered[a.Name]; seen {
				continue
			}
			if e, found := firstEvent(c.events(a), func(e event) bool {
				return e.instance == id && e.status == "healthy" && e.kind != "deregistered" && !e.at.Before(up)
			}); found && c.state(a, id) == "healthy" {
				recovered[a.Name] = e
			}
		}
		return len(recovered) == len(observers)
	})
	require.True(t, ok, "every other agent judges %s healthy again within %v of the heal; seen: %v", id, recoverLimit, recovered)
	healed := waitFor(recoverLimit-time.Since(up), func() bool {
		for i := range agentCount {
			if c.state(c.agent(victim.name), instanceID(fmt.Sprintf("n%d", i+1))) != "healthy" {
				return false
			}
		}
		return true
	})
	assert.True(t, healed, "%s sees every instance healthy again after the heal", victim.name)
	hold(beforeAndPast)
	total := ld.finish(t)

	for _, a := range observers {
		e, r := detected[a.Name], recovered[a.Name]
		t.Logf("%s: %s unhealthy %v after the cut (%s), healthy %v after the heal (%s %s)",
			a.Name, id, e.at.Sub(down).Round(time.Millisecond), e.reason, r.at.Sub(up).Round(time.Millisecond), r.kind, r.reason)
		// The newest heartbeat an observer holds at the cut left n3 up to
		// an interval before it and rode gossip for up to a round or two,
		// and ages are checked every healthCheck: allow two intervals
		// early, and late a check plus a second for a busy two-core
		// machine.
		assert.GreaterOrEqual(t, e.at.Sub(down), hbTimeout-2*hbInterval, "%s judged %s before its heartbeats could have timed out", a.Name, id)
		assert.LessOrEqual(t, e.at.Sub(down), hbTimeout+healthCheck+time.Second, "%s judged %s late", a.Name, id)
	}
	t.Logf("load through the partition: %s; worst second: %s", total, worstSecond(ld.reports()))
	failedOnce := 0
	for _, call := range ld.calls(t) {
		if call.Err == "" {
			continue
		}
		if call.Method == onceMethod && onlyTried(call.Err, id) {
			failedOnce++
			continue
		}
		t.Errorf("call %s (%s) failed, and not as a non-idempotent call sent to %s: %s", call.MessageID, call.Method, id, call.Err)
	}
	t.Logf("%d non-idempotent calls sent to %s failed rather than risk a second run", failedOnce, id)
	c.checkLeft(ld)
	c.checkDelivery(ld)
}

// onlyTried reports whether a CallWithFailover error names instance id,
// and no other count instance, as tried.
func onlyTried(err, id string) bool {
	for i := range agentCount {
		if other := instanceID(fmt.Sprintf("n%d", i+1)); other != id && strings.Contains(err, other+":") {
			return false
		}
	}
	return strings.Contains(err, id+":")
}

// TestPacketLossEveryLink drops lossPercent of the packets on every link
// for lossDuration (AEGIS_NETNS_LOSS_DURATION, 30s by default) while the
// load client calls. No agent may judge any instance unhealthy (a
// heartbeat-timeout or node-failed verdict would be false: every node is
// up) and no call may fail.
//
// The load client starts before the loss, with its connections made: a
// call's dial is bounded by the attempt timeout (1 s here), which is also
// when Linux first retransmits a lost SYN, so a client that starts under
// loss can fail calls while its first dials time out.
func TestPacketLossEveryLink(t *testing.T) {
	requireTC(t)
	d := lossDuration(t)
	c := newCluster(t)
	ld := c.startLoad(0)
	start := time.Now()
	remove := c.lab.addLoss(lossPercent)
	hold(d)
	total := ld.finish(t)
	stats := remove()
	removed := time.Now()

	sent, dropped := 0, 0
	for name, s := range stats {
		sent, dropped = sent+s[0], dropped+s[1]
		assert.Positive(t, s[1], "the link of %s dropped packets", name)
	}
	require.Positive(t, sent+dropped, "packets crossed the links")
	ratio := float64(dropped) / float64(sent+dropped)
	t.Logf("loss held %v: %d of %d packets into the links dropped (%.1f%%)", d.Round(time.Second), dropped, sent+dropped, 100*ratio)
	assert.InDelta(t, lossPercent/100.0, ratio, 0.03, "measured loss ratio")
	t.Logf("load under loss: %s; worst second: %s", total, worstSecond(ld.reports()))
	// Every instance is equally reachable, so the balancer should spread
	// calls evenly; passive ejection can concentrate them.
	share, at := largestShare(ld.reports())
	t.Logf("largest share of one second's answers from one instance: %.0f%% (%s)", 100*share, at)
	assert.Zero(t, total.Errors, "calls failed: %v", total.ErrorSamples)

	// A verdict caused by the loss would come at most a heartbeat timeout
	// after it ended.
	hold(hbTimeout + healthCheck - time.Since(removed))
	t.Logf("agents logged %d warnings or errors during and after the loss", c.warnings(start))
	assert.Empty(t, c.verdicts(start), "no instance is judged unhealthy while every node is up")
	c.checkDelivery(ld)
}

// TestLatencyOneLink delays every frame one host sends by latency: first a
// server's (n3), then the client's own. Calls must all succeed; the p99
// of each phase is reported, and with the client's link slowed every call
// must take at least the delay, which shows the delay is in place. No
// agent may judge any instance unhealthy.
func TestLatencyOneLink(t *testing.T) {
	c := newCluster(t)
	start := time.Now()

	remove := c.lab.addDelay(c.lab.host("n3"), latency)
	serverLoad := c.startLoad(latencyPhase)
	server := serverLoad.finish(t)
	remove()
	t.Logf("%v on n3's link: %s; highest p99 of a second after the first: %.1fms", latency, server, steadyP99(serverLoad.reports()))
	assert.Zero(t, server.Errors, "calls failed with n3's link slowed: %v", server.ErrorSamples)

	remove = c.lab.addDelay(c.client, latency)
	clientLoad := c.startLoad(latencyPhase)
	client := clientLoad.finish(t)
	remove()
	t.Logf("%v on the client's link: %s; highest p99 of a second after the first: %.1fms", latency, client, steadyP99(clientLoad.reports()))
	assert.Zero(t, client.Errors, "calls failed with the client's link slowed: %v", client.ErrorSamples)
	assert.GreaterOrEqual(t, client.P50Ms, float64(latency/time.Millisecond), "calls through the slowed link take at least the delay")

	assert.Empty(t, c.verdicts(start), "no instance is judged unhealthy for a slow link")
	c.checkLeft(serverLoad)
	c.checkLeft(clientLoad)
	c.checkDelivery(serverLoad, clientLoad)
}
