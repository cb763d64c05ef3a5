// Fuzz targets for every gossip decoder: whole frames, records, heartbeat batches, compact heartbeats, states and leave notices.
package wire

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// seedValues returns valid messages of every type, and some that decode
// but break a rule.
func seedValues() []any {
	r, tomb := goodRecord(), goodRecord()
	tomb.Addr, tomb.Deleted, tomb.Meta, tomb.NonIdempotent, tomb.Seq = "", true, nil, nil, 13
	minimal := Record{Service: "s", ID: "i", Node: "n", Addr: "[::1]:1"}
	big := goodRecord()
	big.Meta = bigMeta(40)
	bad := goodRecord()
	bad.Incarnation, bad.Seq, bad.Role = -1, MaxSeq+1, 7
	return []any{
		&r, &tomb, &minimal, &big, &bad,
		&Record{Service: "s", ID: "i", Node: "n", Addr: "h:1", Meta: map[string]string{}, NonIdempotent: []string{}},
		&Record{Service: "s", ID: "i", Node: "n", Addr: "h:1", Meta: map[string]string{"k": strings.Repeat("v", 300)}},
		ptr(goodBatch()), ptr(smallBeats(1)), ptr(smallBeats(20)), &HeartbeatBatch{Node: "n"},
		&HeartbeatBatch{Node: "n", Beats: []Heartbeat{{Service: "s", ID: "i", Incarnation: MaxIncarnation, Seq: MaxSeq, Status: 3}}},
		&State{Node: "n", Records: []Record{r, tomb, minimal}}, &State{Node: "n"}, &State{Node: "n", Records: []Record{bad}},
		&ClaimBatch{Node: "n", Claims: []Claim{{Resource: "order-1", Service: "s", ID: "i", Node: "n", Gen: 2, Time: 9}}},
		&ClaimBatch{Node: "n", Claims: []Claim{{Resource: "a/b", Service: "s", ID: "i", Node: "m", Gen: 0, Released: true}}},
		&State{Node: "n", Records: []Record{r}, Claims: []Claim{{Resource: "r", Service: "s", ID: "i", Node: "n", Gen: 1}}},
		&Leave{Node: "n", Addr: "10.0.0.1:7946", Time: 1}, &Leave{Node: "n"}, &Leave{Node: strings.Repeat("n", 200), Addr: "h:1"},
		&Beats{Node: "n", Life: 3, Packed: PackBeats(someBeats())}, &Beats{Node: "n", Life: 1},
		&Beats{Node: "n", Life: 0, Packed: []byte{beatSeq, 1, 2}},
		&Beats{Node: "n", Life: 3, Packed: PackBeats(someBeats()), Round: 77},
		&Want{From: "n", Origins: []WantOrigin{{Node: "m", Life: 3, Round: 9}, {Node: "o"}}},
		&Want{From: "n"}, &Want{From: "n", Origins: make([]WantOrigin, MaxWantOrigins+1)},
	}
}

func ptr[T any](v T) *T { return &v }

// seeds returns the encodings of seedValues of type t, bodies only if
// body is set.
func seeds(f *testing.F, t MsgType, body bool) [][]byte {
	var out [][]byte
	for _, v := range seedValues() {
		b, err := Encode(v)
		require.NoError(f, err)
		if t != 0 && MsgType(b[1]) != t {
			continue
		}
		if body {
			b = b[frameSize:]
		}
		out = append(out, b)
	}
	return out
}

// checkMessage decodes a framed message as a node receiving it would, and
// checks that nothing panics and that a message that decodes and
// validates encodes to the same value, of the size Validate computed.
func checkMessage(t *testing.T, b []byte) {
	m, err := Decode(b)
	if err != nil {
		require.False(t, errors.Is(err, errPanic), "decoder panicked: %v", err)
		return
	}
	if err := m.Validate(Limits{}); err != nil {
		require.ErrorIs(t, err, ErrInvalid)
		return
	}
	v := value(&m)
	enc, err := Encode(v)
	require.NoError(t, err)
	switch v := v.(type) {
	case *Record:
		require.Equal(t, recordSize(v), len(enc))
	case *HeartbeatBatch:
		require.Equal(t, batchSize(v), len(enc))
	}
	again, err := Decode(Direct(enc))
	require.NoError(t, err)
	require.True(t, again.Direct)
	require.Equal(t, v, value(&again))
	require.NoError(t, again.Validate(Limits{}))
}

// value returns the one value m carries.
func value(m *Message) any {
	switch {
	case m.Record != nil:
		return m.Record
	case m.Heartbeats != nil:
		return m.Heartbeats
	case m.Claims != nil:
		return m.Claims
	case m.Leave != nil:
		return m.Leave
	case m.Beats != nil:
		return m.Beats
	case m.Want != nil:
		return m.Want
	}
	return m.State
}

// FuzzWant feeds requests for missed heartbeats, as sent directly (the
// only way they travel) or not.
func FuzzWant(f *testing.F) {
	for _, b := range seeds(f, MsgWant, true) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, body []byte, direct bool) {
		checkMessage(t, withFrame(MsgWant, direct, body))
	})
}

// FuzzClaims feeds claim batches, as gossiped or sent directly.
func FuzzClaims(f *testing.F) {
	for _, b := range seeds(f, MsgClaims, true) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, body []byte, direct bool) {
		checkMessage(t, withFrame(MsgClaims, direct, body))
	})
}

// FuzzDecode feeds whole frames: any version, type and flags.
func FuzzDecode(f *testing.F) {
	for _, b := range seeds(f, 0, false) {
		f.Add(b)
		f.Add(Direct(b))
	}
	f.Add([]byte{})
	f.Add([]byte{Version, 9})
	f.Fuzz(checkMessage)
}

// FuzzRecord feeds record messages, as gossiped or sent directly.
func FuzzRecord(f *testing.F) {
	for _, b := range seeds(f, MsgRecord, true) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, body []byte, direct bool) {
		checkMessage(t, withFrame(MsgRecord, direct, body))
	})
}

// FuzzHeartbeats feeds heartbeat batches, as gossiped or sent directly.
func FuzzHeartbeats(f *testing.F) {
	for _, b := range seeds(f, MsgHeartbeats, true) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, body []byte, direct bool) {
		checkMessage(t, withFrame(MsgHeartbeats, direct, body))
	})
}

// FuzzBeats feeds compact heartbeats, as gossiped or sent directly.
func FuzzBeats(f *testing.F) {
	for _, b := range seeds(f, MsgBeats, true) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, body []byte, direct bool) {
		checkMessage(t, withFrame(MsgBeats, direct, body))
	})
}

// FuzzState feeds push/pull states.
func FuzzState(f *testing.F) {
	for _, b := range seeds(f, MsgState, true) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkMessage(t, withFrame(MsgState, false, body))
	})
}

// FuzzLeave feeds leave notices, as gossiped or sent directly.
func FuzzLeave(f *testing.F) {
	for _, b := range seeds(f, MsgLeave, true) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, body []byte, direct bool) {
		checkMessage(t, withFrame(MsgLeave, direct, body))
	})
}

func withFrame(t MsgType, direct bool, body []byte) []byte {
	b := append([]byte{Version, byte(t)}, body...)
	if direct {
		b[1] |= FlagDirect
	}
	return b
}
