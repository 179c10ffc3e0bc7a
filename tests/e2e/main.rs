//! The one end-to-end test binary: the store conformance suite, the gRPC surface, the CLI,
//! detection on real free-threaded and ThreadSanitizer builds, and the sandbox under attack.

mod cli;
mod detection;
mod disks;
mod faults;
mod fleet;
mod hostile_worker;
mod infrastructure;
mod interpreters;
mod logs;
mod protocol;
mod registry;
mod resume;
mod retention;
mod sandbox;
mod scale;
mod setups;
mod store;
mod verbs;
mod wheels;
mod worker_token;
