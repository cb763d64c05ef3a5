// Table tests of the validation rules and limits, one case per rule.
package wire

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// goodRecord returns a live record that passes every rule.
func goodRecord() Record {
	return Record{Service: "billing.v2", ID: "billing-7f3a:1", Node: "node-01", Addr: "10.0.0.7:7001",
		Role: 1, Status: 3, Meta: map[string]string{"zone": "eu-1", "ver": ""},
		Incarnation: 1_780_000_000_000_000_000, Seq: 12, Time: 1_780_000_000_000_000_000,
		Heartbeats: true, NonIdempotent: []string{"Transfer", "Send/Mail"}}
}

// bigMeta returns n metadata entries with distinct keys.
func bigMeta(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = ""
	}
	return m
}

// recordCases edit goodRecord to pass or break one rule each.
var recordCases = []struct {
	name  string
	edit  func(r *Record)
	field string // "" when valid; else a word the error must contain
}{
	{"valid", func(r *Record) {}, ""},
	{"valid minimal", func(r *Record) { *r = Record{Service: "s", ID: "i", Node: "n", Addr: "h:1"} }, ""},
	{"valid tombstone without address", func(r *Record) { r.Addr, r.Deleted = "", true }, ""},
	{"valid names at 128", func(r *Record) {
		r.Service, r.ID, r.Node = strings.Repeat("s", 128), strings.Repeat("i", 128), strings.Repeat("n", 128)
	}, ""},
	{"valid limits reached", func(r *Record) {
		r.Meta = bigMeta(64)
		r.NonIdempotent = []string{strings.Repeat("m", 128)}
		r.Incarnation, r.Seq = MaxIncarnation, MaxSeq
	}, ""},
	{"valid meta value at 512", func(r *Record) { r.Meta = map[string]string{"k": strings.Repeat("v", 512)} }, ""},
	{"valid zero version", func(r *Record) { r.Incarnation, r.Seq = 0, 0 }, ""},
	{"valid nil collections", func(r *Record) { r.Meta, r.NonIdempotent = nil, nil }, ""},

	{"service empty", func(r *Record) { r.Service = "" }, "Service"},
	{"service too long", func(r *Record) { r.Service = strings.Repeat("s", 129) }, "Service"},
	{"service with colon", func(r *Record) { r.Service = "a:b" }, "Service"},
	{"service with space", func(r *Record) { r.Service = "a b" }, "Service"},
	{"ID empty", func(r *Record) { r.ID = "" }, "ID"},
	{"ID too long", func(r *Record) { r.ID = strings.Repeat("i", 129) }, "ID"},
	{"ID with slash", func(r *Record) { r.ID = "a/b" }, "ID"},
	{"node empty", func(r *Record) { r.Node = "" }, "Node"},
	{"node too long", func(r *Record) { r.Node = strings.Repeat("n", 129) }, "Node"},
	{"node with newline", func(r *Record) { r.Node = "n\n" }, "Node"},
	{"addr empty in live record", func(r *Record) { r.Addr = "" }, "Addr"},
	{"addr bad in tombstone", func(r *Record) { r.Addr, r.Deleted = "nope", true }, "Addr"},
	{"addr without port", func(r *Record) { r.Addr = "10.0.0.7" }, "Addr"},
	{"addr too long", func(r *Record) { r.Addr = strings.Repeat("a", MaxAddrLen) + ":1" }, "Addr"},
	{"role 3", func(r *Record) { r.Role = 3 }, "Role"},
	{"role 255", func(r *Record) { r.Role = 255 }, "Role"},
	{"status 4", func(r *Record) { r.Status = 4 }, "Status"},
	{"group of the service rule", func(r *Record) { r.Group = "shard-1"; r.Role = 1; r.Epoch = 3; r.Priority = -2 }, ""},
	{"group with colon", func(r *Record) { r.Group = "a:b" }, "Group"},
	{"group too long", func(r *Record) { r.Group = strings.Repeat("g", 129) }, "Group"},
	{"promotion 2", func(r *Record) { r.Promotion = 2 }, "Promotion"},
	{"epoch over max", func(r *Record) { r.Epoch = MaxEpoch + 1 }, "Epoch"},
	{"endpoints", func(r *Record) { r.Endpoints = map[string]string{"grpc": "10.0.0.5:50051", "http": "http://h:8080/x"} }, ""},
	{"endpoint name bad", func(r *Record) { r.Endpoints = map[string]string{"a b": "h:1"} }, "Endpoints key"},
	{"endpoint empty", func(r *Record) { r.Endpoints = map[string]string{"grpc": ""} }, "Endpoints[grpc]"},
	{"endpoint space", func(r *Record) { r.Endpoints = map[string]string{"grpc": "h :1"} }, "Endpoints[grpc]"},
	{"endpoint too long", func(r *Record) { r.Endpoints = map[string]string{"grpc": strings.Repeat("h", 257)} }, "Endpoints[grpc]"},
	{"too many endpoints", func(r *Record) { r.Endpoints = bigMeta(17) }, "Endpoints"},
	{"incarnation negative", func(r *Record) { r.Incarnation = -1 }, "Incarnation"},
	{"incarnation min", func(r *Record) { r.Incarnation = math.MinInt64 }, "Incarnation"},
	{"incarnation over max", func(r *Record) { r.Incarnation = MaxIncarnation + 1 }, "Incarnation"},
	{"incarnation max int64", func(r *Record) { r.Incarnation = math.MaxInt64 }, "Incarnation"},
	{"seq over max", func(r *Record) { r.Seq = MaxSeq + 1 }, "Seq"},
	{"seq max uint64", func(r *Record) { r.Seq = math.MaxUint64 }, "Seq"},
	{"meta too many", func(r *Record) { r.Meta = bigMeta(65) }, "Meta"},
	{"meta key empty", func(r *Record) { r.Meta = map[string]string{"": "v"} }, "Meta key"},
	{"meta key bad", func(r *Record) { r.Meta = map[string]string{"a=b": "v"} }, "Meta key"},
	{"meta key too long", func(r *Record) { r.Meta = map[string]string{strings.Repeat("k", 129): "v"} }, "Meta key"},
	{"meta value too long", func(r *Record) { r.Meta = map[string]string{"k": strings.Repeat("v", 513)} }, "Meta[k]"},
	{"methods too many", func(r *Record) { r.NonIdempotent = make([]string, 65) }, "NonIdempotent"},
	{"method empty", func(r *Record) { r.NonIdempotent = []string{"a", ""} }, "NonIdempotent[1]"},
	{"method too long", func(r *Record) { r.NonIdempotent = []string{strings.Repeat("m", 129)} }, "NonIdempotent[0]"},
	{"record too large", func(r *Record) {
		r.Meta = map[string]string{"a": strings.Repeat("v", 500), "b": strings.Repeat("v", 500)}
	}, "encodes to"},
}

