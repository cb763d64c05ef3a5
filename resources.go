// This file holds resource ownership: instances claim resource IDs
// (Registration.Claim, Transfer, Release), claims spread by gossip, and
// WithResource routes a call to the owner.

package aegis

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/aegisipc/aegis/internal/wire"
)

// Resource errors. Claim, Transfer and Release report per-resource
// failures in a *ClaimError, which errors.Is matches against each.
var (
	// ErrInvalidResource: a resource ID breaks the rule: 1-255 bytes, no
	// whitespace, none of / \ * ? " < > | # % & { } $ ! @ + = and the
	// backquote.
	ErrInvalidResource = errors.New("aegis: invalid resource ID")
	// ErrUnknownResource: no instance owns the resource (as this node
	// sees it), or its owner is not an instance of the service called.
	ErrUnknownResource = errors.New("aegis: unknown resource")
	// ErrNotOwner: Release of a resource another instance owns.
	ErrNotOwner = errors.New("aegis: not the owner of the resource")
	// ErrResourceLimit: the instance already owns
	// Config.MaxResourcesPerInstance resources, or this node knows
	// Config.MaxResources claims.
	ErrResourceLimit = errors.New("aegis: resource limit exceeded")
	// ErrResourceClaimed: Claim of a resource another instance owns; use
	// Transfer to take it over.
	ErrResourceClaimed = errors.New("aegis: resource owned by another instance")
)

// ClaimError lists the resources a Claim, Transfer or Release did not
// apply to, with why; the others succeeded.
type ClaimError struct {
	Failed map[string]error
}

func (e *ClaimError) Error() string {
	keys := slices.Sorted(maps.Keys(e.Failed))
	var b strings.Builder
	fmt.Fprintf(&b, "aegis: %d resource(s) failed", len(keys))
	for i, k := range keys {
		if i == 5 {
			fmt.Fprintf(&b, "; and %d more", len(keys)-i)
			break
		}
		fmt.Fprintf(&b, "; %q: %v", k, e.Failed[k])
	}
	return b.String()
}

// Unwrap returns every failure, so errors.Is(err, ErrResourceLimit) tells
// whether any resource hit the limit.
func (e *ClaimError) Unwrap() []error { return slices.Collect(maps.Values(e.Failed)) }

// Claim makes the instance the owner of each resource no other instance
// owns (claiming one it already owns is a no-op). The first claim wins:
// when two instances claim a free resource at once, every node settles on
// the earlier claim (then the smaller service and instance ID), and the
// other's claim is undone cluster-wide within a gossip round. Claims spread
// by gossip; calls WithResource go to the owner. An instance owns at most
// Config.MaxResourcesPerInstance resources. Its claims end when it is
// deregistered, its node leaves, or it is reaped. Failures are reported per
// resource in a *ClaimError (ErrInvalidResource, ErrResourceClaimed,
// ErrResourceLimit); the other resources are claimed.
func (r *Registration) Claim(ctx context.Context, resources ...string) error {
	return r.n.changeClaims(ctx, r, resources, claimFree)
}

// Transfer makes the instance the owner of each resource, taking it over
// from its current owner if it has one (a forced transfer, for rebalancing
// or when the owner is stuck). Errors as for Claim, without
// ErrResourceClaimed.
func (r *Registration) Transfer(ctx context.Context, resources ...string) error {
	return r.n.changeClaims(ctx, r, resources, claimForce)
}

// Release gives up the instance's ownership of each resource. Failures
// are per resource in a *ClaimError: ErrUnknownResource (nobody owns it),
// ErrNotOwner (another instance does), ErrInvalidResource.
func (r *Registration) Release(ctx context.Context, resources ...string) error {
	return r.n.changeClaims(ctx, r, resources, claimRelease)
}

// Resources returns the resources the instance owns as this node sees
// them, sorted.
func (r *Registration) Resources() []string {
	return r.n.reg.ownedBy(r.key)
}

// Owner returns the instance that owns resource as this node sees it, in
// any status (WithResource calls fail while it is unhealthy).
func (n *Node) Owner(resource string) (Instance, bool) {
	inst, err := n.reg.owner("", resource)
	return inst, inst.ID != "" && (err == nil || errors.Is(err, ErrInstanceUnavailable))
}

// WithResource sends the call to the instance of the service that owns
// resource (Registration.Claim). The call fails with ErrUnknownResource
// when no instance of the service owns it, and with ErrInstanceUnavailable
// when the owner is unhealthy or draining. CallWithFailover does not move
// such a call to another instance (only the owner may serve it); it
// retries the owner as Call does.
func WithResource(id string) CallOption {
	return func(o *callOptions) { o.resource = id }
}

// claimOp is what changeClaims does to each resource.
type claimOp int

