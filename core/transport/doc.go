// Package transport is the contract between the engine and the packages
// that move bytes (tcp, rdma, barex, and the same-host transports).
//
// The engine owns Tasks and Groups; a transport only moves bytes and reports
// each Task's outcome through PartDone. Completion is tracked with atomics so
// that polling a status never takes a lock (Mooncake lost half its throughput
// to a global lock in status polling, issue #1303).
//
// A transport implements Transport, plus whichever optional interface fits
// what it does (Describer, Registrar, Connector, HealthReporter,
// CloseCounter, ConnCounter, StreamSubmitter). A transport records no
// metrics: the engine records them from the tasks' outcomes, the same way
// for all; ConnCounter tells it what only the transport knows. The engine never names a concrete transport: it picks one
// per peer with Accept, from the peer's descriptor, and branches on errors
// only through the sentinels of errors.go. Only the composition root
// (package core) builds transports.
//
// Ownership: the engine hands each Task to one Submit and keeps it until the
// task has finished; a transport never touches a task's memory after
// finishing it. Close stops a transport and waits for its goroutines.
package transport
