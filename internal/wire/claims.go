// Resource claims on the wire: which instance owns a resource ID, their
// batches and their validation.
package wire

import (
	"fmt"
	"strings"
)

// MsgClaims carries a batch of resource claims and releases.
const MsgClaims MsgType = 5

// MaxResourceLen is the longest resource ID.
const MaxResourceLen = 255

// resourceForbidden are the characters a resource ID may not contain,
// besides whitespace and control characters.
const resourceForbidden = "/\\*?\"<>|#%&{}$!@+=`"

// ValidResource reports whether id is a valid resource ID: 1 to
// MaxResourceLen bytes, no whitespace or control characters, none of
// / \ * ? " < > | # % & { } $ ! @ + = and the backquote.
func ValidResource(id string) bool {
	if id == "" || len(id) > MaxResourceLen {
		return false
	}
	for _, c := range id {
		if c <= ' ' || c == 0x7f || c == 0x85 || c == 0xa0 || c == 0x1680 || c >= 0x2000 && c <= 0x200a ||
			c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000 || c == 0xfeff {
			return false
		}
	}
	return !strings.ContainsAny(id, resourceForbidden)
}

// Claim says that an instance (Service, ID, hosted by Node) owns Resource
// from generation Gen on, or, with Released, gave it up. Versions of a
// resource's claim are ordered by ClaimNewer.
type Claim struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Resource          string
	Service, ID, Node string
	Gen               uint64 // one more than the generation it took over (1 for a first claim)
	Time              int64  // the claiming node's clock at the claim (unix ns): the first claim of a generation wins
	Released          bool
}

// ClaimNewer reports whether claim a supersedes b (both of one resource): a
// higher generation; within one generation, the owner's release over its
// claim, and between two owners the earlier claim, then the smaller
// service and instance ID. Every node orders them the same way.
func ClaimNewer(a, b *Claim) bool {
	if a.Gen != b.Gen {
		return a.Gen > b.Gen
	}
	if a.Service == b.Service && a.ID == b.ID {
		return a.Released && !b.Released
	}
	if a.Time != b.Time {
		return a.Time < b.Time
	}
	if a.Service != b.Service {
		return a.Service < b.Service
	}
	return a.ID < b.ID
}

// ClaimBatch carries claims made or released on one node.
type ClaimBatch struct {
	_struct bool `codec:",toarray"` //nolint:unused // codec directive

	Node   string
	Claims []Claim
}

func (c *Claim) check() error {
	switch {
	case !ValidResource(c.Resource):
		return fmt.Errorf("Resource %s: use 1-%d bytes without whitespace or any of %s", clip(c.Resource), MaxResourceLen, resourceForbidden)
	case !validService(c.Service):
		return fmt.Errorf("Service: %s", serviceRule)
	case !ValidName(c.ID, MaxNameLen):
		return fmt.Errorf("ID: %s", nameRule)
	case !ValidName(c.Node, MaxNameLen):
		return fmt.Errorf("Node: %s", nameRule)
	case c.Gen == 0 || c.Gen > MaxEpoch:
		return fmt.Errorf("Gen %d: not 1 to %d", c.Gen, MaxEpoch)
	}
	return nil
}

// Validate reports whether b may be applied: Node is a valid node name, it
// holds at most l.MaxClaims claims, encodes to at most l.MaxBatchSize bytes
// (it travels in one gossip packet), and every claim is valid and made on
// Node. The error wraps ErrInvalid.
func (b *ClaimBatch) Validate(l Limits) error {
	l = l.orDefault()
	if !ValidName(b.Node, MaxNameLen) {
		return fmt.Errorf("%w: claims: Node %s: %s", ErrInvalid, clip(b.Node), nameRule)
	}
	if len(b.Claims) > l.MaxClaims {
		return fmt.Errorf("%w: claims from %s: %s", ErrInvalid, clip(b.Node), tooMany("Claims", len(b.Claims), l.MaxClaims))
	}
	for i := range b.Claims {
		c := &b.Claims[i]
		err := c.check()
		if err == nil && c.Node != b.Node {
			err = fmt.Errorf("Node %s: not the batch's node", clip(c.Node))
		}
		if err != nil {
			return fmt.Errorf("%w: claims from %s: Claims[%d] %s: %s", ErrInvalid, clip(b.Node), i, clip(c.Resource), err)
		}
	}
	return nil
}

// ClaimSize returns the encoded size of c inside a batch or a state.
func ClaimSize(c *Claim) int {
	return arrayHeaderSize(7) + strSize(c.Resource) + strSize(c.Service) + strSize(c.ID) + strSize(c.Node) +
		uintSize(c.Gen) + intSize(c.Time) + 1
}

// ClaimBatchOverhead is the encoded size of a batch from node besides its
// claims (frame, header, node, a claims header of up to 65,535).
func ClaimBatchOverhead(node string) int {
	return frameSize + arrayHeaderSize(2) + strSize(node) + 3
}
