//! What every command the worker runs through `sh` needs: quoting its arguments, and names
//! safe for a path.

/// Quotes `value` for `sh`.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `name` with every character but ASCII letters, digits, `-`, `_` and `.` replaced by `_`, so
/// that a package name can name a directory.
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn sanitizing_keeps_safe_characters_and_replaces_the_rest() {
        assert_eq!(sanitize("zope.interface-5_x"), "zope.interface-5_x");
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }
}
