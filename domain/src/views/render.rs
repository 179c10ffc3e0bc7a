//! Writes a report document as Markdown, plain text, or one self-contained HTML page (inline
//! style and SVG chart, no scripts, nothing fetched).

use std::fmt::Write;
use std::str::FromStr;

use crate::views::report::Block;
use crate::views::show::CategoryCount;
use crate::views::text::plain_table;

/// The formats `report --format` takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReportFormat {
    #[default]
    Markdown,
    Text,
    Html,
}

impl FromStr for ReportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "markdown" | "md" => Ok(ReportFormat::Markdown),
            "text" => Ok(ReportFormat::Text),
            "html" => Ok(ReportFormat::Html),
            _ => Err(format!("unknown format {s:?}: expected markdown, text or html")),
        }
    }
}

/// Renders `blocks` in `format`.
pub fn render_report(blocks: &[Block], format: ReportFormat) -> String {
    match format {
        ReportFormat::Markdown => markdown(blocks),
        ReportFormat::Text => text(blocks),
        ReportFormat::Html => html(blocks),
    }
}

fn markdown(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, title) => {
                let _ = writeln!(out, "{} {}\n", "#".repeat(usize::from(*level)), title);
            }
            Block::Facts(facts) => {
                for (key, value) in facts {
                    let _ = writeln!(out, "- **{key}:** {}", md_cell(value));
                }
                out.push('\n');
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "{text}\n");
            }
            Block::Table(header, rows) => {
                let _ = writeln!(
                    out,
                    "| {} |",
                    header.iter().map(|h| md_cell(h)).collect::<Vec<_>>().join(" | ")
                );
                let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                for row in rows {
                    let _ = writeln!(
                        out,
                        "| {} |",
                        row.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")
                    );
                }
                out.push('\n');
            }
            Block::Code(code) => {
                let _ = writeln!(out, "```\n{}\n```\n", code.replace("```", "'''"));
            }
            Block::Ordered(items) => {
                for (idx, item) in items.iter().enumerate() {
                    let _ = writeln!(out, "{}. {}", idx + 1, md_cell(item));
                }
                out.push('\n');
            }
            Block::Chart(counts) => {
                let _ = writeln!(out, "```\n{}```\n", text_chart(counts));
            }
        }
    }
    out
}

fn text(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, title) => {
                let underline = if *level == 1 { '=' } else { '-' };
                let _ = writeln!(
                    out,
                    "{title}\n{}\n",
                    underline.to_string().repeat(title.chars().count())
                );
            }
            Block::Facts(facts) => {
                let width = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (key, value) in facts {
                    let _ = writeln!(out, "{:<width$}  {value}", format!("{key}:"), width = width + 1);
                }
                out.push('\n');
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "{text}\n");
            }
            Block::Table(header, rows) => {
                let header: Vec<&str> = header.iter().map(String::as_str).collect();
                let _ = writeln!(out, "{}\n", plain_table(&header, rows.clone(), &[]));
            }
            Block::Code(code) => {
                for line in code.lines() {
                    let _ = writeln!(out, "    {line}");
                }
                out.push('\n');
            }
            Block::Ordered(items) => {
                for (idx, item) in items.iter().enumerate() {
                    let _ = writeln!(out, "{:>3}. {item}", idx + 1);
                }
                out.push('\n');
            }
            Block::Chart(counts) => {
                let _ = writeln!(out, "{}", text_chart(counts));
            }
        }
    }
    out
}

