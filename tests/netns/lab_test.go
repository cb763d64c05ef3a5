//go:build linux

// This file holds the lab: one namespace per host, each linked by a veth
// pair to a bridge in a hub namespace of its own, so that no test touches
// the networking of the namespace it runs in; and the faults the tests
// inject into those links.

package netns

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aegisipc/aegis/internal/agentproc"
)

// subnets are the candidate subnets of a lab; the first that overlaps no
// address of the test's own namespace is used.
var subnets = []string{"10.77.0.0/24", "10.78.0.0/24", "10.79.0.0/24", "172.31.77.0/24"}

// host is one namespace of a lab.
type host struct {
	name  string // n1…n5, or c for the client
	ns    string // namespace name
	hubIf string // the hub's end of the host's veth pair, a bridge port
	addr  netip.Addr
}

// gossipAddr returns the host's address with the gossip port.
func (h *host) gossipAddr() string { return netip.AddrPortFrom(h.addr, gossipPort).String() }

// hostIf is the name of every host's end of its veth pair.
const hostIf = "eth0"

// lab is a set of namespaces joined by a bridge in the hub namespace.
type lab struct {
	t      *testing.T
	prefix string // "aeg" and five random hex digits; starts every name
	hub    string // the hub namespace
	bridge string
	subnet netip.Prefix
	hosts  []*host

	mu     sync.Mutex // guards method
	method map[string]string
}

// newLab makes a namespace for each name, a hub namespace with a bridge,
// and a veth pair from each host to the bridge; host i gets the subnet's
// address i+1. Everything is deleted when the test ends, failed or not.
// The test is skipped when ip netns add is refused.
func newLab(t *testing.T, names ...string) *lab {
	t.Helper()
	requireLab(t)
	l := &lab{t: t, prefix: fmt.Sprintf("aeg%05x", rand.N(1<<20)), method: map[string]string{}}
	l.hub = l.prefix + "-hub"
	l.bridge = l.prefix + "br"
	l.subnet = pickSubnet(t)

	if out, err := exec.Command("ip", "netns", "add", l.hub).CombinedOutput(); err != nil {
		t.Skipf("skipped: ip netns add refused (%v: %s); the tests need root with CAP_SYS_ADMIN and CAP_NET_ADMIN", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(l.checkGone) // registered first, so it runs after every other cleanup of the lab
	l.cleanupNamespace(l.hub)
	l.ip("-n", l.hub, "link", "set", "lo", "up")
	l.ip("-n", l.hub, "link", "add", l.bridge, "type", "bridge")
	l.ip("-n", l.hub, "link", "set", l.bridge, "up")

	for i, name := range names {
		h := &host{name: name, ns: l.prefix + "-" + name, hubIf: l.prefix + "h" + name, addr: l.subnet.Addr()}
		for range i + 1 {
			h.addr = h.addr.Next()
		}
		l.ip("netns", "add", h.ns)
		l.cleanupNamespace(h.ns)
		l.ip("-n", l.hub, "link", "add", h.hubIf, "type", "veth", "peer", "name", hostIf, "netns", h.ns)
		l.ip("-n", l.hub, "link", "set", h.hubIf, "master", l.bridge)
		l.ip("-n", l.hub, "link", "set", h.hubIf, "up")
		l.ip("-n", h.ns, "addr", "add", netip.PrefixFrom(h.addr, l.subnet.Bits()).String(), "dev", hostIf)
		l.ip("-n", h.ns, "link", "set", hostIf, "up")
		l.ip("-n", h.ns, "link", "set", "lo", "up")
		l.hosts = append(l.hosts, h)
	}
	t.Logf("lab %s: %d hosts on %v behind bridge %s in namespace %s", l.prefix, len(names), l.subnet, l.bridge, l.hub)
	return l
}

// host returns the host named name.
func (l *lab) host(name string) *host {
	i := slices.IndexFunc(l.hosts, func(h *host) bool { return h.name == name })
	if i < 0 {
		l.t.Fatalf("lab has no host %q", name)
	}
	return l.hosts[i]
}

// pickSubnet returns the first candidate subnet that overlaps no IPv4
// address of this namespace.
func pickSubnet(t *testing.T) netip.Prefix {
	t.Helper()
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -4 -o addr show: %v: %s", err, out)
	}
	var own []netip.Prefix
	for _, f := range regexp.MustCompile(`inet (\S+)`).FindAllStringSubmatch(string(out), -1) {
		if p, err := netip.ParsePrefix(f[1]); err == nil {
			own = append(own, p.Masked())
		}
	}
	for _, s := range subnets {
		p := netip.MustParsePrefix(s)
		if !slices.ContainsFunc(own, p.Overlaps) {
			return p
		}
	}
	t.Skipf("skipped: every candidate subnet %v overlaps an address of this host (%v)", subnets, own)
	return netip.Prefix{}
}

// ip runs the ip command and fails the test on error.
func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

// tc runs the tc command and returns its output and error.
func tc(args ...string) (string, error) {
	out, err := exec.Command("tc", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("tc %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// cleanupNamespace deletes namespace ns when the test ends. Registered
// right after the namespace is made, so it runs after the cleanups of
// every process started in it.
func (l *lab) cleanupNamespace(ns string) {
	l.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			l.t.Errorf("ip netns del %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
		}
	})
}

// checkGone fails the test when a namespace of the lab is still listed
// after every cleanup ran.
func (l *lab) checkGone() {
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		l.t.Errorf("ip netns list: %v: %s", err, out)
		return
	}
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, l.prefix) {
			l.t.Errorf("namespace left behind: %s", strings.TrimSpace(line))
		}
	}
}

