package main

// The model subcommand: what a quiet cluster costs each node and how fast it
// converges, as functions of its size N, instances per node I, heartbeat
// interval H, heartbeat fan-out (HeartbeatRetransmitMult) and packet loss;
// its free coefficients fitted to the points aegis-bench scale measured.
//
// Where each term comes from (the mechanisms are in the root package):
//
//   - Heartbeats: every round each node sends its compact message(s) once
//     to every other member (beats.go, repair.go). Bytes out per node per
//     second = (N−1)/H × Σ(encoded message + memberlist's frame) × copies,
//     where copies = 1 + m⌈log10(N+1)⌉ when HeartbeatRetransmitMult m > 0
//     also gossips them. Received the same. The encoded sizes are exact
//     (this program encodes a round); the frame is fitted.
//   - Probes: memberlist probes one member a second and answers one probe:
//     a constant per node, fitted (the intercept).
//   - Repair under loss p: a node misses p of the rounds; for each it asks
//     two members (a Want) and each that heard the round answers with its
//     frames.
//   - Push/pull: every node exchanges full state with one random member
//     every PushPullInterval × max(1, ⌈log2 N − 5⌉ + 1) (memberlist scales
//     it above 32 nodes); a state holds every record (N×I) and memberlist's
//     member list (N entries), both encoded here.
//   - CPU: a constant plus a cost per UDP packet sent or received, fitted.
//   - Spread: a registration goes straight from its node to every member
//     (twice, 150–300 ms apart) and by gossip. aegis-bench measures all N
//     nodes registering at once in one process: N(N−1) deliveries shared
//     by its cores, fitted as a power of N (the exponent passes 2 where
//     the process saturates). On hosts of their own each
//     node sends and receives its 4(N−1) packets at the same time, at the
//     per-packet CPU cost. A member that loses both direct copies
//     (probability p² each) learns the instance from gossip or, at the
//     latest, when its next heartbeat names it (then it asks the origin).

import (
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/internal/wire"
)

// measuredRound is about the heartbeat round numbers of a scale run (a
// few minutes at 5 s): one-byte sequence numbers. Projections use
// modelOpts.round, a node that has run for a week.
const measuredRound = 60

// defaultMeasured is the scale run BENCHMARKS.md reports, kept in the
// repository so that the model can be refitted and checked.
const defaultMeasured = "cmd/aegis-bench/testdata/scale.csv"

type modelOpts struct {
	ns        []int
	inst      int
	interval  time.Duration
	timeout   time.Duration
	loss      float64
	hbmult    int
	pushPull  time.Duration
	nameLen   int
	cpuBudget float64 // ms of CPU per second per node heartbeats may take
	bwBudget  float64 // heartbeat bytes per second per node, each way
	measured  string
	round     uint64  // heartbeat round number of the projected nodes
	cpuPkt    float64 // µs of CPU per packet sent or received; 0: the fitted one
}

// measuredRow is one line of aegis-bench scale -csv.
type measuredRow map[string]float64

// modelFit holds the fitted coefficients.
type modelFit struct {
	probeBps, probePps float64 // intercepts: memberlist's probes, per node
	roundBytes         float64 // bytes of one heartbeat round per member on the wire, as measured (the slope)
	roundPkts          float64 // packets of one heartbeat round per member, as measured
	frame              float64 // per message: roundBytes less the encoded round: memberlist's framing
	pktPerMsg          float64 // packets per heartbeat message (1 when unbundled)
	cpu0, cpuPerPkt    float64 // ms/s per node; ms per packet sent or received
	spreadA, spreadB   float64 // in-process spread max ≈ spreadA × N^spreadB ms
	coldA, coldB       float64 // in-process cold start max ≈ coldA × N^coldB ms
	mlNode             float64 // bytes per member in memberlist's push/pull state
	r2                 map[string]float64
}

