//! What pytest-run-parallel says about a thread-stress iteration (`--parallel-threads N`): how
//! many tests it ran in N threads at once and how many it ran once, single-threaded, because
//! they are marked or detected as thread-unsafe. A green stress run covers only the former.

use crate::evidence::ParallelReport;

/// Reads the plugin's lines from the head and the tail of pytest's output:
/// `Collected 12 items to run in parallel` and
/// `4 tests were not run in parallel because of use of thread-unsafe functionality, ...`.
pub fn parse_run_parallel(threads: u32, head: &str, tail: &str) -> ParallelReport {
    let in_parallel = head
        .lines()
        .chain(tail.lines())
        .find_map(|line| number_before(line.trim(), " items to run in parallel"));
    let thread_unsafe = tail
        .lines()
        .rev()
        .find_map(|line| {
            number_before(line.trim(), " tests were not run in parallel")
                .or_else(|| number_before(line.trim(), " test was not run in parallel"))
        })
        .unwrap_or(0);
    ParallelReport {
        threads,
        in_parallel,
        thread_unsafe,
    }
}

/// `12` from `Collected 12 items to run in parallel` for the marker ` items to run in parallel`.
fn number_before(line: &str, marker: &str) -> Option<u32> {
    let before = &line[..line.find(marker)?];
    let digits: String = before
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_counts_are_read_from_head_and_tail() {
        let head = "platform linux -- Python 3.13.5\nplugins: run-parallel-0.10.0\ncollected 5 items\nCollected 1 items to run in parallel\n";
        let tail = "=== pytest-run-parallel report ===\n4 tests were not run in parallel because of use of thread-unsafe functionality, to list the tests ...\n=== 5 passed in 0.61s ===\n";
        let cases = [
            (head, tail, Some(1), 4),
            (head, "=== 5 passed ===\n", Some(1), 0),
            (
                "",
                "1 test was not run in parallel because of use of thread-unsafe functionality\n",
                None,
                1,
            ),
            ("collected 3 items\n", "=== 3 passed ===\n", None, 0),
        ];
        for (head, tail, in_parallel, thread_unsafe) in cases {
            let report = parse_run_parallel(8, head, tail);
            assert_eq!(
                report,
                ParallelReport {
                    threads: 8,
                    in_parallel,
                    thread_unsafe
                },
                "{head:?} / {tail:?}"
            );
        }
    }
}
