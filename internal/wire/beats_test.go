package wire

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func someBeats() []Beat {
	return []Beat{
		{Index: 1, Seq: 40, Status: 0},
		{Index: 2, Seq: 40, Status: 3, Role: 1, Epoch: 7},
		{Index: 9, Seq: 41, Role: 2},
		{Index: 700, Seq: 12},
		{Index: MaxIndex, Seq: MaxSeq, Status: 1},
	}
}

func TestBeatsRoundTrip(t *testing.T) {
	in := someBeats()
	b, err := Encode(&Beats{Node: "n1", Life: 99, Packed: PackBeats(in)})
	require.NoError(t, err)
	m, err := Decode(b)
	require.NoError(t, err)
	require.NoError(t, m.Validate(Limits{}))
	require.Equal(t, in, m.Beats.Entries)
	require.Equal(t, "n1", m.Beats.Node)
	require.EqualValues(t, 99, m.Beats.Life)
}

// TestPackedBeatsAreSmall: beats of one round (equal sequence numbers,
// consecutive indexes) take two bytes each.
func TestPackedBeatsAreSmall(t *testing.T) {
	var in []Beat
	for i := range 100 {
		in = append(in, Beat{Index: uint32(i + 1), Seq: 1000})
	}
	p := PackBeats(in)
	require.LessOrEqual(t, len(p), 2*100+3)
}

func TestBeatsRejected(t *testing.T) {
	enc := func(packed []byte, life uint64) []byte {
		b, err := Encode(&Beats{Node: "n", Life: life, Packed: packed})
		require.NoError(t, err)
		return b
	}
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"head bit 7":            {enc([]byte{0x80, 1, 2}, 1), ErrMalformed},
		"status 4":              {enc([]byte{4 | beatSeq, 1, 2}, 1), ErrInvalid},
		"role 3":                {enc([]byte{3<<3 | beatSeq, 1, 2}, 1), ErrInvalid},
		"index distance 0":      {enc([]byte{beatSeq, 0, 2}, 1), ErrInvalid},
		"truncated index":       {enc([]byte{beatSeq}, 1), ErrInvalid},
		"truncated seq":         {enc([]byte{beatSeq, 1}, 1), ErrInvalid},
		"seq 0":                 {enc([]byte{0, 1}, 1), ErrInvalid},
		"seq below 0":           {enc([]byte{beatSeq, 1, 3}, 1), ErrInvalid}, // zig-zag 3 = -2
		"epoch 0":               {enc([]byte{beatSeq | beatEpoch, 1, 2, 0}, 1), ErrInvalid},
		"index past MaxIndex":   {enc(append(PackBeats([]Beat{{Index: MaxIndex, Seq: 1}}), 0, 1), 1), ErrInvalid},
		"zero seq delta marked": {enc([]byte{beatSeq, 1, 2, beatSeq, 1, 0}, 1), ErrInvalid},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Decode(c.b)
			require.ErrorIs(t, err, c.want)
		})
	}
	m, err := Decode(enc(PackBeats(someBeats()), 0))
	require.NoError(t, err)
	require.ErrorIs(t, m.Validate(Limits{}), ErrInvalid, "Life 0")
	big := make([]byte, 1500)
	_, err = Decode(enc(big, 1))
	require.ErrorIs(t, err, ErrInvalid, "over MaxBatchSize")
}

func TestPackBeatsLimit(t *testing.T) {
	var in []Beat
	for i := range 1000 {
		in = append(in, Beat{Index: uint32(i + 1), Seq: 5})
	}
	p, n := PackBeatsLimit(in, 100)
	require.LessOrEqual(t, len(p), 100)
	require.Greater(t, n, 40)
	back, err := unpackBeats(p, 1000)
	require.NoError(t, err)
	require.Equal(t, in[:n], back)
	_, n = PackBeatsLimit(in, 1)
	require.Equal(t, 1, n, "at least one beat")
}

func TestWantRoundTripAndRules(t *testing.T) {
	w := &Want{From: "node-1", Origins: []WantOrigin{{Node: "node-2", Life: 5, Round: 12}, {Node: "node-3", Life: 1}}}
	b, err := Encode(w)
	require.NoError(t, err)
	m, err := Decode(Direct(b))
	require.NoError(t, err)
	require.Equal(t, MsgWant, m.Type)
	require.True(t, m.Direct)
	require.Equal(t, w, m.Want)
	require.NoError(t, m.Validate(Limits{}))

	bad := map[string]*Want{
		"From":       {From: "bad name", Origins: w.Origins},
		"0 origins":  {From: "node-1"},
		"Origins[1]": {From: "node-1", Origins: []WantOrigin{{Node: "ok"}, {Node: ""}}},
	}
	for what, v := range bad {
		b, err := Encode(v)
		require.NoError(t, err)
		m, err := Decode(b)
		require.NoError(t, err, what)
		err = m.Validate(Limits{})
		require.ErrorIs(t, err, ErrInvalid, what)
		if what != "0 origins" {
			require.Contains(t, err.Error(), what)
		}
	}
	// More origins than allowed are refused before the codec allocates.
	b, err = Encode(&Want{From: "node-1", Origins: make([]WantOrigin, MaxWantOrigins+1)})
	require.NoError(t, err)
	_, err = Decode(b)
	require.ErrorIs(t, err, ErrInvalid)
}

func TestBeatsCarryRound(t *testing.T) {
	in := &Beats{Node: "n", Life: 3, Packed: PackBeats(someBeats()), Round: 1 << 40}
	b, err := Encode(in)
	require.NoError(t, err)
	m, err := Decode(b)
	require.NoError(t, err)
	require.Equal(t, uint64(1<<40), m.Beats.Round)
	require.Equal(t, someBeats(), m.Beats.Entries)
}
