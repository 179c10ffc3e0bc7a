//! How long each stage of a job may take. The worker stops a stage at its limit; the
//! coordinator ends a lease at the sum of them all, whatever the worker's heartbeats say, so a
//! worker that keeps a job alive for ever (wedged, or lying) cannot keep it from the fleet.

use std::time::Duration;

use crate::spec::{PackageSpec, RunOptions};

/// Getting a package's source: a download, a clone or a copy.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Installing it and its test dependencies into a fresh venv.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Importing it to see what its extensions do to the GIL.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Beyond the stages: waiting for another slot's setup of the same package, dumping a stuck
/// suite's stacks, ending its processes, spooling and sending the outcome.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10 * 60);

impl RunOptions {
    /// The longest a worker may hold a job of `package`: a setup from scratch, the iteration's
    /// timeout and the margin.
    pub fn lease_deadline(&self, package: &PackageSpec) -> Duration {
        FETCH_TIMEOUT
            + INSTALL_TIMEOUT
            + PROBE_TIMEOUT
            + Duration::from_secs(self.effective_timeout_secs(package))
            + LEASE_MARGIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_deadline_adds_the_packages_own_timeout_to_a_full_setup() {
        let options = RunOptions::default();
        let mut package = crate::spec::tests::package("a");
        assert_eq!(
            options.lease_deadline(&package),
            Duration::from_secs((15 + 30 + 10 + 10) * 60 + 600)
        );
        package.timeout_secs = Some(7 * 24 * 3600);
        assert_eq!(
            options.lease_deadline(&package),
            Duration::from_secs((15 + 30 + 10 + 10) * 60 + 7 * 24 * 3600)
        );
    }
}
