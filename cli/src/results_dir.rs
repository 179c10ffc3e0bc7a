//! Results folders: `<results-dir>/ft_YYYYMMDD_HHMMSS[_N]/` holding `ft_meta.json` and
//! `ft_results.jsonl`, written as the run goes and read back by `show` and friends.
//!
//! Writing is crash-tolerant: the meta file is replaced atomically, and each package is one
//! appended line, so an interrupted run leaves a folder that reads (with at most its last line
//! cut short, which the reader reports and skips).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use domain::results::{PackageRecord, RunMeta};

/// The run's metadata file in a results folder.
pub(crate) const META_FILE: &str = "ft_meta.json";
/// The per-package lines in a results folder.
pub(crate) const RESULTS_FILE: &str = "ft_results.jsonl";

/// Most folders one second may name (`ft_..._2` to `ft_..._999`) before `create` gives up.
const MAX_SUFFIX: u32 = 999;

/// A results folder being written.
#[derive(Debug)]
pub(crate) struct ResultsDir {
    path: PathBuf,
    /// `ft_results.jsonl`, open for appending since the folder was made.
    results_file: File,
}

impl ResultsDir {
    /// Creates `results_root` if needed, then a new folder in it named after `started_at` in
    /// UTC (`ft_20260303_140000`), or `..._2`, `..._3`, ... if that name is taken. The folder
    /// starts with an empty `ft_results.jsonl`, so it reads as a run with no results yet.
    pub(crate) fn create(results_root: &Path, started_at: jiff::Timestamp) -> anyhow::Result<ResultsDir> {
        std::fs::create_dir_all(results_root)
            .with_context(|| format!("cannot create results dir {}", results_root.display()))?;
        let base = started_at.strftime("ft_%Y%m%d_%H%M%S").to_string();
        for n in 1..=MAX_SUFFIX {
            let name = if n == 1 { base.clone() } else { format!("{base}_{n}") };
            let path = results_root.join(name);
            // create_dir fails if the folder exists, so two runs never share one.
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let results_path = path.join(RESULTS_FILE);
                    let results_file = OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&results_path)
                        .with_context(|| format!("cannot write {}", results_path.display()))?;
                    return Ok(ResultsDir { path, results_file });
                }
                Err(error) if error.kind() == ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("cannot create a results folder in {}", results_root.display()));
                }
            }
        }
        bail!(
            "results dir {} already holds {MAX_SUFFIX} folders named {base}",
            results_root.display()
        )
    }

    /// Opens the results folder `path` of a run to go on writing it: its meta and the packages
    /// it holds, whose lines are kept. A last line cut short by a killed run is ended, so the
    /// next line starts on its own.
    pub(crate) fn reopen(path: &Path) -> anyhow::Result<(ResultsDir, Option<RunMeta>, Vec<PackageRecord>)> {
        let (meta, records, warnings) = read_results_dir(path)?;
        for warning in &warnings {
            eprintln!("warning: {warning}");
        }
        let results_path = path.join(RESULTS_FILE);
        let mut results_file = OpenOptions::new()
            .append(true)
            .create(true)
            .read(true)
            .open(&results_path)
            .with_context(|| format!("cannot write {}", results_path.display()))?;
        let length = results_file.metadata()?.len();
        if length > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            results_file.seek(SeekFrom::Start(length - 1))?;
            results_file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                results_file.write_all(b"\n")?;
            }
        }
        let dir = ResultsDir {
            path: path.to_path_buf(),
            results_file,
        };
        Ok((dir, meta, records))
    }

    /// The folder, `<results-dir>/ft_YYYYMMDD_HHMMSS[_N]`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `ft_meta.json` through a temporary file and a rename, so a reader (or a crash)
    /// sees the old file or the new one, never half of one.
    pub(crate) fn write_meta(&self, meta: &RunMeta) -> anyhow::Result<()> {
        let temp = self.path.join(format!(".{META_FILE}.tmp"));
        let mut json = serde_json::to_vec_pretty(meta).context("cannot serialise ft_meta.json")?;
        json.push(b'\n');
        let mut file = File::create(&temp).with_context(|| format!("cannot write {}", temp.display()))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        let target = self.path.join(META_FILE);
        std::fs::rename(&temp, &target).with_context(|| format!("cannot replace {}", target.display()))
    }

    /// Appends one package's line to `ft_results.jsonl`, in one write, and flushes it.
    pub(crate) fn append_package(&self, record: &PackageRecord) -> anyhow::Result<()> {
        let mut line =
            serde_json::to_vec(record).with_context(|| format!("cannot serialise the result of {}", record.package))?;
        line.push(b'\n');
        let mut file = &self.results_file;
        file.write_all(&line)
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot append to {}", self.path.join(RESULTS_FILE).display()))
    }
}

