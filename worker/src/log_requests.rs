//! Answers the coordinator's requests for a piece of an iteration's full log (`LogRequest` in
//! worker.proto): read from this worker's own logs directory only, along the path the
//! request's ids name, following no symbolic link on the way (a test suite may write in its
//! iteration's log directory, and could leave a link there), in chunks of at most
//! `MAX_LOG_CHUNK_BYTES`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::Path;

use domain::iteration_log::MAX_LOG_CHUNK_BYTES;
use domain::{LogRequest, LogStream};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::iteration_logs::log_dir_names;

/// What the worker answers a log request with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogAnswer {
    /// Bytes from the request's offset; `eof` when they reach the log's end as it is now.
    Data { data: Vec<u8>, eof: bool },
    /// The log is not on this worker's disk: deleted, or never written.
    Gone(String),
    /// The log is not read: a link, not a regular file, or unreadable.
    Refused(String),
}

/// Reads what `request` asks for from the logs under `logs_root`.
pub(crate) fn answer(logs_root: &Path, request: &LogRequest) -> LogAnswer {
    let mut names = log_dir_names(&request.key).to_vec();
    names.push(file_name(request.stream).to_string());
    let shown = names.join("/");
    let mut file = match open_beneath(logs_root, &names) {
        Ok(file) => file,
        Err(Errno::ENOENT) => return LogAnswer::Gone(format!("{shown} is no longer kept")),
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return LogAnswer::Refused(format!(
                "{shown} is not read: a symbolic link or another file stands on its path"
            ));
        }
        Err(errno) => return LogAnswer::Refused(format!("cannot open {shown}: {}", errno.desc())),
    };
    let length = match file.metadata() {
        Ok(metadata) if metadata.is_file() => metadata.len(),
        Ok(_) => return LogAnswer::Refused(format!("{shown} is not read: it is not a regular file")),
        Err(error) => return LogAnswer::Refused(format!("cannot read {shown}: {error}")),
    };
    let max_bytes = request.max_bytes.min(MAX_LOG_CHUNK_BYTES);
    let mut data = Vec::new();
    if request.offset < length {
        let read = file
            .seek(SeekFrom::Start(request.offset))
            .and_then(|_| (&mut file).take(u64::from(max_bytes)).read_to_end(&mut data));
        if let Err(error) = read {
            return LogAnswer::Refused(format!("cannot read {shown}: {error}"));
        }
    }
    let eof = request.offset.saturating_add(data.len() as u64) >= length;
    LogAnswer::Data { data, eof }
}

/// The file of one log in an iteration's log directory.
fn file_name(stream: LogStream) -> &'static str {
    match stream {
        LogStream::Stdout => "stdout.log",
        LogStream::Stderr => "stderr.log",
    }
}

