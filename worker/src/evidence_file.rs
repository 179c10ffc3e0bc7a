//! Reading the files an iteration leaves in its log directory (`junit.xml`, `stderr.log`,
//! `stdout.log`, `tsan.<pid>`), which the test under supervision can replace with whatever it
//! likes: a FIFO would block the reader forever, a symlink to `/dev/zero` would never end, a
//! huge file would fill the worker's memory. So a file is opened without following a symlink
//! and without waiting for a writer, read only if it is a regular file, and never past a cap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading if it is a regular file, refusing symlinks, FIFOs, sockets and
/// devices without blocking on any of them.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The whole of a regular file, or an error when it is not one or holds more than
/// `max_bytes`.
pub(crate) fn read_capped(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// The first `bytes` of a regular file, as text.
pub(crate) fn read_start(path: &Path, bytes: u64) -> Option<String> {
    read_text(open_regular(path).ok()?, bytes)
}

/// The last `bytes` of a regular file, as text. Reads at most `bytes` even if the file grows
/// meanwhile.
pub(crate) fn read_end(path: &Path, bytes: u64) -> Option<String> {
    let mut file = open_regular(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(bytes))).ok()?;
    read_text(file, bytes)
}

/// At most `bytes` from where `file` stands, as text.
fn read_text(file: File, bytes: u64) -> Option<String> {
    let mut buffer = Vec::new();
    file.take(bytes).read_to_end(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_within_their_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("junit.xml");
        std::fs::write(&path, "0123456789").expect("write");
        assert_eq!(read_capped(&path, 10).expect("fits"), b"0123456789");
        let too_big = read_capped(&path, 9).expect_err("over the cap");
        assert_eq!(too_big.kind(), std::io::ErrorKind::FileTooLarge);
        assert_eq!(read_start(&path, 4).as_deref(), Some("0123"));
        assert_eq!(read_end(&path, 4).as_deref(), Some("6789"));
        assert_eq!(read_end(&path, 100).as_deref(), Some("0123456789"));
    }

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stderr.log");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        // A blocking open of a FIFO with no writer would never return, and this test with it.
        let error = read_capped(&path, 1024).expect_err("a FIFO");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
        assert_eq!(read_end(&path, 1024), None);
        assert_eq!(read_start(&path, 1024), None);
    }

    #[test]
    fn a_symlink_is_not_followed_even_to_an_endless_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("junit.xml");
        std::os::unix::fs::symlink("/dev/zero", &path).expect("symlink");
        // Followed, `/dev/zero` never ends: read_end's metadata says 0 bytes and reads on.
        assert!(read_capped(&path, 1024).is_err());
        assert_eq!(read_end(&path, 1024), None);
        assert_eq!(read_start(&path, 1024), None);
        let device = read_capped(Path::new("/dev/zero"), 1024).expect_err("a device");
        assert_eq!(device.kind(), std::io::ErrorKind::InvalidInput, "{device}");
    }
}