const (
	claimFree    claimOp = iota // claim if nobody owns it
	claimForce                  // claim even from another owner
	claimRelease                // give up
)

func (n *Node) changeClaims(ctx context.Context, r *Registration, resources []string, op claimOp) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.done.Load() {
		return fmt.Errorf("%w: instance %s is deregistered", ErrShutdown, r.key)
	}
	failed := make(map[string]error)
	var valid []string
	for _, res := range resources {
		if !wire.ValidResource(res) {
			failed[res] = fmt.Errorf("%w: %q: use 1-%d bytes, no whitespace, none of / \\ * ? \" < > | # %% & { } $ ! @ + = `",
				ErrInvalidResource, clipResource(res), wire.MaxResourceLen)
			continue
		}
		valid = append(valid, res)
	}
	made := n.reg.changeLocalClaims(r.key, valid, op, failed)
	n.announceClaims(ctx, made)
	if len(failed) > 0 {
		return &ClaimError{Failed: failed}
	}
	return nil
}

func clipResource(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// announceClaims gossips claims in batches that fit a gossip packet, each
// also sent straight to every member. A large Claim waits, within ctx, for
// room in the direct sends rather than leave batches to push/pull (which
// carries older claims only slowly, see claimParts); what ctx cuts short
// goes by push/pull.
func (n *Node) announceClaims(ctx context.Context, claims []wire.Claim) {
	limits := wire.DefaultLimits()
	for len(claims) > 0 {
		size, k := wire.ClaimBatchOverhead(n.name), 0
		for k < len(claims) && k < limits.MaxClaims && (k == 0 || size+wire.ClaimSize(&claims[k]) <= limits.MaxBatchSize) {
			size += wire.ClaimSize(&claims[k])
			k++
		}
		batch := wire.ClaimBatch{Node: n.name, Claims: claims[:k]}
		claims = claims[k:]
		msg, err := wire.Encode(&batch)
		if err != nil {
			n.log.Error("encode claims", "err", err)
			continue
		}
		n.gossip.announceWait(ctx, claimBatchName(&batch), msg)
	}
}

// claimBatchName names a claim batch in the broadcast queue.
func claimBatchName(b *wire.ClaimBatch) string {
	return "c:" + b.Node + "/" + b.Claims[0].Resource
}

// claimEntry is the newest claim of one resource this node knows.
type claimEntry struct {
	c  wire.Claim
	at time.Time // local clock when stored
}

func ownerOf(c *wire.Claim) instKey { return instKey{c.Service, c.ID} }

// changeLocalClaims applies op to resources for the local instance k and
// returns the claims to announce; failures go into failed.
func (r *registry) changeLocalClaims(k instKey, resources []string, op claimOp, failed map[string]error) []wire.Claim {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clk.Now()
	var made []wire.Claim
	for _, res := range resources {
		c, err := r.localClaimLocked(k, res, op, now)
		switch {
		case err != nil:
			failed[res] = err
		case c != nil:
			if r.applyClaimLocked(c, now) {
				made = append(made, *c)
			} else {
				failed[res] = fmt.Errorf("%w: node %s already knows %d claims (Config.MaxResources)", ErrResourceLimit, r.self, len(r.claims))
			}
		}
	}
	return made
}

// localClaimLocked returns the claim or release op makes of res for k, nil
// when there is nothing to do.
func (r *registry) localClaimLocked(k instKey, res string, op claimOp, now time.Time) (*wire.Claim, error) {
	cur := r.claims[res]
	live := cur != nil && !cur.c.Released
	if op == claimRelease {
		switch {
		case !live:
			return nil, fmt.Errorf("%w: %q", ErrUnknownResource, res)
		case ownerOf(&cur.c) != k:
			return nil, fmt.Errorf("%w: %q is owned by %s", ErrNotOwner, res, ownerOf(&cur.c))
		}
		rel := cur.c
		rel.Released = true
		return &rel, nil
	}
	switch {
	case live && ownerOf(&cur.c) == k:
		return nil, nil
	case live && op == claimFree:
		return nil, fmt.Errorf("%w: %q is owned by %s", ErrResourceClaimed, res, ownerOf(&cur.c))
	case len(r.owned[k]) >= r.maxClaimsPer:
		return nil, fmt.Errorf("%w: %s already owns %d resources (Config.MaxResourcesPerInstance)", ErrResourceLimit, k, len(r.owned[k]))
	}
	gen := uint64(1)
	if cur != nil {
		gen = cur.c.Gen + 1
	}
	return &wire.Claim{Resource: res, Service: k.service, ID: k.id, Node: r.self, Gen: gen, Time: now.UnixNano()}, nil
}

// applyClaim merges a claim received from gossip. It reports whether it
// was new to this node (worth re-broadcasting). Only an instance's own node
// makes claims for it: a claim naming another node than the instance's,
// or this node for an instance it did not claim for here, is refused, as
// is a claim for an instance that was deleted.
func (r *registry) applyClaim(c *wire.Claim) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	owner := ownerOf(c)
	if e, ok := r.entries[owner]; ok && e.rec.Node != c.Node || c.Node == r.self {
		return false
	}
	if _, deleted := r.tombs[owner]; deleted && !c.Released {
		return false
	}
	return r.applyClaimLocked(c, r.clk.Now())
}

