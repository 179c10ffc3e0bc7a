//! `ftsurvey logs RUN PACKAGE ITERATION`: an iteration's full log, fetched through the
//! coordinator from the worker that ran it, while that worker keeps it (the results keep only
//! the last 16 KiB of each stream).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use domain::views::text::neutralise_controls;
use domain::{LogStream, Mode};
use proto::v1;

use crate::remote::{CoordinatorArgs, status_error};

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    coordinator: CoordinatorArgs,
    /// The run's id.
    run_id: String,
    /// The package's name.
    package: String,
    /// The iteration's number, from 1.
    iteration: u32,
    /// The iteration's mode.
    #[arg(long, default_value = "ft", value_name = "MODE",
          value_parser = PossibleValuesParser::new(["ft", "gil"]).try_map(|mode| mode.parse::<Mode>()))]
    mode: Mode,
    /// The test command's standard error.
    #[arg(long, conflicts_with = "stdout")]
    stderr: bool,
    /// The test command's standard output (the default).
    #[arg(long)]
    stdout: bool,
    /// Write the log to FILE byte for byte; without it the log is printed with every control
    /// character but newline and tab shown as U+FFFD.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
}

pub(crate) async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let stream = if args.stderr {
        LogStream::Stderr
    } else {
        LogStream::Stdout
    };
    let what = format!(
        "the {stream} log of {} iteration {} of {} in run {}",
        args.mode, args.iteration, args.package, args.run_id
    );
    let mut client = args.coordinator.connect().await?;
    let request = v1::GetIterationLogRequest {
        run_id: args.run_id.clone(),
        package: args.package.clone(),
        mode: v1::Mode::from(args.mode) as i32,
        iteration: args.iteration,
        stream: v1::LogStream::from(stream) as i32,
    };
    let mut chunks = client
        .get_iteration_log(request)
        .await
        .map_err(|s| status_error(&s))
        .with_context(|| format!("fetching {what}"))?
        .into_inner();
    let mut sink = match &args.output {
        Some(path) => Sink::File(File::create(path)?),
        None => Sink::Terminal(Printer::default()),
    };
    let fetched = async {
        loop {
            let chunk = chunks
                .message()
                .await
                .map_err(|s| status_error(&s))?
                .context("the coordinator ended the log before its end")?;
            if !sink.write(&chunk.data)? {
                // The reader went away (`| head`): it has what it wanted.
                return Ok(());
            }
            if chunk.eof {
                return sink.finish();
            }
        }
    };
    let result: anyhow::Result<()> = fetched.await;
    if result.is_err()
        && let Some(path) = &args.output
    {
        // Half a log is not passed off as the log.
        let _ = std::fs::remove_file(path);
    }
    result.with_context(|| format!("fetching {what}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Where the log goes: a file as it is, or standard output made safe for a terminal.
enum Sink {
    File(File),
    Terminal(Printer),
}

impl Sink {
    /// Writes `data`; false when standard output's reader is gone.
    fn write(&mut self, data: &[u8]) -> anyhow::Result<bool> {
        match self {
            Sink::File(file) => file.write(data).map(|()| true),
            Sink::Terminal(printer) => printer.write(data),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::File(file) => file.finish(),
            Sink::Terminal(mut printer) => printer.finish().map(drop),
        }
    }
}

/// `-o FILE`, written as the chunks come.
struct File {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl File {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(File {
            path: path.to_path_buf(),
            file: std::io::BufWriter::new(file),
        })
    }

    fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(data)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.file
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Prints a log's bytes as text with its control characters neutralised, carrying a UTF-8
/// character cut between two chunks over to the next.
#[derive(Debug, Default)]
struct Printer {
    /// The start of a character the last chunk ended in.
    carried: Vec<u8>,
}

impl Printer {
    /// Prints `data`; false when standard output's reader is gone.
    fn write(&mut self, data: &[u8]) -> anyhow::Result<bool> {
        let complete = self.complete(data);
        print(&String::from_utf8_lossy(&complete))
    }

    /// What is carried and `data`, but for a character cut short at the end, which is carried.
    fn complete(&mut self, data: &[u8]) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.carried);
        bytes.extend_from_slice(data);
        let complete = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            // An error with no length is a character the end cuts short.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => complete_prefix(&bytes),
        };
        self.carried = bytes.split_off(complete);
        bytes
    }

    /// Prints what is carried, as it is: the log ended inside a character.
    fn finish(&mut self) -> anyhow::Result<bool> {
        let carried = std::mem::take(&mut self.carried);
        print(&String::from_utf8_lossy(&carried))
    }
}

/// The length of `bytes` without a character cut short at its end (invalid bytes before it
/// are printed as U+FFFD).
fn complete_prefix(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes: only the last 3 can start one cut short.
    let tail_start = bytes.len().saturating_sub(3);
    (tail_start..bytes.len())
        .find(|&start| {
            let lead = bytes[start];
            let width = match lead {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => return false,
            };
            bytes.len() - start < width && bytes[start + 1..].iter().all(|&b| (0x80..0xC0).contains(&b))
        })
        .unwrap_or(bytes.len())
}

/// Writes `text` to standard output with its control characters neutralised; false when the
/// reader is gone.
fn print(text: &str) -> anyhow::Result<bool> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(neutralise_controls(text).as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error).context("cannot write to standard output"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_chunks_is_carried_over_whole() {
        let text = "é€😀x".as_bytes();
        for cut in 0..=text.len() {
            let mut printer = Printer::default();
            let mut printed = Vec::new();
            for part in [&text[..cut], &text[cut..]] {
                let complete = printer.complete(part);
                assert!(std::str::from_utf8(&complete).is_ok(), "cut at {cut}");
                printed.extend_from_slice(&complete);
            }
            assert!(printer.carried.is_empty(), "cut at {cut}");
            assert_eq!(printed, text, "cut at {cut}");
        }
        // An invalid byte before a character cut short: the cut one is still carried.
        assert_eq!(complete_prefix(b"a\xffb\xe2\x82"), 3);
        assert_eq!(complete_prefix(b"a\xffb"), 3);
    }
}