// noteMethod records (and logs once) how a fault is made.
func (l *lab) noteMethod(fault, how string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.method[fault] != how {
		l.method[fault] = how
		l.t.Logf("%s made with %s", fault, how)
	}
}

// partition takes the hub's end of h's link down: h can reach no one and
// no one can reach h, as if its cable were pulled. heal undoes it.
func (l *lab) partition(h *host) { l.ip("-n", l.hub, "link", "set", h.hubIf, "down") }

func (l *lab) heal(h *host) { l.ip("-n", l.hub, "link", "set", h.hubIf, "up") }

// lossFilter is a classic BPF program for tc's bpf classifier: it matches
// a packet (returns -1, "use the filter's classid") when a random 32-bit
// number is below the threshold in its second instruction, else returns 0
// (no match). Fill in the threshold with fmt.Sprintf.
const lossFilter = "4,32 0 0 4294963256,53 1 0 %d,6 0 0 4294967295,6 0 0 0"

// addLoss makes every link drop the given percentage of the packets the
// hub sends into it, so each packet between two hosts (which crosses the
// hub once) is lost with that probability, in either direction, without
// its sender being told (no local drop). It uses netem where the kernel
// has it; otherwise an htb qdisc whose second class holds a pfifo of
// length 0 (which drops whatever is put in it) and a classic BPF filter
// that puts a random share of packets there. The returned function
// removes the loss and returns, per link, the packets sent and dropped by
// the qdisc.
func (l *lab) addLoss(percent float64) (remove func() map[string][2]int) {
	l.t.Helper()
	pct := strconv.FormatFloat(percent, 'f', -1, 64) + "%"
	for _, h := range l.hosts {
		out, err := tc("-n", l.hub, "qdisc", "add", "dev", h.hubIf, "root", "netem", "loss", pct)
		if err == nil {
			l.noteMethod("packet loss", "tc netem loss "+pct)
			continue
		}
		if !strings.Contains(out, "unknown") {
			l.t.Fatal(err)
		}
		threshold := uint64(percent / 100 * (1 << 32))
		for _, args := range [][]string{
			{"qdisc", "add", "dev", h.hubIf, "root", "handle", "1:", "htb", "default", "1"},
			{"class", "add", "dev", h.hubIf, "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit", "quantum", "60000"},
			{"class", "add", "dev", h.hubIf, "parent", "1:", "classid", "1:2", "htb", "rate", "10gbit", "quantum", "60000"},
			{"qdisc", "add", "dev", h.hubIf, "parent", "1:2", "handle", "20:", "pfifo", "limit", "0"},
			{"filter", "add", "dev", h.hubIf, "parent", "1:", "protocol", "all", "prio", "1", "bpf",
				"bytecode", fmt.Sprintf(lossFilter, threshold), "classid", "1:2"},
		} {
			if _, err := tc(append([]string{"-n", l.hub}, args...)...); err != nil {
				l.t.Fatal(err)
			}
		}
		l.noteMethod("packet loss", "a random classic BPF tc filter into a zero-length pfifo (this kernel has no netem), "+pct)
	}
	var once sync.Once
	var stats map[string][2]int
	remove = func() map[string][2]int {
		once.Do(func() {
			stats = map[string][2]int{}
			for _, h := range l.hosts {
				out, err := tc("-s", "-n", l.hub, "qdisc", "show", "dev", h.hubIf)
				if err != nil {
					l.t.Error(err)
				}
				stats[h.name] = qdiscCounts(out)
				if _, err := tc("-n", l.hub, "qdisc", "del", "dev", h.hubIf, "root"); err != nil {
					l.t.Error(err)
				}
			}
		})
		return stats
	}
	l.t.Cleanup(func() { remove() })
	return remove
}

