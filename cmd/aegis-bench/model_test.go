package main

import (
	"bytes"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestLinAndPowFitRecoverExactLaws(t *testing.T) {
	xs := []float64{50, 100, 200, 500}
	var lin, pow []float64
	for _, x := range xs {
		lin = append(lin, 91+38.3*x)
		pow = append(pow, 0.002*math.Pow(x, 2.5))
	}
	a, b, r2 := linFit(xs, lin)
	if math.Abs(a-91) > 1e-6 || math.Abs(b-38.3) > 1e-9 || r2 < 0.999999 {
		t.Fatalf("linFit: %v %v %v", a, b, r2)
	}
	a, b, r2 = powFit(xs, pow)
	if math.Abs(a-0.002)/0.002 > 1e-6 || math.Abs(b-2.5) > 1e-9 || r2 < 0.999999 {
		t.Fatalf("powFit: %v %v %v", a, b, r2)
	}
}

// The model fitted to the committed scale run reproduces its bytes and
// packets within a few percent, grows heartbeat traffic linearly in N, and
// advises a longer interval or a split only for large clusters.
func TestModelOnMeasuredRun(t *testing.T) {
	mo := &modelOpts{inst: 2, interval: 5 * time.Second, timeout: 30 * time.Second, pushPull: 30 * time.Second,
		nameLen: 16, cpuBudget: 10, bwBudget: 100_000, measured: "testdata/scale.csv", round: 120_000}
	rows, err := readMeasured(mo.measured)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fitModel(rows, mo)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		m := *mo
		m.nameLen, m.round = measuredNameLen, measuredRound
		p := project(int(r["n"]), f, &m)
		if d := math.Abs(p.udpBps-r["udp_Bps"]) / r["udp_Bps"]; d > 0.05 {
			t.Errorf("N=%v: model %.0f B/s, measured %.0f", r["n"], p.udpBps, r["udp_Bps"])
		}
		if d := math.Abs(p.udpPps-r["udp_pps"]) / r["udp_pps"]; d > 0.05 {
			t.Errorf("N=%v: model %.1f packets/s, measured %.1f", r["n"], p.udpPps, r["udp_pps"])
		}
	}
	p1, p2 := project(1000, f, mo), project(2000, f, mo)
	if ratio := p2.hbBps / p1.hbBps; ratio < 1.99 || ratio > 2.01 {
		t.Errorf("heartbeat bytes from 1,000 to 2,000 nodes grew %.3f×, want 2×", ratio)
	}
	if !strings.Contains(project(100, f, mo).advice, "within budget") {
		t.Errorf("100 nodes: %s", project(100, f, mo).advice)
	}
	m := *mo
	m.cpuPkt = 7
	if adv := project(20_000, f, &m).advice; !strings.Contains(adv, "split") {
		t.Errorf("20,000 nodes: %s", adv)
	}
	var out bytes.Buffer
	printModel(&out, rows, f, mo)
	if !strings.Contains(out.String(), "| 500 |") {
		t.Errorf("report lacks the 500-node row:\n%s", out.String())
	}
}

func TestReadMeasuredNamesMissingColumn(t *testing.T) {
	path := t.TempDir() + "/bad.csv"
	if err := writeFile(path, "n,instances\n50,2\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := readMeasured(path); err == nil || !strings.Contains(err.Error(), `no column "interval_s"`) {
		t.Fatalf("got %v", err)
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }
