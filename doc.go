// This file holds no code: it describes how the package is organised, for
// maintainers.

package aegis

// How the code is organised
//
// A Node composes four parts, each with one job and a file of its own:
//
//   - registry (registry.go, health.go, heartbeat.go, eject.go, routing.go):
//     what this node knows about every instance in the cluster, merged
//     from gossip, with health verdicts, passive ejection and the immutable
//     per-service routing snapshots (rebuilt lazily on the first read after
//     a change). It emits Events through the event bus (events.go).
//   - gossiper (gossip.go, outbox.go, members.go, beats.go, repair.go):
//     memberlist and what travels through it: the record broadcast queue,
//     direct sends (announcements twice, a moment apart; each heartbeat
//     round once to every member), heartbeat repair (every member's
//     newest round kept, and asked of two others when one is missed),
//     pulls, the copies of live peers and the failed nodes it keeps
//     rejoining. Received messages are decoded and written into the
//     registry.
//   - caller (caller.go, failover.go, classify.go): outgoing calls. pick
//     reads a routing snapshot, attempt makes one call, classify turns its
//     result into an outcome once, and outcomeRules says what may follow
//     (same-instance retry, failover, ejection). The retry budget lives in
//     internal/budget.
//   - callServer (server.go): incoming calls to local instances: lookup in
//     a sync.Map of served instances, dedup by message ID, handler
//     runs with panics turned into errors, in-flight counting for drains.
//
// Node itself (aegis.go) owns the local registrations (registry.go:
// Register, Deregister), the heartbeat rounds (heartbeat.go) and the
// lifecycle: New = withDefaults (config.go) + newNode (construction) +
// start (goroutines); Leave drains and deregisters, then shuts down.
//
// Role groups and resources sit on the registry. roles.go computes each
// role group from the registry's entries (buildGroup: the winning active,
// standbys in promotion order, the epoch), which routing and Roles read.
// promote.go is what a node does for its own members only: each member's
// roleState (role, epoch, lease, promises) is decided by its node, told to
// peers in its heartbeats, and defended in round trips over the call port
// (rolesService: lease and candidacy). resources.go keeps the newest claim
// per resource in the registry (under registry.mu), gossiped in claim
// batches and, a rotating part at a time, in push/pull.
//
// Observability reads the parts without owning any: telemetry.go holds the
// OpenTelemetry instruments each part records into (Enabled checks keep
// the call path free without an SDK; the observable gauges' callback reads
// the registry and members at collection), tracing.go the call, attempt
// and server spans, logs.go the health log lines, admin.go and
// routeinfo.go the read-only JSON views of AdminHandler and Node.Route.
//
// Goroutines, counted by Node.wg (started through Node.spawn) and stopped
// by Node.stopCh or by closing what they read; Shutdown waits for all:
//
//   - the call server's accept loop; internal/rpc's per-connection readers,
//     handler runs and monitor are counted by the rpc server, whose Close
//     (in Shutdown) waits for them;
//   - the gossiper's outbox loop and reconnect loop, its catch-up pull
//     after each Join and pulls triggered by unknown heartbeats;
//   - the heartbeat loop (when HeartbeatEnabled) and the health loop;
//   - the role loop (promote.go), its lease and candidacy rounds (each
//     waits for its own round trips) and the timers that wake it when a
//     won candidacy's margin has passed;
//   - one goroutine per Join (it returns when memberlist's join does).
//
// Each subscriber runs on a goroutine of its own, owned by the event bus
// (so does the health logger of logs.go, when the logger takes Info);
// memberlist runs its own goroutines. An AdminHandler's /events stream
// subscribes for as long as its request lasts.
//
// Lock order, outermost first (also written on Node): Node.hbMu →
// Node.mu → registry.mu → eventBus.mu → subscriber.mu. The gossiper's
// peersMu and failedNodes.mu are leaves.
//
// Clocks. Everything that decides or schedules something reads the node's
// clock (Config.clock, a fake one in tests): heartbeat and health tickers,
// the heartbeat timeout, reaping and tombstone expiry, ejection periods,
// dedup windows, the retry budget's per-second floor, failed-node aging
// and reconnect ticks, the outbox's repeat timer, the catch-up delay and
// the pull rate limit. The wall clock is read only where time is not ours
// to fake: durations measured for reports (Attempt.Duration), context
// deadlines (a call's pauses and deadline checks, drains and Leave, all
// bounded by the caller's ctx), and waits for memberlist's own progress,
// which runs on the wall clock.
