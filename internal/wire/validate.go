// Validation of decoded gossip messages against the protocol's rules and Limits.
package wire

import (
	"fmt"
	"net/netip"
	"strings"
)

// Enum ceilings, matching the root package's Role and Status.
const (
	maxRole      = 2 // RoleStandby
	maxStatus    = 3 // StatusDraining
	maxPromotion = 1 // PromoteAlways
)

// Validate reports whether m's record, batch or state may be stored; see
// the Validate method of each.
func (m *Message) Validate(l Limits) error {
	switch {
	case m.Record != nil:
		return m.Record.Validate(l)
	case m.Heartbeats != nil:
		return m.Heartbeats.Validate(l)
	case m.State != nil:
		return m.State.Validate(l)
	case m.Claims != nil:
		return m.Claims.Validate(l)
	case m.Leave != nil:
		return m.Leave.Validate()
	case m.Beats != nil:
		return m.Beats.Validate()
	case m.Want != nil:
		return m.Want.Validate()
	}
	return fmt.Errorf("%w: empty message", ErrInvalid)
}

// Validate reports whether r may be stored: names follow the rules of
// the root package's Register (see ValidName), Addr is a host:port (empty
// only in a tombstone), Role and Status are known values, metadata and
// NonIdempotent stay within l, the version is at most (MaxIncarnation,
// MaxSeq) with a non-negative incarnation, and the record encodes to at
// most l.MaxRecordSize bytes. Time is informational and not checked. The
// error wraps ErrInvalid and names the field.
func (r *Record) Validate(l Limits) error {
	l = l.orDefault()
	if err := r.check(&l); err != nil {
		return fmt.Errorf("%w: record %s/%s: %s", ErrInvalid, clip(r.Service), clip(r.ID), err)
	}
	return nil
}

// Validate reports whether b may be applied: Node is a valid node name, it
// holds at most l.MaxBeats heartbeats, encodes to at most l.MaxBatchSize
// bytes, and every heartbeat names a valid service and instance ID, has
// a version within (MaxIncarnation, MaxSeq) and a known Status. Time is
// informational and not checked. The error wraps ErrInvalid.
func (b *HeartbeatBatch) Validate(l Limits) error {
	l = l.orDefault()
	if err := b.check(&l); err != nil {
		return fmt.Errorf("%w: heartbeats from %s: %s", ErrInvalid, clip(b.Node), err)
	}
	return nil
}

// Validate reports whether s may be merged: Node is a valid node name, it
// holds at most l.MaxStateRecords records, and every record passes
// Record.Validate. The error wraps ErrInvalid and names the first bad
// record by index.
func (s *State) Validate(l Limits) error {
	l = l.orDefault()
	if !ValidName(s.Node, MaxNameLen) {
		return fmt.Errorf("%w: state: Node %s: %s", ErrInvalid, clip(s.Node), nameRule)
	}
	if len(s.Records) > l.MaxStateRecords {
		return fmt.Errorf("%w: state from %s: %s", ErrInvalid, clip(s.Node), tooMany("Records", len(s.Records), l.MaxStateRecords))
	}
	for i := range s.Records {
		r := &s.Records[i]
		if err := r.check(&l); err != nil {
			return fmt.Errorf("%w: state from %s: Records[%d] %s/%s: %s", ErrInvalid, clip(s.Node), i, clip(r.Service), clip(r.ID), err)
		}
	}
	if len(s.Claims) > l.MaxStateClaims {
		return fmt.Errorf("%w: state from %s: %s", ErrInvalid, clip(s.Node), tooMany("Claims", len(s.Claims), l.MaxStateClaims))
	}
	for i := range s.Claims {
		if err := s.Claims[i].check(); err != nil {
			return fmt.Errorf("%w: state from %s: Claims[%d] %s: %s", ErrInvalid, clip(s.Node), i, clip(s.Claims[i].Resource), err)
		}
	}
	return nil
}

