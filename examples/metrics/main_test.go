package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/aegisipc/aegis/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestQueriesNameExistingMetrics runs the example, crashes its node, and
// checks that every metric named by the README's queries and by
// dashboard.json's panels is in a scrape of /metrics.
func TestQueriesNameExistingMetrics(t *testing.T) {
	want := append(dashboardMetrics(t), readmeMetrics(t)...)
	slices.Sort(want)
	want = slices.Compact(want)
	require.GreaterOrEqual(t, len(want), 8, "names found: %v", want)

	d, err := start("127.0.0.1:0")
	require.NoError(t, err)
	defer d.close()
	testutil.Eventually(t, 10*time.Second, func() bool { return scrape(t, d.URL+"/metrics")["aegis_calls_total"] },
		"calls made before the crash")
	d.crash()
	var missing []string
	testutil.Eventually(t, 20*time.Second, func() bool {
		have := scrape(t, d.URL+"/metrics")
		missing = missing[:0]
		for _, name := range want {
			if !have[name] {
				missing = append(missing, name)
			}
		}
		return len(missing) == 0
	}, "every metric named by the queries is in the scrape; missing: %v", lazy(func() string { return strings.Join(missing, ", ") }))
	t.Logf("all %d metric names of the queries and the dashboard are in the scrape: %v", len(want), want)
}

// lazy is a value whose text is computed when it is printed.
type lazy func() string

func (l lazy) String() string { return l() }

// dashboardMetrics returns the metric names of every panel target's
// expression in dashboard.json.
func dashboardMetrics(t *testing.T) []string {
	data, err := os.ReadFile("dashboard.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(data, &dash))
	require.NotEmpty(t, dash.Panels)
	var names []string
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, "panel %q", p.Title)
		for _, tg := range p.Targets {
			found := metricNames(tg.Expr)
			require.NotEmpty(t, found, "panel %q: no metric in %q", p.Title, tg.Expr)
			names = append(names, found...)
		}
	}
	return names
}

// readmeMetrics returns the metric names of the queries in README.md's
// promql blocks (one query a line; # starts a comment).
func readmeMetrics(t *testing.T) []string {
	data, err := os.ReadFile("README.md")
	require.NoError(t, err)
	var names []string
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, "```promql"):
			in = true
		case strings.HasPrefix(line, "```"):
			in = false
		case in && strings.TrimSpace(line) != "" && !strings.HasPrefix(strings.TrimSpace(line), "#"):
			found := metricNames(line)
			require.NotEmpty(t, found, "README query %q names no metric", line)
			names = append(names, found...)
		}
	}
	require.NotEmpty(t, names, "README has promql queries")
	return names
}

var (
	labelMatchers = regexp.MustCompile(`\{[^}]*\}`)
	grouping      = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ranges        = regexp.MustCompile(`\[[^\]]*\]`)
	strings_      = regexp.MustCompile(`"[^"]*"`)
	identifier    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
)

// promKeywords are PromQL words that are neither functions nor metrics.
var promKeywords = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}

// metricNames returns the metric names in a PromQL expression: the
// identifiers left once label matchers, groupings, ranges and strings are
// removed, minus function calls and keywords.
func metricNames(expr string) []string {
	e := strings_.ReplaceAllString(expr, "")
	e = labelMatchers.ReplaceAllString(e, "")
	e = grouping.ReplaceAllString(e, "")
	e = ranges.ReplaceAllString(e, "")
	var out []string
	for _, m := range identifier.FindAllString(e, -1) {
		if strings.HasSuffix(m, "(") || slices.Contains(promKeywords, m) {
			continue
		}
		out = append(out, m)
	}
	return out
}

func TestMetricNames(t *testing.T) {
	require.Equal(t, []string{"rpc_client_call_duration_seconds_bucket"},
		metricNames(`histogram_quantile(0.99, sum by (le, rpc_method) (rate(rpc_client_call_duration_seconds_bucket{a="b"}[5m])))`))
	require.Equal(t, []string{"a_total", "b"}, metricNames(`sum without (x) (a_total) / on (y) b`))
}

// scrape returns the metric names in a Prometheus text scrape of url.
func scrape(t *testing.T, url string) map[string]bool {
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	names := map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	require.NoError(t, sc.Err())
	return names
}
