//! The one end-to-end test binary: the store conformance suite, the gRPC surface and the CLI.

mod cli;
mod protocol;
mod registry;
mod store;