// qdiscCounts returns the packets sent and dropped by the first (root)
// qdisc in the output of tc -s qdisc show.
func qdiscCounts(out string) [2]int {
	m := regexp.MustCompile(`Sent \d+ bytes (\d+) pkt \(dropped (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return [2]int{}
	}
	sent, _ := strconv.Atoi(m[1])
	dropped, _ := strconv.Atoi(m[2])
	return [2]int{sent, dropped}
}

// addDelay delays every frame h sends into its link by d; frames to h are
// not delayed (as netem delay on h's end of the link would do), so h's
// round trips grow by d. It uses netem where the kernel has it; otherwise
// a helper process in the hub namespace (see delayer_test.go) takes the
// hub's end of h's link off the bridge and forwards frames between it and
// a new veth pair on the bridge, holding those from h for d. The returned
// function removes the delay.
func (l *lab) addDelay(h *host, d time.Duration) (remove func()) {
	l.t.Helper()
	out, err := tc("-n", h.ns, "qdisc", "add", "dev", hostIf, "root", "netem", "delay", d.String())
	if err == nil {
		l.noteMethod("delay", "tc netem delay "+d.String())
		var once sync.Once
		remove = func() {
			once.Do(func() {
				if _, err := tc("-n", h.ns, "qdisc", "del", "dev", hostIf, "root"); err != nil {
					l.t.Error(err)
				}
			})
		}
		l.t.Cleanup(remove)
		return remove
	}
	if !strings.Contains(out, "unknown") && !strings.Contains(err.Error(), "executable file not found") {
		l.t.Fatal(err)
	}
	l.noteMethod("delay", "a forwarding helper on AF_PACKET sockets in the hub (this kernel has no netem), "+d.String()+" one way")

	bridgeSide, helperSide := l.prefix+"d"+h.name, l.prefix+"e"+h.name
	l.ip("-n", l.hub, "link", "add", bridgeSide, "type", "veth", "peer", "name", helperSide)
	l.t.Cleanup(func() { _ = exec.Command("ip", "-n", l.hub, "link", "del", bridgeSide).Run() })
	l.ip("-n", l.hub, "link", "set", bridgeSide, "master", l.bridge)
	l.ip("-n", l.hub, "link", "set", bridgeSide, "up")
	l.ip("-n", l.hub, "link", "set", helperSide, "up")

	p := startHelper(l.t, "delay-"+h.name, l.hub, helperDelay, map[string]string{
		delayFromEnv: h.hubIf, delayToEnv: helperSide, delayEnv: d.String(),
	})
	if !waitFor(10*time.Second, func() bool {
		return len(p.stdout.Find(func(ln agentproc.Line) bool { return ln.Raw == "ready" })) > 0 || !p.Alive()
	}) || !p.Alive() {
		l.t.Fatalf("the delay helper did not start; its output:\n%s", p.stderr.Tail(20))
	}
	l.ip("-n", l.hub, "link", "set", h.hubIf, "nomaster")
	var once sync.Once
	remove = func() {
		once.Do(func() {
			p.stop(l.t)
			l.ip("-n", l.hub, "link", "set", h.hubIf, "master", l.bridge)
			l.ip("-n", l.hub, "link", "del", bridgeSide)
			if s := p.stderr.Tail(5); s != "" {
				l.t.Logf("delay helper said:\n%s", s)
			}
		})
	}
	l.t.Cleanup(remove)
	return remove
}
