//! The conformance suite against the server running in this process on a
//! manual clock.

kv_tests::conformance_suite!(kv_tests::InProcess);
