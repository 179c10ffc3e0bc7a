//! Small text helpers the views share: one-line cells, truncation, plain tables.

use comfy_table::{CellAlignment, Table};

/// Whitespace (newlines included) collapsed to single spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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
}