func runModel(args []string) error {
	fs := flag.NewFlagSet("model", flag.ContinueOnError)
	var mo modelOpts
	def := aegis.DefaultConfig()
	ns := fs.String("n", "50,100,200,500,1000,2000,5000", "cluster sizes to project")
	fs.IntVar(&mo.inst, "instances", 2, "instances per node")
	fs.DurationVar(&mo.interval, "interval", def.HeartbeatInterval, "heartbeat interval (Config.HeartbeatInterval)")
	fs.DurationVar(&mo.timeout, "timeout", def.HeartbeatTimeout, "heartbeat timeout (Config.HeartbeatTimeout)")
	fs.Float64Var(&mo.loss, "loss", 0, "packet loss probability on every link")
	fs.IntVar(&mo.hbmult, "hbmult", def.Gossip.HeartbeatRetransmitMult, "GossipConfig.HeartbeatRetransmitMult: 0 sends each heartbeat once to every member (default); m > 0 also gossips it, m⌈log10(N+1)⌉ copies per receiver")
	fs.DurationVar(&mo.pushPull, "pushpull", def.Gossip.PushPullInterval, "GossipConfig.PushPullInterval")
	fs.IntVar(&mo.nameLen, "name-len", 16, "length of node names, service names and instance IDs in bytes")
	fs.Float64Var(&mo.cpuBudget, "cpu-budget", 10, "CPU per node, in ms per second, that heartbeats may take before the interval should rise (10: 1% of a core)")
	fs.Float64Var(&mo.bwBudget, "bw-budget", 100_000, "heartbeat bytes per node per second, each way, before the interval should rise")
	fs.Float64Var(&mo.cpuPkt, "cpu-per-packet", 7, "µs of CPU per UDP packet sent or received on the projected hosts: 7 was measured on real sockets (aegis-bench cost at 25 and 100 nodes, BENCHMARKS.md); 0: the in-process fit (the in-memory network is cheaper)")
	fs.StringVar(&mo.measured, "measured", defaultMeasured, "CSV written by aegis-bench scale -csv: the measured points the coefficients are fitted to (rows without loss)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	var err error
	mo.round = uint64(7 * 24 * time.Hour / mo.interval) // a week of rounds
	if mo.ns, err = parseInts(*ns); err != nil {
		return err
	}
	switch {
	case mo.inst < 1:
		return errors.New("-instances must be at least 1")
	case mo.interval <= 0 || mo.timeout < mo.interval:
		return errors.New("need -interval > 0 and -timeout >= -interval")
	case mo.loss < 0 || mo.loss >= 1:
		return errors.New("-loss must be in [0, 1)")
	case mo.hbmult < 0 || mo.pushPull <= 0 || mo.nameLen < 1 || mo.nameLen > wire.MaxNameLen:
		return fmt.Errorf("need -hbmult >= 0, -pushpull > 0, -name-len 1..%d", wire.MaxNameLen)
	case mo.cpuBudget <= 0 || mo.bwBudget <= 0 || mo.cpuPkt < 0:
		return errors.New("budgets must be positive, -cpu-per-packet not negative")
	}
	rows, err := readMeasured(mo.measured)
	if err != nil {
		return err
	}
	f, err := fitModel(rows, &mo)
	if err != nil {
		return err
	}
	printModel(os.Stdout, rows, f, &mo)
	return nil
}

// readMeasured reads a scale CSV by column name.
func readMeasured(path string) ([]measuredRow, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("measured points: %w (write them with aegis-bench scale -csv FILE; run from the repository root for the default)", err)
	}
	defer fh.Close()
	r := csv.NewReader(fh)
	head, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("%s: header: %w", path, err)
	}
	for _, need := range []string{"n", "instances", "interval_s", "loss", "udp_Bps", "udp_pps", "cpu_ms_per_s", "spread_max_ms"} {
		if !slices.Contains(head, need) {
			return nil, fmt.Errorf("%s: no column %q (columns: %s)", path, need, strings.Join(head, ","))
		}
	}
	var rows []measuredRow
	for line := 2; ; line++ {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		row := measuredRow{}
		for i, h := range head {
			v, err := strconv.ParseFloat(rec[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: column %s: %w", path, line, h, err)
			}
			row[h] = v
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// fitModel fits the free coefficients to the rows without loss; they must
// share one instance count and interval, and span at least two sizes.
func fitModel(all []measuredRow, mo *modelOpts) (*modelFit, error) {
	var rows []measuredRow
	for _, r := range all {
		if r["loss"] == 0 {
			rows = append(rows, r)
		}
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("%s: %d rows without loss; the fit needs at least two cluster sizes", mo.measured, len(rows))
	}
	inst, h := int(rows[0]["instances"]), rows[0]["interval_s"]
	for _, r := range rows {
		if int(r["instances"]) != inst || r["interval_s"] != h {
			return nil, fmt.Errorf("%s: rows mix instance counts or intervals; fit one setting at a time", mo.measured)
		}
	}
	f := &modelFit{r2: map[string]float64{}}
	col := func(name string, g func(measuredRow) float64) (xs, ys []float64) {
		for _, r := range rows {
			xs, ys = append(xs, g(r)), append(ys, r[name])
		}
		return
	}
	perSec := func(r measuredRow) float64 { return (r["n"] - 1) / h } // rounds a node sends (to each member once) and receives, a second
	msgs, enc := roundSize(inst, measuredNameLen, measuredRound)      // one round as the measured run encoded it

	xs, ys := col("udp_Bps", perSec)
	f.probeBps, f.roundBytes, f.r2["udp_Bps"] = linFit(xs, ys)
	f.frame = (f.roundBytes - float64(enc)) / float64(msgs)
	xs, ys = col("udp_pps", perSec)
	f.probePps, f.roundPkts, f.r2["udp_pps"] = linFit(xs, ys)
	f.pktPerMsg = f.roundPkts / float64(msgs)
	xs, ys = col("cpu_ms_per_s", func(r measuredRow) float64 { return 2 * r["udp_pps"] })
	f.cpu0, f.cpuPerPkt, f.r2["cpu_ms_per_s"] = linFit(xs, ys)
	xs, ys = col("spread_max_ms", func(r measuredRow) float64 { return r["n"] })
	f.spreadA, f.spreadB, f.r2["spread_max_ms"] = powFit(xs, ys)
	xs, ys = col("cold_max_ms", func(r measuredRow) float64 { return r["n"] }) // runs without a cold start hold -1 or 0: powFit leaves them out
	f.coldA, f.coldB, f.r2["cold_max_ms"] = powFit(xs, ys)
	f.mlNode = float64(memberEntrySize(mo.nameLen))
	return f, nil
}

// measuredNameLen is the node-name length of a scale run: cluster.start
// names nodes n000-abcdef (below 1,000 nodes).
const measuredNameLen = len("n000-abcdef")

// roundSize encodes heartbeat round number round (sequence numbers follow
// it) of inst instances from a node whose name is nameLen bytes, and
// returns its messages and their encoded bytes.
func roundSize(inst, nameLen int, round uint64) (msgs, bytes int) {
	beats := make([]wire.Beat, inst)
	for i := range beats {
		beats[i] = wire.Beat{Index: uint32(i + 1), Seq: round, Status: 1}
	}
	for len(beats) > 0 {
		packed, k := wire.PackBeatsLimit(beats, wire.MaxPackedPerMessage)
		b, err := wire.Encode(&wire.Beats{Node: strings.Repeat("n", nameLen), Life: math.MaxUint64 - 12345, Packed: packed, Round: round})
		if err != nil {
			panic(err) // a valid message always encodes
		}
		msgs, bytes = msgs+1, bytes+len(b)
		beats = beats[k:]
	}
	return msgs, bytes
}

// recordSize is the encoded size of a typical record: names of nameLen
// bytes, an IPv4 address, no metadata.
func recordSize(nameLen int) int {
	s := strings.Repeat("s", nameLen)
	r := wire.Record{Service: s, ID: s, Node: s, Addr: "10.123.45.67:40001", Status: 1,
		Incarnation: time.Now().UnixNano(), Seq: 120_000, Time: time.Now().UnixNano(),
		Heartbeats: true, Life: math.MaxUint64 - 12345, Index: 1}
	b, err := wire.Encode(&r)
	if err != nil {
		panic(err)
	}
	return len(b) - 2 // a state holds records without the message header
}

// memberEntrySize is the encoded size of one member in memberlist's
// push/pull state: memberlist sends a struct of these fields, encoded by
// go-msgpack as a map with the field names, the node's metadata being
// Aegis's call address.
func memberEntrySize(nameLen int) int {
	type pushNodeState struct {
		Name        string
		Addr        []byte
		Port        uint16
		Meta        []byte
		Incarnation uint32
		State       uint8
		Vsn         []uint8
	}
	var b []byte
	st := pushNodeState{Name: strings.Repeat("n", nameLen), Addr: []byte{10, 123, 45, 67}, Port: 7946,
		Meta: []byte("10.123.45.67:40001"), Incarnation: 70_000, State: 0, Vsn: []uint8{1, 5, 2, 2, 5, 4}}
	if err := codec.NewEncoderBytes(&b, &codec.MsgpackHandle{}).Encode(&st); err != nil {
		panic(err)
	}
	return len(b)
}

// stateSize is the Aegis part of a push/pull state: n×inst records.
func stateSize(n, inst, nameLen int) int {
	return 32 + nameLen + n*inst*recordSize(nameLen)
}

// pushPullPeriod is memberlist's push/pull period at n members.
func pushPullPeriod(base time.Duration, n int) float64 {
	mult := 1.0
	if n > 32 {
		mult = math.Ceil(math.Log2(float64(n))-math.Log2(32)) + 1
	}
	return base.Seconds() * mult
}

// projection is the model's figures for one cluster size.
type projection struct {
	n                   int
	hbBps, hbPps        float64 // heartbeats, per node, each way
	udpBps, udpPps      float64 // all UDP sent per node
	repairBps           float64
	tcpBps              float64 // push/pull bytes per node per second
	stateBytes          float64 // one push/pull, both ways
	cpuMs, hbCPUMs      float64
	clusterMBps         float64 // all UDP in the cluster
	spreadInProc        float64 // ms, all N at once in one process
	spreadHosts         float64 // ms, one node per host
	lossSpread          string
	ageOver, falsePerYr float64 // expected ages over 2.5 intervals in 10 min; false verdicts a year
	records             int
	advice              string
	needInterval        float64 // seconds
}

func project(n int, f *modelFit, mo *modelOpts) projection {
	p := projection{n: n, records: n * mo.inst}
	h := mo.interval.Seconds()
	msgs, enc := roundSize(mo.inst, mo.nameLen, mo.round)
	roundBytes := float64(enc) + float64(msgs)*f.frame
	copies := 1.0
	if mo.hbmult > 0 {
		copies += float64(mo.hbmult) * math.Ceil(math.Log10(float64(n)+1))
	}
	rate := float64(n-1) / h // rounds per second a node sends (to each member once) and receives
	p.hbBps = rate * roundBytes * copies
	p.hbPps = rate * float64(msgs) * f.pktPerMsg * copies
	// Repair: the rounds a node misses, each asked of two members in one
	// Want (about 40 bytes plus the origin's name), each answered with the
	// round's frames by a member that heard the request and the round.
	q := mo.loss
	if mo.hbmult > 0 {
		q *= math.Exp(-(copies - 1) * (1 - mo.loss)) // the gossiped copies rarely all miss
	}
	want := float64(40 + 2*mo.nameLen)
	p.repairBps = q * rate * (2*want + 2*(1-mo.loss)*(1-mo.loss)*roundBytes)
	repairPps := q * rate * (2 + 2*(1-mo.loss)*(1-mo.loss)*float64(msgs))
	p.udpBps = f.probeBps + p.hbBps + p.repairBps
	p.udpPps = f.probePps + p.hbPps + repairPps
	p.stateBytes = 2 * (float64(stateSize(n, mo.inst, mo.nameLen)) + float64(n)*f.mlNode)
	p.tcpBps = p.stateBytes / pushPullPeriod(mo.pushPull, n)
	perPkt := f.cpuPerPkt // ms
	if mo.cpuPkt > 0 {
		perPkt = mo.cpuPkt / 1000
	}
	p.cpuMs = f.cpu0 + perPkt*2*p.udpPps
	p.hbCPUMs = perPkt * 2 * (p.hbPps + repairPps)
	p.clusterMBps = float64(n) * p.udpBps / 1e6
	nn := float64(n)
	p.spreadInProc = f.spreadA * math.Pow(nn, f.spreadB)
	// On hosts of their own, every node registering at once, each node
	// sends its N−1 deliveries and their repeats and receives as many: four
	// packets per member, at the per-packet CPU cost (network latency, a
	// fraction of a millisecond on a LAN, left out).
	p.spreadHosts = 4 * perPkt * (nn - 1)
	if mo.loss > 0 {
		one := 1 - math.Pow(1-mo.loss, nn-1)         // some member lost the first copy
		two := 1 - math.Pow(1-mo.loss*mo.loss, nn-1) // some member lost both
		p.lossSpread = fmt.Sprintf("%.0f%% of registrations wait for the repeat (0.15–0.3 s); %.0f%% for gossip or the next heartbeat (≤ %.0f s)", 100*one, 100*two, h)
	}
	// Freshness: a member's heartbeat is older than 2.5 intervals only when
	// a round and the next are lost and all the repair attempts between
	// (one every tenth of an interval from 1.25 intervals on, each asking
	// two members, each answer needing three packets through) fail.
	fail := math.Pow(1-math.Pow(1-mo.loss, 3), 2)
	pairs := nn * (nn - 1)
	p.ageOver = pairs * (600 / h) * q * q * math.Pow(fail, 12)
	k := int(math.Ceil(mo.timeout.Seconds() / h)) // rounds a timeout spans
	p.falsePerYr = pairs * (365 * 86400 / h) * math.Pow(q, float64(k)) * math.Pow(fail, 18)

	// The interval heartbeats need to stay inside the budgets.
	perRound := (p.hbBps + p.repairBps) * h / float64(n-1) // bytes per member per round
	cpuPerRound := p.hbCPUMs * h / float64(n-1)
	need := math.Max(float64(n-1)*perRound/mo.bwBudget, float64(n-1)*cpuPerRound/mo.cpuBudget)
	p.needInterval = need
	maxInterval := mo.timeout.Seconds() / 4 // keep four rounds inside a timeout
	switch {
	case float64(p.records) > 0.75*float64(wire.DefaultLimits().MaxStateRecords):
		p.advice = fmt.Sprintf("split: %d records is past three quarters of the push/pull state limit (%d records)", p.records, wire.DefaultLimits().MaxStateRecords)
	case need <= h:
		p.advice = "the default interval is within budget"
	case halfUp(need) <= maxInterval:
		p.advice = fmt.Sprintf("raise HeartbeatInterval to %.1f s", halfUp(need))
	default:
		p.advice = fmt.Sprintf("split the cluster, or raise HeartbeatTimeout to %.0f s with HeartbeatInterval %.1f s (hung instances are then noticed that much later)", 4*halfUp(need), halfUp(need))
	}
	return p
}

func printModel(w io.Writer, rows []measuredRow, f *modelFit, mo *modelOpts) {
	fmt.Fprintf(w, "## aegis-bench model\n\n")
	fmt.Fprintf(w, "- command: `%s`\n", commandLine())
	fmt.Fprintf(w, "- library: %s\n", libraryVersion())
	fmt.Fprintf(w, "- fitted to %s (rows without loss)\n", mo.measured)
	msgs, enc := roundSize(mo.inst, mo.nameLen, mo.round)
	fmt.Fprintf(w, "- projected for: %d instance(s) per node, names of %d bytes (a heartbeat round: %d message(s), %d bytes encoded; a record: %d bytes), HeartbeatInterval %v, HeartbeatTimeout %v, loss %.3g, HeartbeatRetransmitMult %d, PushPullInterval %v\n",
		mo.inst, mo.nameLen, msgs, enc, recordSize(mo.nameLen), mo.interval, mo.timeout, mo.loss, mo.hbmult, mo.pushPull)
	fmt.Fprintf(w, "- budgets per node: heartbeats may take %.3g ms/s of CPU and %.0f B/s each way; the interval may rise to a quarter of the timeout\n\n", mo.cpuBudget, mo.bwBudget)

	fmt.Fprintf(w, "Fitted coefficients (least squares; R² per fit):\n\n")
	fp := []([]string){
		{"UDP bytes per node per second", fmt.Sprintf("%.0f + (N−1)/H × %.1f", f.probeBps, f.roundBytes), fmt.Sprintf("%.4f", f.r2["udp_Bps"]),
			fmt.Sprintf("intercept: memberlist's probes; slope: one round's messages on the wire, %.1f bytes of memberlist framing each", f.frame)},
		{"UDP packets per node per second", fmt.Sprintf("%.2f + (N−1)/H × %.3f", f.probePps, f.roundPkts), fmt.Sprintf("%.4f", f.r2["udp_pps"]), "one packet per member per round"},
		{"CPU ms per node per second (in-process)", fmt.Sprintf("%.3f + %.2f µs × packets sent and received", f.cpu0, f.cpuPerPkt*1000), fmt.Sprintf("%.4f", f.r2["cpu_ms_per_s"]), "includes the Go runtime and this program"},
		{"spread max, all N at once in one process (ms)", fmt.Sprintf("%.3g × N^%.2f", f.spreadA, f.spreadB), fmt.Sprintf("%.4f", f.r2["spread_max_ms"]),
			"N(N−1) deliveries shared by the process's cores would make the exponent 2; above it, the process is saturated and queues grow"},
	}
	if f.coldA != 0 {
		fp = append(fp, []string{"cold start max, in one process (ms)", fmt.Sprintf("%.3g × N^%.2f", f.coldA, f.coldB), fmt.Sprintf("%.4f", f.r2["cold_max_ms"]), "N−1 nodes join node 0 at once"})
	}
	fp = append(fp, []string{"memberlist's push/pull state per member (bytes)", fmt.Sprintf("%.0f", f.mlNode), "encoded",
		"not fitted: a 30 s window holds few push/pulls among many small TCP fallback pings, so the measured bytes per stream say little; encoded as memberlist encodes a member"})
	tableTo(w, []string{"quantity", "fit", "R²", "meaning"}, fp)

	fmt.Fprintf(w, "Measured against the model at the measured points (%d instance(s) per node, as measured):\n\n", int(rows[0]["instances"]))
	var mrows [][]string
	for _, r := range rows {
		if r["loss"] != 0 {
			continue
		}
		mm := *mo
		mm.inst, mm.interval, mm.loss, mm.hbmult = int(r["instances"]), time.Duration(r["interval_s"]*float64(time.Second)), 0, 0
		mm.nameLen, mm.round, mm.cpuPkt = measuredNameLen, measuredRound, 0
		p := project(int(r["n"]), f, &mm)
		mrows = append(mrows, []string{strconv.Itoa(int(r["n"])),
			fmt.Sprintf("%.0f / %.0f", r["udp_Bps"], p.udpBps),
			fmt.Sprintf("%.1f / %.1f", r["udp_pps"], p.udpPps),
			fmt.Sprintf("%.3f / %.3f", r["cpu_ms_per_s"], p.cpuMs),
			fmt.Sprintf("%.0f / %.0f", r["spread_max_ms"], p.spreadInProc),
			coldCell(r, f),
		})
	}
	tableTo(w, []string{"N", "UDP B/s per node, measured / model", "UDP packets/s", "CPU ms/s", "spread max ms (in-process)", "cold start max ms (in-process)"}, mrows)

	fmt.Fprintf(w, "Projection (per node unless said; one node per host for spread):\n\n")
	var prow [][]string
	for _, n := range mo.ns {
		if n < 2 {
			continue
		}
		p := project(n, f, mo)
		prow = append(prow, []string{strconv.Itoa(n),
			fmt.Sprintf("%.0f", p.hbBps), fmt.Sprintf("%.0f", p.hbPps),
			fmt.Sprintf("%.0f", p.udpBps), fmt.Sprintf("%.0f", p.tcpBps),
			fmt.Sprintf("%.2f", p.cpuMs), fmt.Sprintf("%.1f", p.clusterMBps),
			fmt.Sprintf("%.0f", p.spreadHosts),
			fmt.Sprintf("%.2g", p.ageOver), fmt.Sprintf("%.2g", p.falsePerYr),
			fmt.Sprintf("%.1f", p.needInterval), p.advice})
	}
	tableTo(w, []string{"N", "heartbeat B/s each way", "heartbeat packets/s each way", "all UDP B/s sent", "push/pull B/s", "CPU ms/s", "cluster UDP MB/s",
		"spread max ms", "ages > 2.5 H in 10 min (cluster)", "false verdicts a year (cluster)", "interval the budgets need (s)", "advice"}, prow)
	if mo.loss > 0 {
		fmt.Fprintf(w, "Spread under loss %.3g:\n\n", mo.loss)
		for _, n := range mo.ns {
			if n >= 2 {
				fmt.Fprintf(w, "- N=%d: %s\n", n, project(n, f, mo).lossSpread)
			}
		}
		fmt.Fprintln(w)
	}
}

func coldCell(r measuredRow, f *modelFit) string {
	if r["cold_max_ms"] <= 0 || f.coldA == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f / %.0f", r["cold_max_ms"], f.coldA*math.Pow(r["n"], f.coldB))
}

// halfUp rounds seconds up to the next half second.
func halfUp(v float64) float64 { return math.Ceil(v*2) / 2 }

// powFit fits y = a·x^b by least squares on logarithms and returns a, b
// and R² (of the logarithms). Points with x or y not positive are left out.
func powFit(xs, ys []float64) (a, b, r2 float64) {
	var lx, ly []float64
	for i := range xs {
		if xs[i] > 0 && ys[i] > 0 {
			lx, ly = append(lx, math.Log(xs[i])), append(ly, math.Log(ys[i]))
		}
	}
	if len(lx) < 2 {
		return 0, 0, 0
	}
	la, b, r2 := linFit(lx, ly)
	return math.Exp(la), b, r2
}

// linFit fits y = a + b·x by least squares and returns a, b and R².
func linFit(xs, ys []float64) (a, b, r2 float64) {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx, sy, sxx, sxy = sx+xs[i], sy+ys[i], sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return sy / n, 0, 0
	}
	b = (n*sxy - sx*sy) / den
	a = (sy - b*sx) / n
	mean := sy / n
	var ssr, sst float64
	for i := range xs {
		e := ys[i] - (a + b*xs[i])
		ssr += e * e
		sst += (ys[i] - mean) * (ys[i] - mean)
	}
	if sst > 0 {
		r2 = 1 - ssr/sst
	}
	return a, b, r2
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
