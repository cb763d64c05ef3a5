package agentproc

import "fmt"

// LoadReport is one JSON line that the load subcommand (aegis load)
// prints: a second's calls ("second") or all of them ("total").
type LoadReport struct {
	Report       string         `json:"report"`
	ElapsedS     float64        `json:"elapsed_s"`
	Calls        int            `json:"calls"` // that finished in the period
	Errors       int            `json:"errors"`
	ErrorSamples []string       `json:"error_samples,omitempty"` // the first few distinct error texts
	P50Ms        float64        `json:"p50_ms"`
	P99Ms        float64        `json:"p99_ms"`
	MaxMs        float64        `json:"max_ms"`
	Instances    map[string]int `json:"instances"` // answers per instance ID, "?" when an answer named none
}

func (r LoadReport) String() string {
	return fmt.Sprintf("%d calls in %.1fs, %d errors, p50 %.1fms, p99 %.1fms, max %.1fms, answers per instance %v",
		r.Calls, r.ElapsedS, r.Errors, r.P50Ms, r.P99Ms, r.MaxMs, r.Instances)
}
