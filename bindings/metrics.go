package bindings

import "encoding/json"

// Metrics returns the engine's figures (get_metrics, a pymooncake
// addition) as a JSON object: core/metrics.Snapshot.
func (e *Engine) Metrics() (snapshot string, err error) {
	const op = "get_metrics"
	defer recoverInto(op, e.log, &err)
	if err := e.check(op); err != nil {
		return "", err
	}
	b, err := json.Marshal(e.eng.Metrics())
	if err != nil {
		return "", fail(op, err)
	}
	return string(b), nil
}
