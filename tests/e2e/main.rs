//! The one end-to-end test binary: the store conformance suite, the gRPC surface, the CLI, and
//! detection on real free-threaded and ThreadSanitizer builds.

mod cli;
mod detection;
mod faults;
mod fleet;
mod interpreters;
mod protocol;
mod registry;
mod setups;
mod store;
mod verbs;
mod wheels;
mod worker_token;