// applyClaimLocked stores c if it supersedes what this node knows of its
// resource and the caps allow it.
func (r *registry) applyClaimLocked(c *wire.Claim, now time.Time) bool {
	cur := r.claims[c.Resource]
	if cur != nil && !wire.ClaimNewer(c, &cur.c) {
		return false
	}
	owner := ownerOf(c)
	if !c.Released && (cur == nil && len(r.claims) >= r.maxClaims || len(r.owned[owner]) >= r.maxClaimsPer) {
		r.claimsRefused++
		return false
	}
	if cur != nil && !cur.c.Released {
		r.disown(ownerOf(&cur.c), c.Resource)
	}
	if !c.Released {
		set := r.owned[owner]
		if set == nil {
			set = make(map[string]struct{})
			r.owned[owner] = set
		}
		set[c.Resource] = struct{}{}
	}
	r.claims[c.Resource] = &claimEntry{c: *c, at: now}
	return true
}

func (r *registry) disown(k instKey, res string) {
	if set := r.owned[k]; set != nil {
		delete(set, res)
		if len(set) == 0 {
			delete(r.owned, k)
		}
	}
}

// releaseAllLocked ends every claim of an instance that is gone, on this
// node (every node does the same when it removes the instance).
func (r *registry) releaseAllLocked(k instKey, now time.Time) {
	for res := range r.owned[k] {
		if cur := r.claims[res]; cur != nil {
			cur.c.Released, cur.at = true, now
		}
	}
	delete(r.owned, k)
}

// sweepClaimsLocked forgets releases older than the reap timeout, and
// claims whose owner this node has not learned of within it.
func (r *registry) sweepClaimsLocked(now time.Time) {
	for res, cur := range r.claims {
		if now.Sub(cur.at) <= r.reap {
			continue
		}
		owner := ownerOf(&cur.c)
		if _, known := r.entries[owner]; cur.c.Released || !known {
			if !cur.c.Released {
				r.disown(owner, res)
			}
			delete(r.claims, res)
		}
	}
}

// owner returns the owner of res, which must be an instance of service
// (any service when service is ""), healthy or degraded.
func (r *registry) owner(service, res string) (Instance, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	cur := r.claims[res]
	if cur == nil || cur.c.Released {
		return Instance{}, fmt.Errorf("%w: no instance owns %q", ErrUnknownResource, res)
	}
	k := ownerOf(&cur.c)
	e, ok := r.entries[k]
	switch {
	case !ok:
		return Instance{}, fmt.Errorf("%w: %q is owned by %s, which this node does not know", ErrUnknownResource, res, k)
	case service != "" && k.service != service:
		return Instance{}, fmt.Errorf("%w: %q is owned by %s, not an instance of %q", ErrUnknownResource, res, k, service)
	case e.status == StatusUnhealthy || e.status == StatusDraining:
		return e.instance(), fmt.Errorf("%w: %q is owned by %s, which is %s", ErrInstanceUnavailable, res, k, e.status)
	}
	return e.instance(), nil
}

// ownedBy returns the resources k owns, sorted.
func (r *registry) ownedBy(k instKey) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Sorted(maps.Keys(r.owned[k]))
}

// claimState returns the claims for a push/pull: all of them, or those
// stored since since plus the part (slice of parts, by resource hash) due
// in this exchange.
func (r *registry) claimState(all bool, since time.Time, slice, parts uint64) []wire.Claim {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]wire.Claim, 0, min(len(r.claims), 64))
	for res, cur := range r.claims {
		if all || !cur.at.Before(since) || hashString(res)%parts == slice {
			out = append(out, cur.c)
		}
	}
	return out
}

// claimCycle is how long push/pull takes to carry every resource claim
// once, a part per exchange, besides carrying each new claim for one
// push/pull interval (claims are gossiped and sent to every member when
// made; this repairs what those missed).
const claimCycle = 10 * time.Minute

// claimParts is how many parts the claims are cut into so that, at one
// push/pull state every half interval (a node starts one exchange and
// answers about one per interval), a cycle takes about claimCycle.
func claimParts(pushPull time.Duration) uint64 {
	if pushPull <= 0 {
		return 1
	}
	return uint64(max(1, claimCycle/(pushPull/2)))
}