fn html(blocks: &[Block]) -> String {
    let title = blocks
        .iter()
        .find_map(|b| match b {
            Block::Heading(1, title) => Some(title.as_str()),
            _ => None,
        })
        .unwrap_or("Report");
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    );
    for block in blocks {
        match block {
            Block::Heading(level, title) => {
                let _ = writeln!(out, "<h{level}>{}</h{level}>", escape(title));
            }
            Block::Facts(facts) => {
                out.push_str("<dl class=\"facts\">\n");
                for (key, value) in facts {
                    let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", escape(key), escape(value));
                }
                out.push_str("</dl>\n");
            }
            Block::Paragraph(text) => {
                let _ = writeln!(out, "<p>{}</p>", code_spans(&escape(text)));
            }
            Block::Table(header, rows) => {
                out.push_str("<table>\n<thead><tr>");
                for cell in header {
                    let _ = write!(out, "<th>{}</th>", escape(cell));
                }
                out.push_str("</tr></thead>\n<tbody>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for cell in row {
                        let _ = write!(out, "<td>{}</td>", escape(cell));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody>\n</table>\n");
            }
            Block::Code(code) => {
                let _ = writeln!(out, "<pre>{}</pre>", escape(code));
            }
            Block::Ordered(items) => {
                out.push_str("<ol>\n");
                for item in items {
                    let _ = writeln!(out, "<li>{}</li>", code_spans(&escape(item)));
                }
                out.push_str("</ol>\n");
            }
            Block::Chart(counts) => out.push_str(&svg_chart(counts)),
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}\
h1{border-bottom:2px solid #444}h2{margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}\
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}\
svg text{font-family:system-ui,sans-serif;font-size:13px}code{background:#f2f2f2;padding:0 .2em}";

/// Bar colours by category: reds for crashes and stalls, greens for compatible.
fn colour(category: &str) -> &'static str {
    match category {
        "crash" => "#b2182b",
        "deadlock" => "#7b3294",
        "intermittent" => "#ef8a62",
        "incompatible" => "#d6604d",
        "tsan_warnings" => "#fdb863",
        "install_failure" | "import_failure" | "harness_error" | "infra_error" => "#999999",
        "compatible_gil_fallback" => "#a6d96a",
        "compatible" => "#1a9641",
        "compatible_by_wheel" => "#66bd63",
        _ => "#bbbbbb",
    }
}

/// A horizontal bar chart of the counts, as inline SVG.
fn svg_chart(counts: &[CategoryCount]) -> String {
    let row_height = 26;
    let label_width = 200;
    let bar_width = 420;
    let height = row_height * counts.len().max(1) + 10;
    let max = counts.iter().map(|c| c.count).max().unwrap_or(1).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"Packages per category\" \
         width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">\n",
        label_width + bar_width + 80,
        label_width + bar_width + 80
    );
    for (idx, count) in counts.iter().enumerate() {
        let y = idx * row_height + 5;
        let width = (bar_width * count.count / max).max(2);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_width}\" y=\"{y}\" width=\"{width}\" height=\"{}\" fill=\"{}\"><title>{}: {}</title></rect>\
             <text x=\"{}\" y=\"{}\">{} ({:.0}%)</text>",
            label_width - 8,
            y + 16,
            escape(&count.category),
            row_height - 6,
            colour(&count.category),
            escape(&count.category),
            count.count,
            label_width + width + 6,
            y + 16,
            count.count,
            count.percent
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Bars of `#` for Markdown and text.
fn text_chart(counts: &[CategoryCount]) -> String {
    let max = counts.iter().map(|c| c.count).max().unwrap_or(1).max(1);
    let mut out = String::new();
    for count in counts {
        let bar = "#".repeat((40 * count.count).div_ceil(max));
        let _ = writeln!(out, "{:<24} {bar} {}", count.category, count.count);
    }
    out
}

/// Markdown code spans as `<code>`: a run of backticks opens a span that the next run of the
/// same length closes (so ``` ``a`b`` ``` holds a backtick), one space of padding on each side
/// is dropped, and a run that nothing closes stays as it is.
fn code_spans(escaped: &str) -> String {
    let mut out = String::new();
    let mut rest = escaped;
    while let Some(open) = rest.find('`') {
        out.push_str(&rest[..open]);
        let fence_len = rest[open..].len() - rest[open..].trim_start_matches('`').len();
        let after = &rest[open + fence_len..];
        match closing_fence(after, fence_len) {
            Some(close) => {
                let inner = &after[..close];
                let inner = match inner.strip_prefix(' ').and_then(|i| i.strip_suffix(' ')) {
                    Some(stripped) if !stripped.is_empty() => stripped,
                    _ => inner,
                };
                let _ = write!(out, "<code>{inner}</code>");
                rest = &after[close + fence_len..];
            }
            None => {
                out.push_str(&rest[open..open + fence_len]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Where in `text` a run of exactly `fence_len` backticks starts.
fn closing_fence(text: &str, fence_len: usize) -> Option<usize> {
    let mut idx = 0;
    while let Some(found) = text[idx..].find('`') {
        let start = idx + found;
        let run = text[start..].len() - text[start..].trim_start_matches('`').len();
        if run == fence_len {
            return Some(start);
        }
        idx = start + run;
    }
    None
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line, pipes escaped, for a Markdown table cell or list item.
fn md_cell(text: &str) -> String {
    crate::views::text::one_line(text).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backticks_become_code_spans_only_in_pairs() {
        assert_eq!(code_spans("run `a` and `b`"), "run <code>a</code> and <code>b</code>");
        assert_eq!(code_spans("a lone ` stays"), "a lone ` stays");
        assert_eq!(code_spans("frame ``a`b`` here"), "frame <code>a`b</code> here");
        assert_eq!(code_spans("`` `edge ``"), "<code>`edge</code>");
        let html = render_report(&[Block::Paragraph("Last output: `x < y`".into())], ReportFormat::Html);
        assert!(html.contains("<p>Last output: <code>x &lt; y</code></p>"), "{html}");
    }
}