// Validate reports whether a leave notice may be applied: Node is a
// valid node name and Addr a host:port. Time is informational and not
// checked. Its size is bounded by the decoder (Limits.MaxRecordSize). The
// error wraps ErrInvalid.
func (v *Leave) Validate() error {
	switch {
	case !ValidName(v.Node, MaxNameLen):
		return fmt.Errorf("%w: leave: Node %s: %s", ErrInvalid, clip(v.Node), nameRule)
	case !validAddr(v.Addr):
		return fmt.Errorf("%w: leave from %s: Addr %s: not a host:port of at most %d bytes", ErrInvalid, clip(v.Node), clip(v.Addr), MaxAddrLen)
	}
	return nil
}

// Rules, as the error details state them.
const (
	serviceRule = "use 1-128 letters, digits, '.', '_' or '-'"
	nameRule    = "use 1-128 letters, digits, '.', '_', '-' or ':'"
	methodRule  = "use 1-128 bytes"
)

// check applies Record.Validate's rules to r; l has its defaults filled in.
func (r *Record) check(l *Limits) error {
	switch {
	case !validService(r.Service):
		return fmt.Errorf("Service: %s", serviceRule)
	case !ValidName(r.ID, MaxNameLen):
		return fmt.Errorf("ID: %s", nameRule)
	case !ValidName(r.Node, MaxNameLen):
		return fmt.Errorf("Node %s: %s", clip(r.Node), nameRule)
	case r.Addr == "" && !r.Deleted:
		return fmt.Errorf("Addr: empty in a live record")
	case r.Addr != "" && !validAddr(r.Addr):
		return fmt.Errorf("Addr %s: not a host:port of at most %d bytes", clip(r.Addr), MaxAddrLen)
	case r.Role > maxRole:
		return fmt.Errorf("Role %d: not 0 to %d", r.Role, maxRole)
	case r.Status > maxStatus:
		return fmt.Errorf("Status %d: not 0 to %d", r.Status, maxStatus)
	case r.Group != "" && !validService(r.Group):
		return fmt.Errorf("Group %s: %s", clip(r.Group), serviceRule)
	case r.Promotion > maxPromotion:
		return fmt.Errorf("Promotion %d: not 0 to %d", r.Promotion, maxPromotion)
	case r.Epoch > MaxEpoch:
		return fmt.Errorf("Epoch %d: more than MaxEpoch (%d)", r.Epoch, MaxEpoch)
	case r.Index > MaxIndex:
		return fmt.Errorf("Index %d: more than MaxIndex (%d)", r.Index, MaxIndex)
	}
	if err := checkVersion(r.Incarnation, r.Seq); err != nil {
		return err
	}
	if err := checkMeta(r.Meta, l); err != nil {
		return err
	}
	if err := checkMethods(r.NonIdempotent, l); err != nil {
		return err
	}
	if err := CheckEndpoints(r.Endpoints); err != nil {
		return err
	}
	if n := recordSize(r); n > l.MaxRecordSize {
		return fmt.Errorf("encodes to %d bytes, more than %d", n, l.MaxRecordSize)
	}
	return nil
}

// check applies HeartbeatBatch.Validate's rules to b; l has its defaults
// filled in.
func (b *HeartbeatBatch) check(l *Limits) error {
	if !ValidName(b.Node, MaxNameLen) {
		return fmt.Errorf("Node: %s", nameRule)
	}
	if len(b.Beats) > l.MaxBeats {
		return tooMany("Beats", len(b.Beats), l.MaxBeats)
	}
	for i := range b.Beats {
		h := &b.Beats[i]
		var err error
		switch {
		case !validService(h.Service):
			err = fmt.Errorf("Service: %s", serviceRule)
		case !ValidName(h.ID, MaxNameLen):
			err = fmt.Errorf("ID: %s", nameRule)
		case h.Status > maxStatus:
			err = fmt.Errorf("Status %d: not 0 to %d", h.Status, maxStatus)
		case h.Role > maxRole:
			err = fmt.Errorf("Role %d: not 0 to %d", h.Role, maxRole)
		case h.Epoch > MaxEpoch:
			err = fmt.Errorf("Epoch %d: more than MaxEpoch (%d)", h.Epoch, MaxEpoch)
		default:
			err = checkVersion(h.Incarnation, h.Seq)
		}
		if err != nil {
			return fmt.Errorf("Beats[%d] %s/%s: %w", i, clip(h.Service), clip(h.ID), err)
		}
	}
	if n := batchSize(b); n > l.MaxBatchSize {
		return fmt.Errorf("encodes to %d bytes, more than %d", n, l.MaxBatchSize)
	}
	return nil
}

