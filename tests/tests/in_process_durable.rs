//! The conformance suite against the durable embedded default (log and
//! snapshots in a temporary data directory) in this process, on a manual
//! clock.

kv_tests::conformance_suite!(kv_tests::InProcessDurable);
