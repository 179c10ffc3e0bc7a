//! Which environment variables a registry file may set for its package's commands.
//!
//! A registry's `env` reaches every command the worker runs for the package after fetching its
//! source: the venv's creation, the install command, the import check, the extension probe
//! and each iteration. Its install and test commands are shell already, so an entry can run
//! what it likes; but it does so where an operator reading the registry (`registry validate`,
//! `run --dry-run`) sees it. Some variables run code, or change what runs, without appearing
//! in any command: they hijack the dynamic loader, the shell, the interpreter's startup, the
//! installers and git, whom downloads trust, or the harness itself, in the tool's own commands
//! as much as in the package's. Those are refused unless the operator allows them by name
//! (`--allow-env KEY`); whatever one would do can be done in the open, in the command itself
//! (`PYTHONPATH=src python -m pytest`). The harness's own variables cannot be allowed.
//!
//! Keys are matched whatever their case: some programs read lowercase forms (`http_proxy`).

use std::collections::BTreeSet;

/// Why an environment key is refused in a registry file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvRefusal {
    /// Why the variable is dangerous, as a lowercase fragment.
    pub why: &'static str,
    /// Whether an operator may allow it (`--allow-env`); the harness's own never.
    pub allowable: bool,
}

/// Environment keys an operator allowed registry files to set although they are refused by
/// default; exact names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedEnv(BTreeSet<String>);

impl AllowedEnv {
    /// The keys an operator named; refuses a name that is no variable name or that no one may
    /// allow (the harness's own).
    pub fn new(keys: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut allowed = BTreeSet::new();
        for key in keys {
            crate::spec::PackageSpec::check_env_key(&key)?;
            if let Some(refusal) = refusal(&key).filter(|r| !r.allowable) {
                return Err(format!("env key {key:?} cannot be allowed: {}", refusal.why));
            }
            allowed.insert(key);
        }
        Ok(AllowedEnv(allowed))
    }

    /// Whether the operator allowed exactly this key.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains(key)
    }

    /// The allowed keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// Why a registry file may not set `key`, or `None` when it may; `allowed` holds the keys the
/// operator allowed.
pub fn check_registry_env_key(key: &str, allowed: &AllowedEnv) -> Option<EnvRefusal> {
    refusal(key).filter(|r| !(r.allowable && allowed.contains(key)))
}

/// Why `key` is refused by default, whatever the operator allows.
pub fn refusal(key: &str) -> Option<EnvRefusal> {
    let upper = key.to_ascii_uppercase();
    RULES.iter().find_map(|(pattern, why, allowable)| {
        let hit = match pattern {
            Pattern::Exact(name) => upper == *name,
            Pattern::Prefix(prefix) => upper.starts_with(prefix),
            Pattern::Suffix(suffix) => upper.ends_with(suffix),
        };
        hit.then_some(EnvRefusal {
            why,
            allowable: *allowable,
        })
    })
}