func checkVersion(inc int64, seq uint64) error {
	switch {
	case inc < 0:
		return fmt.Errorf("Incarnation %d: negative", inc)
	case inc > MaxIncarnation:
		return fmt.Errorf("Incarnation %d: more than MaxIncarnation (%d)", inc, MaxIncarnation)
	case seq > MaxSeq:
		return fmt.Errorf("Seq %d: more than MaxSeq (%d)", seq, MaxSeq)
	}
	return nil
}

func checkMeta(meta map[string]string, l *Limits) error {
	if len(meta) > l.MaxMetaEntries {
		return tooMany("Meta", len(meta), l.MaxMetaEntries)
	}
	for k, v := range meta {
		if !ValidName(k, MaxNameLen) {
			return fmt.Errorf("Meta key %s: %s", clip(k), nameRule)
		}
		if len(v) > l.MaxMetaValueLen {
			return fmt.Errorf("Meta[%s]: value of %d bytes, more than %d", k, len(v), l.MaxMetaValueLen)
		}
	}
	return nil
}

func checkMethods(methods []string, l *Limits) error {
	if len(methods) > l.MaxNonIdempotent {
		return tooMany("NonIdempotent", len(methods), l.MaxNonIdempotent)
	}
	for i, m := range methods {
		if m == "" || len(m) > MaxNameLen {
			return fmt.Errorf("NonIdempotent[%d] %s: %s", i, clip(m), methodRule)
		}
	}
	return nil
}

func tooMany(field string, n, limit int) error {
	return fmt.Errorf("%s: %d entries, more than %d", field, n, limit)
}

// validService reports whether s is a valid service name: a ValidName
// without ':'.
func validService(s string) bool {
	return ValidName(s, MaxNameLen) && !strings.Contains(s, ":")
}

// validAddr reports whether s is a plausible "host:port" to dial: at most
// MaxAddrLen bytes, a port from 1 to 65535 in decimal, and a host that is
// an IP address or a DNS name.
func validAddr(s string) bool {
	if len(s) > MaxAddrLen {
		return false
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || !validPort(s[i+1:]) {
		return false
	}
	host := s[:i]
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		// Brackets only around an IPv6 address, as net.JoinHostPort puts them.
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		return err == nil && a.Is6()
	}
	if strings.IndexByte(host, ':') >= 0 {
		return false // an IPv6 address without brackets
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return validHostname(host)
}

func validPort(p string) bool {
	if p == "" || len(p) > 5 || p[0] == '0' {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n <= 65535
}

// validHostname reports whether h is a DNS name of at most 253 bytes whose
// labels are 1-63 letters, digits, '-' or '_' (underscores occur in
// internal names), optionally ending in a dot.
func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// clip quotes s for an error message, cut to 40 bytes: the strings come
// from the network and end up in logs.
func clip(s string) string {
	const keep = 40
	if len(s) <= keep {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q...(%d bytes)", s[:keep], len(s))
}

// Endpoint limits: at most MaxEndpoints per instance, protocol names of the
// ValidName rule up to MaxEndpointName bytes, addresses up to
// MaxEndpointAddr bytes of printable ASCII without spaces.
const (
	MaxEndpoints    = 16
	MaxEndpointName = 32
	MaxEndpointAddr = 256
)

// CheckEndpoints applies the endpoint limits.
func CheckEndpoints(eps map[string]string) error {
	if len(eps) > MaxEndpoints {
		return tooMany("Endpoints", len(eps), MaxEndpoints)
	}
	for k, v := range eps {
		if !ValidName(k, MaxEndpointName) {
			return fmt.Errorf("Endpoints key %s: use 1-%d letters, digits, '.', '_', '-' or ':'", clip(k), MaxEndpointName)
		}
		if v == "" || len(v) > MaxEndpointAddr {
			return fmt.Errorf("Endpoints[%s]: use 1-%d bytes", k, MaxEndpointAddr)
		}
		for i := 0; i < len(v); i++ {
			if v[i] <= ' ' || v[i] >= 0x7f {
				return fmt.Errorf("Endpoints[%s] %s: printable ASCII without spaces only", k, clip(v))
			}
		}
	}
	return nil
}
