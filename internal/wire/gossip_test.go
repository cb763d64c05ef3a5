// Round trips of every message type and the decoder's error classes.
package wire

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	rec := &Record{Service: "svc", ID: "a", Node: "n1", Addr: "127.0.0.1:1", Role: 1, Status: 2,
		Meta: map[string]string{"zone": "a"}, Incarnation: 7, Seq: 9, Time: 11, Deleted: true}
	b, err := Encode(rec)
	require.NoError(t, err)
	m, err := Decode(b)
	require.NoError(t, err)
	require.Equal(t, MsgRecord, m.Type)
	require.Equal(t, rec, m.Record)

	hbs := &HeartbeatBatch{Node: "n", Time: 3, Beats: []Heartbeat{{Service: "svc", ID: "a", Incarnation: 1, Seq: 2, Status: 0}}}
	b, err = Encode(hbs)
	require.NoError(t, err)
	m, err = Decode(b)
	require.NoError(t, err)
	require.Equal(t, hbs, m.Heartbeats)
	require.False(t, m.Direct)
	m, err = Decode(Direct(b))
	require.NoError(t, err)
	require.True(t, m.Direct)
	require.Equal(t, hbs, m.Heartbeats)

	st := &State{Node: "n", Records: []Record{*rec}}
	b, err = Encode(st)
	require.NoError(t, err)
	m, err = Decode(b)
	require.NoError(t, err)
	require.Equal(t, st, m.State)
}

func TestDecodeRejects(t *testing.T) {
	good, err := Encode(&Record{Service: "svc", ID: "a", Meta: map[string]string{"k": "v"}})
	require.NoError(t, err)
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"one byte", []byte{Version}, ErrTruncated},
		{"unknown version", append([]byte{99}, good[1:]...), ErrUnknownVersion},
		{"unknown type", []byte{Version, 100, 0x90}, ErrUnknownType},
		{"truncated body", good[:len(good)-3], ErrMalformed},
		{"garbage body", []byte{Version, byte(MsgRecord), 0xc1, 0xff, 0x00}, ErrMalformed},
		{"wrong shape", []byte{Version, byte(MsgHeartbeats), 0x05}, ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(c.in)
			require.Error(t, err)
			require.True(t, errors.Is(err, c.want), "got %v", err)
		})
	}
}

func TestNewer(t *testing.T) {
	require.True(t, Newer(2, 0, 1, 100))
	require.True(t, Newer(1, 5, 1, 4))
	require.False(t, Newer(1, 4, 1, 4))
	require.False(t, Newer(1, 100, 2, 0))
}
