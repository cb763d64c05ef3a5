package wire

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidResource(t *testing.T) {
	for _, ok := range []string{"a", "order-17", "tenant.42:shard_3", strings.Repeat("r", 255), "ünïcode", "a;b,c^~'()[]"} {
		require.True(t, ValidResource(ok), "%q", ok)
	}
	bad := []string{"", strings.Repeat("r", 256), "a b", "a\tb", "a\nb", "a\u00a0b", "a\u2003b", "a\x00b"}
	for _, c := range resourceForbidden {
		bad = append(bad, "x"+string(c)+"y")
	}
	for _, b := range bad {
		require.False(t, ValidResource(b), "%q", b)
	}
}

func TestClaimNewer(t *testing.T) {
	a := Claim{Resource: "r", Service: "s", ID: "a", Node: "n1", Gen: 2, Time: 10}
	b := Claim{Resource: "r", Service: "s", ID: "b", Node: "n2", Gen: 2, Time: 20}
	require.True(t, ClaimNewer(&a, &b), "the earlier claim of a generation wins")
	require.False(t, ClaimNewer(&b, &a))
	b.Time = 10
	require.True(t, ClaimNewer(&a, &b), "same time: the smaller ID wins")
	b.Gen = 3
	require.True(t, ClaimNewer(&b, &a), "a forced transfer's generation wins")
	rel := a
	rel.Released = true
	require.True(t, ClaimNewer(&rel, &a), "the owner's release beats its claim")
	require.False(t, ClaimNewer(&a, &rel))
	require.False(t, ClaimNewer(&a, &a))
}

func TestClaimBatchRoundTripAndValidate(t *testing.T) {
	good := ClaimBatch{Node: "n1", Claims: []Claim{{Resource: "r-1", Service: "s", ID: "i", Node: "n1", Gen: 1, Time: 5}}}
	b, err := Encode(&good)
	require.NoError(t, err)
	require.Len(t, b, ClaimBatchOverhead("n1")-2+ClaimSize(&good.Claims[0])) // a fixarray header for one claim takes 1 byte, not 3
	m, err := Decode(b)
	require.NoError(t, err)
	require.NoError(t, m.Validate(Limits{}))
	require.Equal(t, good.Claims, m.Claims.Claims)

	cases := map[string]func(*ClaimBatch){
		"resource":     func(c *ClaimBatch) { c.Claims[0].Resource = "a/b" },
		"service":      func(c *ClaimBatch) { c.Claims[0].Service = "a:b" },
		"id":           func(c *ClaimBatch) { c.Claims[0].ID = "" },
		"gen zero":     func(c *ClaimBatch) { c.Claims[0].Gen = 0 },
		"gen over max": func(c *ClaimBatch) { c.Claims[0].Gen = MaxEpoch + 1 },
		"other node":   func(c *ClaimBatch) { c.Claims[0].Node = "n2" },
		"batch node":   func(c *ClaimBatch) { c.Node = "a b"; c.Claims[0].Node = "a b" },
		"too many":     func(c *ClaimBatch) { c.Claims = make([]Claim, 129) },
	}
	for name, edit := range cases {
		c := good
		c.Claims = append([]Claim(nil), good.Claims...)
		edit(&c)
		require.ErrorIs(t, c.Validate(Limits{}), ErrInvalid, name)
	}
	// The scanner refuses a declared count over the limit before decoding.
	many := ClaimBatch{Node: "n", Claims: make([]Claim, 20)}
	for i := range many.Claims {
		many.Claims[i] = Claim{Resource: "r", Service: "s", ID: "i", Node: "n", Gen: 1}
	}
	b, err = Encode(&many)
	require.NoError(t, err)
	_, err = DecodeLimited(b, Limits{MaxClaims: 10})
	require.ErrorIs(t, err, ErrInvalid)
	st := State{Node: "n", Claims: many.Claims}
	b, err = Encode(&st)
	require.NoError(t, err)
	_, err = DecodeLimited(b, Limits{MaxStateClaims: 10})
	require.ErrorIs(t, err, ErrInvalid)
	m, err = Decode(b)
	require.NoError(t, err)
	require.NoError(t, m.Validate(Limits{}))
	require.ErrorIs(t, m.Validate(Limits{MaxStateClaims: 19}), ErrInvalid)
}