/// Opens the file at `names` below `root`, one name at a time and each without following a
/// symbolic link: directories, then a file opened without blocking (a FIFO left in its place
/// would otherwise hold the read for ever).
fn open_beneath(root: &Path, names: &[String]) -> Result<File, Errno> {
    let (file, dirs) = names.split_last().ok_or(Errno::ENOENT)?;
    let mut dir: OwnedFd = File::open(root)
        .map_err(|error| error.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?
        .into();
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for name in dirs {
        dir = openat(&dir, name.as_str(), flags | OFlag::O_DIRECTORY, Mode::empty())?;
    }
    openat(&dir, file.as_str(), flags | OFlag::O_NONBLOCK, Mode::empty()).map(File::from)
}

#[cfg(test)]
mod tests {
    use domain::{IterationLogKey, RunId};

    use super::*;

    fn request(run_id: RunId, stream: LogStream, offset: u64, max_bytes: u32) -> LogRequest {
        LogRequest {
            request_id: 7,
            key: IterationLogKey {
                run_id,
                package: "ftfix-fail".into(),
                mode: domain::Mode::Ft,
                iteration: 2,
                attempt: 1,
            },
            stream,
            offset,
            max_bytes,
        }
    }

    /// A logs root with the log directory of `request(run_id, ..)`, returned as (root, dir).
    fn logs(run_id: RunId) -> (tempfile::TempDir, std::path::PathBuf) {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp
            .path()
            .join("logs")
            .join(run_id.to_string())
            .join("ftfix-fail/ft-2-a1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        (temp, dir)
    }

    #[test]
    fn a_log_is_read_in_bounded_pieces_from_the_offset_with_eof_at_its_end() {
        let run_id = RunId::new_at(1);
        let (temp, dir) = logs(run_id);
        let root = temp.path().join("logs");
        std::fs::write(dir.join("stdout.log"), b"0123456789").expect("write");
        assert_eq!(
            answer(&root, &request(run_id, LogStream::Stdout, 0, 4)),
            LogAnswer::Data {
                data: b"0123".to_vec(),
                eof: false
            }
        );
        assert_eq!(
            answer(&root, &request(run_id, LogStream::Stdout, 6, 4)),
            LogAnswer::Data {
                data: b"6789".to_vec(),
                eof: true
            }
        );
        assert_eq!(
            answer(&root, &request(run_id, LogStream::Stdout, 50, 4)),
            LogAnswer::Data {
                data: Vec::new(),
                eof: true
            }
        );
        // More than a chunk's bound is never read at once.
        std::fs::write(dir.join("stderr.log"), vec![b'x'; MAX_LOG_CHUNK_BYTES as usize + 10]).expect("write");
        let LogAnswer::Data { data, eof } = answer(&root, &request(run_id, LogStream::Stderr, 0, u32::MAX)) else {
            panic!("the log is read");
        };
        assert_eq!((data.len(), eof), (MAX_LOG_CHUNK_BYTES as usize, false));
    }

    #[test]
    fn a_deleted_log_is_no_longer_kept() {
        let run_id = RunId::new_at(1);
        let (temp, dir) = logs(run_id);
        let root = temp.path().join("logs");
        let LogAnswer::Gone(reason) = answer(&root, &request(run_id, LogStream::Stdout, 0, 10)) else {
            panic!("a missing file is gone");
        };
        assert!(reason.ends_with("ft-2-a1/stdout.log is no longer kept"), "{reason}");
        std::fs::remove_dir_all(dir.parent().expect("package dir")).expect("rm");
        assert!(matches!(
            answer(&root, &request(run_id, LogStream::Stdout, 0, 10)),
            LogAnswer::Gone(_)
        ));
        assert!(matches!(
            answer(&temp.path().join("nothing"), &request(run_id, LogStream::Stdout, 0, 10)),
            LogAnswer::Gone(_)
        ));
    }

    #[test]
    fn a_symbolic_link_planted_in_the_logs_is_not_followed() {
        let run_id = RunId::new_at(1);
        let (temp, dir) = logs(run_id);
        let root = temp.path().join("logs");
        let secret = temp.path().join("secret");
        std::fs::write(&secret, b"the worker's token").expect("write");
        // In place of the log file.
        std::os::unix::fs::symlink(&secret, dir.join("stdout.log")).expect("symlink");
        let answered = answer(&root, &request(run_id, LogStream::Stdout, 0, 100));
        assert!(
            matches!(&answered, LogAnswer::Refused(reason) if reason.contains("symbolic link")),
            "{answered:?}"
        );
        // In place of the iteration's directory, pointing at a directory holding a log.
        let elsewhere = temp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        std::fs::write(elsewhere.join("stderr.log"), b"not this worker's log").expect("write");
        std::fs::remove_dir_all(&dir).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &dir).expect("symlink");
        let answered = answer(&root, &request(run_id, LogStream::Stderr, 0, 100));
        assert!(matches!(answered, LogAnswer::Refused(_)), "{answered:?}");
    }

    #[test]
    fn a_fifo_in_place_of_a_log_is_refused_without_blocking() {
        let run_id = RunId::new_at(1);
        let (temp, dir) = logs(run_id);
        let root = temp.path().join("logs");
        nix::unistd::mkfifo(&dir.join("stdout.log"), Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
        let answered = answer(&root, &request(run_id, LogStream::Stdout, 0, 100));
        assert!(
            matches!(&answered, LogAnswer::Refused(reason) if reason.contains("not a regular file")),
            "{answered:?}"
        );
    }
}
