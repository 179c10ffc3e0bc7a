//! Secrets the command line is given: a worker's token file, and the secret environment
//! variables taken out of the process once the flags are parsed, so no child inherits them.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

/// A token file larger than this is not a token: most likely the wrong file.
pub(crate) const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The token in `path` (given as `flag`), without its trailing newline. Refuses a file that is
/// missing, not a regular file, empty or larger than [`MAX_TOKEN_FILE_BYTES`], each in one line.
pub(crate) fn read_token_file(flag: &str, path: &Path) -> anyhow::Result<String> {
    let shown = path.display();
    // Checked before opening: opening a FIFO would wait for a writer.
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot read {flag} {shown}"))?;
    if !metadata.is_file() {
        bail!("{flag} {shown} is not a regular file");
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_TOKEN_FILE_BYTES + 1).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {flag} {shown}"))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        bail!("{flag} {shown} is larger than {MAX_TOKEN_FILE_BYTES} bytes, too large for a token");
    }
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{flag} {shown} is not UTF-8 text"))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.trim().is_empty() {
        bail!("{flag} {shown} is empty");
    }
    Ok(token.to_string())
}

/// The environment variables of the flags whose values `command` keeps out of `--help`: its
/// tokens and passwords, in every subcommand.
pub(crate) fn secret_env_vars(command: &clap::Command) -> Vec<OsString> {
    let mut names: Vec<OsString> = command
        .get_arguments()
        .filter(|arg| arg.is_hide_env_values_set())
        .filter_map(|arg| arg.get_env().map(ToOwned::to_owned))
        .collect();
    for subcommand in command.get_subcommands() {
        names.extend(secret_env_vars(subcommand));
    }
    names.sort();
    names.dedup();
    names
}

/// Takes `names` out of this process's environment, so that no child (an install, a probe,
/// a package's tests) inherits them.
///
/// # Safety
///
/// No other thread may exist: call it from `main` before any runtime or thread starts.
#[allow(unsafe_code)]
pub(crate) unsafe fn remove_from_env(names: &[OsString]) {
    for name in names {
        // SAFETY: the caller guarantees that this process has one thread, so nothing reads or
        // writes the environment at the same time.
        unsafe { std::env::remove_var(name) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_gives_its_token_without_the_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, token) in [
            ("s3cret\n", "s3cret"),
            ("s3cret", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret\n\n", "s3cret"),
        ] {
            let path = dir.path().join("token");
            std::fs::write(&path, text).expect("write");
            assert_eq!(
                read_token_file("--token-file", &path).expect("a token"),
                token,
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_token_file_that_cannot_hold_a_token_is_one_line_naming_it_and_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let large = dir.path().join("large");
        std::fs::write(&large, "x".repeat(MAX_TOKEN_FILE_BYTES as usize + 1)).expect("write");
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe]).expect("write");
        let missing = dir.path().join("missing");
        let cases = [
            (empty.as_path(), "is empty"),
            (large.as_path(), "is larger than 4096 bytes"),
            (binary.as_path(), "is not UTF-8 text"),
            (dir.path(), "is not a regular file"),
            (missing.as_path(), "cannot read --token-file"),
        ];
        for (path, cause) in cases {
            let error = format!("{:#}", read_token_file("--token-file", path).expect_err("refused"));
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(cause), "{error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
    }

    #[test]
    fn the_secret_env_vars_are_the_tokens_and_the_database_url() {
        let names = secret_env_vars(&<crate::Cli as clap::CommandFactory>::command());
        assert_eq!(
            names,
            [
                "FTSURVEY_CLIENT_TOKEN",
                "FTSURVEY_DATABASE_URL",
                "FTSURVEY_WORKER_TOKEN"
            ]
            .map(OsString::from)
        );
    }
}