/// How a rule names the keys it refuses (upper case).
enum Pattern {
    Exact(&'static str),
    Prefix(&'static str),
    Suffix(&'static str),
}

const LOADER: &str = "it makes the dynamic loader load other code into every process, the tool's own included";
const SHELL: &str = "it changes what the shell running every command reads, runs or finds";
const INTERPRETER: &str = "it changes what every Python process loads at startup, pip and the import check included";
const PLACES: &str =
    "the worker gives each setup and iteration its own, and pip and git read their configuration there";
const INSTALLER: &str =
    "it changes where the installers get packages from and whether they check them, or their shared cache";
const GIT: &str = "it changes what git runs, which configuration it reads and where it fetches from";
const TRUST: &str = "it changes which servers downloads trust or pass through, or loads code into every TLS client";
const HARNESS: &str = "it is the harness's own, which the worker sets for every command";
const GIL: &str = "the harness sets it: each mode's value in the tests, unset in the extension probe";
const VENV: &str = "the tool sets it to the package's venv, where uv installs";

/// The refused keys, each with why and whether an operator may allow it; first match wins.
const RULES: [(Pattern, &str, bool); 38] = [
    // The harness: its process marker, dump signal and worker directory, and the GIL mode.
    (Pattern::Prefix("FTSURVEY_"), HARNESS, false),
    (Pattern::Exact("PYTHON_GIL"), GIL, false),
    (Pattern::Exact("VIRTUAL_ENV"), VENV, true),
    // The dynamic loader (glibc's LD_*, macOS's DYLD_*, iconv's modules).
    (Pattern::Prefix("LD_"), LOADER, true),
    (Pattern::Prefix("DYLD_"), LOADER, true),
    (Pattern::Exact("GCONV_PATH"), LOADER, true),
    // The shell that runs every command: files it sources, options, tracing, word splitting,
    // where `cd` and command lookup go.
    (Pattern::Exact("PATH"), SHELL, true),
    (Pattern::Exact("BASH_ENV"), SHELL, true),
    (Pattern::Exact("ENV"), SHELL, true),
    (Pattern::Exact("SHELLOPTS"), SHELL, true),
    (Pattern::Exact("BASHOPTS"), SHELL, true),
    (Pattern::Exact("PS4"), SHELL, true),
    (Pattern::Exact("IFS"), SHELL, true),
    (Pattern::Exact("CDPATH"), SHELL, true),
    (Pattern::Exact("GLOBIGNORE"), SHELL, true),
    // The interpreter's startup: sys.path (a sitecustomize or .pth file there runs first),
    // the standard library, startup files, the user site.
    (Pattern::Exact("PYTHONPATH"), INTERPRETER, true),
    (Pattern::Exact("PYTHONHOME"), INTERPRETER, true),
    (Pattern::Exact("PYTHONSTARTUP"), INTERPRETER, true),
    (Pattern::Exact("PYTHONUSERBASE"), INTERPRETER, true),
    (Pattern::Exact("PYTHONINSPECT"), INTERPRETER, true),
    (Pattern::Exact("PYTHONEXECUTABLE"), INTERPRETER, true),
    (Pattern::Exact("PYTHONPLATLIBDIR"), INTERPRETER, true),
    // Where tools find their home and configuration.
    (Pattern::Exact("HOME"), PLACES, true),
    (Pattern::Exact("TMPDIR"), PLACES, true),
    (Pattern::Exact("XDG_CONFIG_HOME"), PLACES, true),
    (Pattern::Exact("XDG_CONFIG_DIRS"), PLACES, true),
    // The installers: index URLs, trusted hosts, configuration files, the shared caches.
    (Pattern::Prefix("PIP_"), INSTALLER, true),
    (Pattern::Prefix("UV_"), INSTALLER, true),
    // git: GIT_SSH_COMMAND, GIT_CONFIG_*, GIT_EXEC_PATH, GIT_DIR...; ssh's password program.
    (Pattern::Prefix("GIT_"), GIT, true),
    (Pattern::Exact("SSH_ASKPASS"), GIT, true),
    // Whom downloads trust and go through: proxies (any case), CA bundles, OpenSSL's
    // configuration, which can load engines and providers.
    (Pattern::Suffix("_PROXY"), TRUST, true),
    (Pattern::Exact("SSL_CERT_FILE"), TRUST, true),
    (Pattern::Exact("SSL_CERT_DIR"), TRUST, true),
    (Pattern::Exact("REQUESTS_CA_BUNDLE"), TRUST, true),
    (Pattern::Exact("CURL_CA_BUNDLE"), TRUST, true),
    (Pattern::Exact("PYTHONHTTPSVERIFY"), TRUST, true),
    (Pattern::Prefix("OPENSSL_"), TRUST, true),
    (Pattern::Exact("SSLKEYLOGFILE"), TRUST, true),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_that_hijack_the_loader_shell_interpreter_installers_git_trust_or_harness_are_refused() {
        let none = AllowedEnv::default();
        for key in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "DYLD_INSERT_LIBRARIES",
            "GCONV_PATH",
            "PATH",
            "BASH_ENV",
            "ENV",
            "SHELLOPTS",
            "PS4",
            "IFS",
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            "PYTHONUSERBASE",
            "PYTHONINSPECT",
            "PYTHONEXECUTABLE",
            "HOME",
            "TMPDIR",
            "XDG_CONFIG_HOME",
            "PIP_INDEX_URL",
            "PIP_TRUSTED_HOST",
            "PIP_CONFIG_FILE",
            "UV_INDEX_URL",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_COUNT",
            "http_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "PYTHONHTTPSVERIFY",
            "OPENSSL_CONF",
            "FTSURVEY_WORKER_DIR",
            "PYTHON_GIL",
            "VIRTUAL_ENV",
            "ld_preload",
        ] {
            assert!(check_registry_env_key(key, &none).is_some(), "{key} passes");
        }
    }

    #[test]
    fn ordinary_test_and_build_settings_pass() {
        let none = AllowedEnv::default();
        for key in [
            "PYTHONHASHSEED",
            "PYTHONDEVMODE",
            "PYTHONWARNINGS",
            "PYTEST_ADDOPTS",
            "TSAN_OPTIONS",
            "CFLAGS",
            "LDFLAGS",
            "SETUPTOOLS_SCM_PRETEND_VERSION",
            "OMP_NUM_THREADS",
            "PIPX",
            "GITHUB_ACTIONS",
            "ENVIRONMENT",
        ] {
            assert_eq!(check_registry_env_key(key, &none), None, "{key}");
        }
    }

    #[test]
    fn an_operator_may_allow_a_refused_key_by_name_but_never_the_harnesss_own() {
        let allowed = AllowedEnv::new(["PYTHONPATH".to_string(), "LD_LIBRARY_PATH".to_string()]).expect("allowable");
        assert_eq!(check_registry_env_key("PYTHONPATH", &allowed), None);
        assert_eq!(check_registry_env_key("LD_LIBRARY_PATH", &allowed), None);
        assert!(
            check_registry_env_key("LD_PRELOAD", &allowed).is_some(),
            "one key allows no other of its group"
        );
        assert!(
            check_registry_env_key("pythonpath", &allowed).is_some(),
            "names are exact"
        );
        for key in ["FTSURVEY_PROCESS_TREE", "PYTHON_GIL"] {
            let error = AllowedEnv::new([key.to_string()]).expect_err(key);
            assert!(error.contains("cannot be allowed"), "{error}");
        }
        assert!(AllowedEnv::new(["A=B".to_string()]).is_err());
    }
}
