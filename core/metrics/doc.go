// Package metrics keeps one engine's figures: bytes, requests and failures
// by transport and by peer, request latencies and sizes, retries,
// recoveries and failovers, and the engine's state at the time it is read
// (batches in flight, notifies queued, registered bytes, each peer's
// transport and connections). It serves them three ways: a
// prometheus.Collector on a registry of the engine's own (Set.Registry,
// served over HTTP by Serve), a Snapshot (what Python's get_metrics
// returns, as JSON), and Mooncake's periodic summary line (Set.Report,
// MC_TE_METRIC).
//
// The names follow Mooncake's next-generation engine (TENT), whose
// exporter writes tent_read_bytes_total{transport} and the like: ours are
// pymooncake_read_bytes_total{transport}, with TENT's suffixes, labels and
// histogram buckets (the latency buckets are the 1-2-5 series of Mooncake's
// MC_TE_METRIC summary, which holds TENT's).
//
// Recording is transport-neutral and costs the data path a few atomic
// additions per batch: the engine resolves a Link (a peer's figures and its
// transport's) once per opened segment, tallies the outcomes of a batch's
// tasks to that peer on its own stack (Tally) and adds the tally to the
// shared counters in one go, with the batch's latency. Nothing allocates,
// no label is looked up, no lock is taken. Peers beyond Config.MaxPeers
// take the label of a peer the engine released (its segments closed), or
// are added up under the label "other", so a scrape stays bounded however
// many peers the engine meets.
//
// A nil *Set and a nil *Link record nothing: an engine built without
// metrics (benchmarks measure their cost that way) pays one nil check per
// batch. Serve's Server owns its goroutine; Close stops it. Report runs on
// the caller's goroutine until its ctx ends.
package metrics