/// The folder in `results_root` whose `ft_meta.json` names run `run_id`, if one does.
pub(crate) fn find_run_folder(results_root: &Path, run_id: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(results_root).ok()?;
    entries.filter_map(Result::ok).map(|entry| entry.path()).find(|dir| {
        std::fs::read_to_string(dir.join(META_FILE))
            .ok()
            .and_then(|text| RunMeta::parse(&text).ok())
            .is_some_and(|meta| meta.run_id == run_id)
    })
}

/// The results and meta files of `path`, a results folder or its `ft_results.jsonl`.
pub(crate) fn results_files(path: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (dir, results_path) = if path.is_file() {
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (dir, path.to_path_buf())
    } else if path.is_dir() {
        (path.to_path_buf(), path.join(RESULTS_FILE))
    } else {
        bail!(
            "results folder {} not found: pass a folder made by `ftsurvey run` (results/ft_YYYYMMDD_HHMMSS)",
            path.display()
        );
    };
    Ok((results_path, dir.join(META_FILE)))
}

/// Reads a results folder, or the `ft_results.jsonl` in one: the run's metadata (if readable),
/// one record per package, and warnings about what was skipped.
///
/// Lenient where an interrupted or older run leaves gaps: a missing or unreadable meta file, a
/// bad line, or a last line cut short are warnings. A package written twice keeps its last line,
/// at the place of its first. Only a folder that does not exist, or holds neither file, is an
/// error.
pub(crate) fn read_results_dir(path: &Path) -> anyhow::Result<(Option<RunMeta>, Vec<PackageRecord>, Vec<String>)> {
    let (results_path, meta_path) = results_files(path)?;
    let mut warnings = Vec::new();

    let meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => match RunMeta::parse(&text) {
            Ok(meta) => Some(meta),
            Err(error) => {
                warnings.push(format!(
                    "{}: unreadable, run details unknown: {error}",
                    meta_path.display()
                ));
                None
            }
        },
        Err(error) if error.kind() == ErrorKind::NotFound => {
            warnings.push(format!("{} missing: run details unknown", meta_path.display()));
            None
        }
        Err(error) => {
            warnings.push(format!("cannot read {}: {error}", meta_path.display()));
            None
        }
    };

    let bytes = match std::fs::read(&results_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == ErrorKind::NotFound && meta.is_some() => {
            warnings.push(format!("{} missing: no package results yet", results_path.display()));
            Vec::new()
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {
            bail!(
                "{} is not a results folder: it has neither {RESULTS_FILE} nor {META_FILE}",
                meta_path.parent().unwrap_or(Path::new(".")).display()
            );
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", results_path.display())),
    };
    let (records, line_warnings) = parse_results(&bytes);
    warnings.extend(
        line_warnings
            .into_iter()
            .map(|warning| format!("{}: {warning}", results_path.display())),
    );
    Ok((meta, records, warnings))
}

/// Parses `ft_results.jsonl`; bad lines become warnings.
fn parse_results(bytes: &[u8]) -> (Vec<PackageRecord>, Vec<String>) {
    let mut records: Vec<PackageRecord> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut warnings = Vec::new();
    let ends_with_newline = bytes.last() == Some(&b'\n');
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    for (idx, line) in lines.iter().enumerate() {
        // Bytes, not a string, because a write cut short may end inside a UTF-8 sequence.
        let line = String::from_utf8_lossy(line);
        if line.trim().is_empty() {
            continue;
        }
        let is_last = idx + 1 == lines.len();
        match PackageRecord::parse_line(&line) {
            Ok(record) => match position.get(&record.package) {
                Some(&at) => records[at] = record,
                None => {
                    position.insert(record.package.clone(), records.len());
                    records.push(record);
                }
            },
            Err(_) if is_last && !ends_with_newline => {
                warnings.push(format!(
                    "line {} is cut short (an interrupted write?): skipped",
                    idx + 1
                ));
            }
            Err(error) => warnings.push(format!("line {}: skipped: {error}", idx + 1)),
        }
    }
    (records, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().expect("timestamp")
    }

    fn record(name: &str, category: &str) -> PackageRecord {
        PackageRecord {
            package: name.into(),
            category: category.into(),
            ..PackageRecord::default()
        }
    }

    fn append_raw(dir: &ResultsDir, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(RESULTS_FILE))
            .expect("open");
        file.write_all(bytes).expect("write");
    }

    #[test]
    fn folders_are_named_in_utc_and_never_collide() {
        let root = tempfile::tempdir().expect("tempdir");
        let started_at = at("2026-03-03T14:00:00Z");
        let names: Vec<String> = (0..3)
            .map(|_| {
                let dir = ResultsDir::create(&root.path().join("results"), started_at).expect("create");
                assert!(dir.path().join(RESULTS_FILE).is_file());
                dir.path().file_name().expect("name").to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(
            names,
            ["ft_20260303_140000", "ft_20260303_140000_2", "ft_20260303_140000_3"]
        );
    }

    #[test]
    fn a_fresh_folder_reads_as_a_run_without_results() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = ResultsDir::create(root.path(), at("2026-03-03T14:00:00Z")).expect("create");
        dir.write_meta(&RunMeta {
            run_id: "r1".into(),
            ..RunMeta::default()
        })
        .expect("meta");
        let (meta, records, warnings) = read_results_dir(dir.path()).expect("read");
        assert_eq!(meta.expect("meta").run_id, "r1");
        assert!(records.is_empty() && warnings.is_empty(), "{records:?} {warnings:?}");
    }

    #[test]
    fn written_folders_read_back_and_the_last_line_of_a_package_wins() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = ResultsDir::create(root.path(), at("2026-03-03T14:00:00Z")).expect("create");
        let mut meta = RunMeta {
            run_id: "r1".into(),
            ..RunMeta::default()
        };
        dir.write_meta(&meta).expect("meta");
        dir.append_package(&record("a", "compatible")).expect("append");
        dir.append_package(&record("b", "crash")).expect("append");
        dir.append_package(&record("a", "intermittent")).expect("append");
        meta.interrupted = true;
        dir.write_meta(&meta).expect("meta again");

        for path in [dir.path().to_path_buf(), dir.path().join(RESULTS_FILE)] {
            let (meta, records, warnings) = read_results_dir(&path).expect("read");
            assert!(meta.expect("meta").interrupted);
            let got: Vec<(&str, &str)> = records
                .iter()
                .map(|r| (r.package.as_str(), r.category.as_str()))
                .collect();
            assert_eq!(got, vec![("a", "intermittent"), ("b", "crash")], "{}", path.display());
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert_eq!(leftovers.len(), 2, "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn a_cut_short_last_line_and_a_bad_line_are_warnings() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = ResultsDir::create(root.path(), at("2026-03-03T14:00:00Z")).expect("create");
        dir.append_package(&record("a", "compatible")).expect("append");
        append_raw(&dir, b"not json\n");
        dir.append_package(&record("b", "crash")).expect("append");
        // Cut inside the two bytes of "é": the file is no longer valid UTF-8.
        append_raw(&dir, &"{\"package\": \"c\", \"evidence\": [\"é".as_bytes()[..33]);

        let (meta, records, warnings) = read_results_dir(dir.path()).expect("read");
        assert!(meta.is_none());
        assert_eq!(
            records.iter().map(|r| r.package.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("ft_meta.json missing"), "{warnings:?}");
        assert!(warnings[1].contains("line 2: skipped"), "{warnings:?}");
        assert!(warnings[2].contains("line 4 is cut short"), "{warnings:?}");
    }

    #[test]
    fn an_unwritable_results_dir_is_one_line_naming_it_and_the_cause() {
        let root = tempfile::tempdir().expect("tempdir");
        let blocker = root.path().join("file");
        std::fs::write(&blocker, "x").expect("write");
        let error = ResultsDir::create(&blocker.join("sub"), jiff::Timestamp::now()).expect_err("fails");
        let message = format!("{error:#}");
        assert!(!message.contains('\n'), "{message}");
        assert!(
            message.contains("cannot create results dir") && message.contains("file/sub"),
            "{message}"
        );
        assert!(message.contains("os error"), "the OS cause: {message}");
    }

    #[test]
    fn a_missing_or_empty_folder_is_a_one_line_error() {
        let root = tempfile::tempdir().expect("tempdir");
        let missing = format!(
            "{:#}",
            read_results_dir(&root.path().join("nope")).expect_err("missing")
        );
        assert!(missing.contains("not found") && missing.contains("nope"), "{missing}");
        let empty = format!("{:#}", read_results_dir(root.path()).expect_err("empty"));
        assert!(empty.contains("is not a results folder"), "{empty}");
        assert!(!missing.contains('\n') && !empty.contains('\n'));
    }
}
