//! Small text helpers the views share: one-line cells, truncation, plain tables, and making
//! text a package wrote safe for whoever reads it (a terminal, a Markdown renderer).

use std::borrow::Cow;

use comfy_table::{CellAlignment, Table};

/// What stands for a control character a package printed.
const REPLACEMENT: char = '\u{FFFD}';

/// Whitespace (newlines included) collapsed to single spaces, control characters replaced.
pub fn one_line(text: &str) -> String {
    neutralise_controls(&text.split_whitespace().collect::<Vec<_>>().join(" ")).into_owned()
}

/// `text` with every control character but newline and tab replaced by U+FFFD, so that what a
/// package printed (an escape sequence, a carriage return, a bell) cannot move the cursor,
/// recolour or retitle a terminal, or hide text, when a view shows it.
pub fn neutralise_controls(text: &str) -> Cow<'_, str> {
    let is_unsafe = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(is_unsafe) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if is_unsafe(c) { REPLACEMENT } else { c })
            .collect(),
    )
}

/// `text` on one line with nothing else changed: each line break shown as `⏎` (in a command it
/// separates commands, so it must stay visible, not become a space), other control characters
/// neutralised. For what a registry sets, which its author wrote for workers to run.
pub fn one_line_visible(text: &str) -> String {
    neutralise_controls(&text.replace("\r\n", "\n").replace('\n', "\u{23CE}")).into_owned()
}

/// `text` as one Markdown code span: fenced with one backtick more than its longest run of
/// backticks, and padded with spaces when it starts or ends with one, so no backtick inside can
/// close the span early.
pub fn code_span(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// At most `max_chars` characters, ending in `...` when cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// `one_line` then `truncate`.
pub fn cell(text: &str, max_chars: usize) -> String {
    truncate(&one_line(text), max_chars)
}

/// `s` when `n` is not 1.
pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A table in the plain ASCII style every view uses, with `right` columns right-aligned.
pub fn plain_table(header: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> Table {
    let mut table = Table::new();
    table.load_style(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED);
    table.set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    for index in right {
        if let Some(column) = table.column_mut(*index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_one_line_and_bounded() {
        assert_eq!(cell("a\n  b\tc", 80), "a b c");
        assert_eq!(cell(&"x".repeat(10), 6), "xxx...");
        assert_eq!(truncate("short", 5), "short");
        assert_eq!((plural(1), plural(2)), ("", "s"));
    }

    #[test]
    fn control_characters_never_reach_the_reader() {
        let hostile = "ok\u{1b}[2J\u{1b}]0;pwned\u{7}\rgone\u{9b}31m";
        let shown = neutralise_controls(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert_eq!(shown.matches('\u{FFFD}').count(), 5, "{shown:?}");
        assert_eq!(neutralise_controls("line\n\tindented"), "line\n\tindented");
        assert!(matches!(neutralise_controls("plain"), Cow::Borrowed(_)));
        assert!(!cell(hostile, 80).contains('\u{1b}'));
    }

    #[test]
    fn a_command_on_one_line_keeps_its_line_breaks_visible_and_its_controls_neutralised() {
        assert_eq!(one_line_visible("make\nrm -rf x"), "make\u{23CE}rm -rf x");
        assert_eq!(one_line_visible("a\r\nb\t\u{1b}[2J"), "a\u{23CE}b\t\u{FFFD}[2J");
        assert_eq!(one_line_visible("  two  spaces "), "  two  spaces ");
    }

    #[test]
    fn a_code_span_cannot_be_closed_by_what_it_holds() {
        assert_eq!(code_span("f()"), "`f()`");
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("x```y"), "````x```y````");
        assert_eq!(code_span("`edge"), "`` `edge ``");
    }
}