func TestRecordValidate(t *testing.T) {
	for _, c := range recordCases {
		t.Run(c.name, func(t *testing.T) {
			r := goodRecord()
			c.edit(&r)
			err := r.Validate(Limits{})
			if c.field == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			require.Contains(t, err.Error(), c.field)
		})
	}
}

func TestRecordSizeLimitMatchesEncoding(t *testing.T) {
	// A record exactly at MaxRecordSize passes; one byte more fails.
	r := goodRecord()
	r.Meta = map[string]string{"pad": ""}
	b, err := Encode(&r)
	require.NoError(t, err)
	r.Meta["pad"] = strings.Repeat("x", 1024-len(b)-2) // str16 header: two bytes more than fixstr
	b, err = Encode(&r)
	require.NoError(t, err)
	require.Equal(t, 1024, len(b))
	require.NoError(t, r.Validate(Limits{MaxMetaValueLen: 1024}))
	r.Meta["pad"] += "x"
	require.ErrorIs(t, r.Validate(Limits{MaxMetaValueLen: 1024}), ErrInvalid)
}

func TestLimitsOverrideDefaults(t *testing.T) {
	r := goodRecord()
	r.Meta = bigMeta(3)
	require.NoError(t, r.Validate(Limits{}))
	require.ErrorIs(t, r.Validate(Limits{MaxMetaEntries: 2}), ErrInvalid)
	r.NonIdempotent = []string{"a", "b"}
	require.ErrorIs(t, r.Validate(Limits{MaxNonIdempotent: 1}), ErrInvalid)
	require.ErrorIs(t, r.Validate(Limits{MaxRecordSize: 40}), ErrInvalid)
	r.Meta = map[string]string{"k": "vv"}
	require.ErrorIs(t, r.Validate(Limits{MaxMetaValueLen: 1}), ErrInvalid)

	d := DefaultLimits()
	require.Equal(t, d, Limits{}.orDefault())
	require.Equal(t, d, Limits{MaxBeats: -1}.orDefault())
	require.Equal(t, Limits{
		MaxRecordSize: 1024, MaxBatchSize: 1400, MaxBeats: 140, MaxMetaEntries: 64,
		MaxMetaValueLen: 512, MaxNonIdempotent: 64, MaxStateRecords: 65536, MaxClaims: 128, MaxStateClaims: 131072,
	}, d)
}

func TestValidAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"10.0.0.7:7001":                   true,
		"[::1]:80":                        true,
		"[::]:65535":                      true,
		"[fe80::1%eth0]:7001":             true,
		"0.0.0.0:1":                       true,
		"calls.internal.example.com:443":  true,
		"svc_a.local.:8080":               true,
		strings.Repeat("a", 63) + ".b:1":  true,
		"":                                false,
		"10.0.0.7":                        false,
		"10.0.0.7:":                       false,
		":7001":                           false,
		"10.0.0.7:0":                      false,
		"10.0.0.7:07001":                  false,
		"10.0.0.7:65536":                  false,
		"10.0.0.7:+80":                    false,
		"10.0.0.7:http":                   false,
		"::1:80":                          false,
		"[10.0.0.7]:80":                   false,
		"[host]:80":                       false,
		"a..b:80":                         false,
		"a b:80":                          false,
		"a/b:80":                          false,
		strings.Repeat("a", 64) + ".b:1":  false,
		strings.Repeat("a.", 127) + "a:1": false, // 255-byte name
		"[::1]:80:80":                     false,
		"host\x00:80":                     false,
		strings.Repeat("1", MaxAddrLen+1): false,
		"[fe80::1%" + strings.Repeat("e", 300) + "]:1": false,
	} {
		require.Equal(t, want, validAddr(addr), "%q", addr)
	}
}

func TestValidName(t *testing.T) {
	require.True(t, ValidName("a", 1))
	require.True(t, ValidName("Az09._-:", 8))
	require.False(t, ValidName("", 8))
	require.False(t, ValidName("abc", 2))
	for _, c := range []string{" ", "/", "@", "é", "\x00", "\n", "="} {
		require.False(t, ValidName("a"+c, 8), "%q", c)
	}
}

func goodBatch() HeartbeatBatch {
	return HeartbeatBatch{Node: "node-01", Time: 1_780_000_000_000_000_000, Beats: []Heartbeat{
		{Service: "billing", ID: "b-1", Incarnation: 1_780_000_000_000_000_000, Seq: 5, Status: 0},
		{Service: "mail", ID: "m:2", Incarnation: 7, Seq: MaxSeq, Status: 3},
	}}
}

// smallBeats returns a batch of n heartbeats of the smallest valid
// encoding, 10 bytes each; the batch's own fields take 9 bytes.
func smallBeats(n int) HeartbeatBatch {
	b := HeartbeatBatch{Node: "n", Beats: make([]Heartbeat, n)}
	for i := range b.Beats {
		b.Beats[i] = Heartbeat{Service: "s", ID: "i"}
	}
	return b
}

func TestHeartbeatBatchValidate(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(b *HeartbeatBatch)
		field string
	}{
		{"valid", func(b *HeartbeatBatch) {}, ""},
		{"valid empty", func(b *HeartbeatBatch) { b.Beats = nil }, ""},
		{"valid smallest beats filling a packet", func(b *HeartbeatBatch) { *b = smallBeats(139) }, ""},
		{"smallest beats over a packet", func(b *HeartbeatBatch) { *b = smallBeats(140) }, "encodes to 1409 bytes"},
		{"valid max beats in a larger batch", func(b *HeartbeatBatch) { *b = smallBeats(140) }, ""},
		{"node empty", func(b *HeartbeatBatch) { b.Node = "" }, "Node"},
		{"node bad", func(b *HeartbeatBatch) { b.Node = "a b" }, "Node"},
		{"too many beats", func(b *HeartbeatBatch) { b.Beats = make([]Heartbeat, 141) }, "Beats"},
		{"too large", func(b *HeartbeatBatch) {
			for range 10 {
				b.Beats = append(b.Beats, Heartbeat{Service: strings.Repeat("s", 128), ID: "i"})
			}
		}, "encodes to"},
		{"service bad", func(b *HeartbeatBatch) { b.Beats[1].Service = "a:b" }, "Beats[1]"},
		{"service empty", func(b *HeartbeatBatch) { b.Beats[0].Service = "" }, "Service"},
		{"ID bad", func(b *HeartbeatBatch) { b.Beats[0].ID = strings.Repeat("i", 129) }, "ID"},
		{"status 4", func(b *HeartbeatBatch) { b.Beats[0].Status = 4 }, "Status"},
		{"role 3", func(b *HeartbeatBatch) { b.Beats[0].Role = 3 }, "Role"},
		{"epoch over max", func(b *HeartbeatBatch) { b.Beats[1].Epoch = MaxEpoch + 1 }, "Epoch"},
		{"active with epoch", func(b *HeartbeatBatch) { b.Beats[1].Role, b.Beats[1].Epoch = 1, MaxEpoch }, ""},
		{"incarnation negative", func(b *HeartbeatBatch) { b.Beats[0].Incarnation = -5 }, "Incarnation"},
		{"incarnation over max", func(b *HeartbeatBatch) { b.Beats[0].Incarnation = math.MaxInt64 }, "Incarnation"},
		{"seq over max", func(b *HeartbeatBatch) { b.Beats[1].Seq = math.MaxUint64 }, "Seq"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := goodBatch()
			c.edit(&b)
			l := Limits{}
			if strings.Contains(c.name, "larger batch") {
				l.MaxBatchSize = 2000
			}
			err := b.Validate(l)
			if c.field == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			require.Contains(t, err.Error(), c.field)
		})
	}
}

