//! The environment of a command run for a package: built from an allowlist, never inherited,
//! so no setting, token or credential of the worker reaches a package's code.

use std::ffi::OsString;

/// The worker's own variables a command gets: locale and time zone. PATH is the worker's only
/// when the command's own environment sets none.
const PASSED: [&str; 5] = ["LANG", "LC_ALL", "LC_CTYPE", "TZ", "SOURCE_DATE_EPOCH"];

/// Passed to commands that reach the network (fetches and installs) and to nothing else:
/// how the machine reaches its package index. A proxy URL may hold a password; the operator
/// who set it for installs chose to let install commands use it.
const NETWORK: [&str; 14] = [
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
];

/// The base of a command's environment, before its own variables: the allowed part of the
/// worker's, its HOME and TMPDIR, and a PATH.
pub(crate) fn base(home: &std::path::Path, tmp: &std::path::Path, network: bool) -> Vec<(OsString, OsString)> {
    let allowed = |key: &str| PASSED.contains(&key) || (network && NETWORK.contains(&key));
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| key.to_str().is_some_and(allowed))
        .collect();
    env.push((
        "PATH".into(),
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
    ));
    env.push(("HOME".into(), home.into()));
    env.push(("TMPDIR".into(), tmp.into()));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_variables_pass_and_network_settings_only_with_the_network() {
        let env = |network| {
            base(std::path::Path::new("/h"), std::path::Path::new("/t"), network)
                .into_iter()
                .map(|(k, _)| k.into_string().expect("utf-8"))
                .collect::<Vec<_>>()
        };
        // The test process has variables of its own (CARGO_*, a real HOME): none pass.
        assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
        for network in [false, true] {
            let keys = env(network);
            assert!(
                keys.iter().all(|k| PASSED.contains(&k.as_str())
                    || (network && NETWORK.contains(&k.as_str()))
                    || ["PATH", "HOME", "TMPDIR"].contains(&k.as_str())),
                "{keys:?}"
            );
            assert!(keys.contains(&"HOME".to_string()) && keys.contains(&"PATH".to_string()));
        }
    }
}