func TestStateValidate(t *testing.T) {
	tomb := goodRecord()
	tomb.Addr, tomb.Deleted, tomb.Meta, tomb.NonIdempotent = "", true, nil, nil
	cases := []struct {
		name  string
		edit  func(s *State)
		field string
	}{
		{"valid", func(s *State) {}, ""},
		{"valid empty", func(s *State) { s.Records = nil }, ""},
		{"node bad", func(s *State) { s.Node = "" }, "Node"},
		{"too many records", func(s *State) { s.Records = make([]Record, 4) }, "Records"},
		{"bad record named by index", func(s *State) { s.Records[1].Role = 9 }, "Records[1]"},
		{"record too large", func(s *State) {
			s.Records[0].Meta = map[string]string{"a": strings.Repeat("v", 500), "b": strings.Repeat("v", 500)}
		}, "encodes to"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := State{Node: "node-02", Records: []Record{goodRecord(), tomb}}
			c.edit(&s)
			err := s.Validate(Limits{MaxStateRecords: 3})
			if c.field == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			require.Contains(t, err.Error(), c.field)
		})
	}
}

func TestMessageValidate(t *testing.T) {
	r, b := goodRecord(), goodBatch()
	s := State{Node: "n", Records: []Record{r}}
	for _, m := range []Message{{Record: &r}, {Heartbeats: &b}, {State: &s}} {
		require.NoError(t, m.Validate(Limits{}))
	}
	r.Role, b.Node, s.Node = 9, "", ""
	for _, m := range []Message{{Record: &r}, {Heartbeats: &b}, {State: &s}, {}} {
		require.ErrorIs(t, m.Validate(Limits{}), ErrInvalid)
	}
}

func TestLeaveValidate(t *testing.T) {
	good := Leave{Node: "node-1", Addr: "10.0.0.1:7946", Time: 5}
	require.NoError(t, good.Validate())
	m := Message{Leave: &good}
	require.NoError(t, m.Validate(Limits{}))
	for _, bad := range []Leave{
		{Node: "", Addr: "10.0.0.1:7946"},
		{Node: "bad name", Addr: "10.0.0.1:7946"},
		{Node: strings.Repeat("n", MaxNameLen+1), Addr: "10.0.0.1:7946"},
		{Node: "n", Addr: ""},
		{Node: "n", Addr: "no-port"},
		{Node: "n", Addr: strings.Repeat("h", MaxAddrLen) + ":1"},
	} {
		require.ErrorIs(t, bad.Validate(), ErrInvalid, "%+v", bad)
	}

	b, err := Encode(&good)
	require.NoError(t, err)
	got, err := Decode(b)
	require.NoError(t, err)
	require.Equal(t, MsgLeave, got.Type)
	require.Equal(t, &good, got.Leave)
	// A notice bigger than a record is refused before it is decoded.
	huge, err := Encode(&Leave{Node: "n", Addr: strings.Repeat("h", 2000) + ":1"})
	require.NoError(t, err)
	_, err = Decode(huge)
	require.ErrorIs(t, err, ErrInvalid)
}

func TestErrorsClipNetworkStrings(t *testing.T) {
	r := goodRecord()
	r.Node = strings.Repeat("\xff", 60000)
	err := r.Validate(Limits{})
	require.ErrorIs(t, err, ErrInvalid)
	require.Less(t, len(err.Error()), 400, err.Error())
	require.True(t, errors.Is(err, ErrInvalid))
}
