//! Results folders: `<results-dir>/ft_YYYYMMDD_HHMMSS[_N]/` with `ft_meta.json` and
//! `ft_results.jsonl`, written as the run goes and read back by `show`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use domain::results::{PackageRecord, RunMeta};

const META_FILE: &str = "ft_meta.json";
const RESULTS_FILE: &str = "ft_results.jsonl";

/// A results folder being written.
#[derive(Debug)]
pub(crate) struct ResultsDir {
    path: PathBuf,
}

impl ResultsDir {
    /// Creates a new folder named after `started_at` (UTC) under `root`, with a `_2`, `_3`,
    /// ... suffix if the name is taken.
    pub(crate) fn create(root: &Path, started_at: jiff::Timestamp) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("cannot create results dir {}", root.display()))?;
        let base = started_at.strftime("ft_%Y%m%d_%H%M%S").to_string();
        for n in 1..1000 {
            let name = if n == 1 { base.clone() } else { format!("{base}_{n}") };
            let path = root.join(name);
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    std::fs::File::create(path.join(RESULTS_FILE))
                        .with_context(|| format!("cannot write in results dir {}", path.display()))?;
                    return Ok(ResultsDir { path });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot write in results dir {}", root.display()));
                }
            }
        }
        anyhow::bail!("results dir {} already holds 999 folders named {base}", root.display())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `ft_meta.json` atomically.
    pub(crate) fn write_meta(&self, meta: &RunMeta) -> anyhow::Result<()> {
        let temp = self.path.join(format!(".{META_FILE}.tmp"));
        std::fs::write(&temp, serde_json::to_vec_pretty(meta)?)
            .with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, self.path.join(META_FILE)).context("cannot replace ft_meta.json")
    }

    /// Appends one package's line to `ft_results.jsonl` and flushes it.
    pub(crate) fn append_package(&self, record: &PackageRecord) -> anyhow::Result<()> {
        let path = self.path.join(RESULTS_FILE);
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        file.write_all(&line)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        file.flush()?;
        Ok(())
    }
}

/// A results folder as read back.
#[derive(Debug)]
pub(crate) struct ReadResults {
    pub(crate) meta: Option<RunMeta>,
    /// In file order; a package written twice keeps its last line.
    pub(crate) records: Vec<PackageRecord>,
    pub(crate) warnings: Vec<String>,
}

/// Reads a results folder (or its `ft_results.jsonl`). A missing meta file or a bad line is a
/// warning; a folder without results is an error.
pub(crate) fn read_results_dir(path: &Path) -> anyhow::Result<ReadResults> {
    let dir = if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    };
    anyhow::ensure!(dir.is_dir(), "results folder {} not found", path.display());
    let results_path = dir.join(RESULTS_FILE);
    let text = std::fs::read_to_string(&results_path)
        .with_context(|| format!("{} is not a results folder: cannot read {RESULTS_FILE}", dir.display()))?;
    let mut warnings = Vec::new();
    let meta = match std::fs::read(dir.join(META_FILE)) {
        Ok(bytes) => match serde_json::from_slice::<RunMeta>(&bytes) {
            Ok(meta) => Some(meta),
            Err(error) => {
                warnings.push(format!("{META_FILE}: {error}"));
                None
            }
        },
        Err(_) => {
            warnings.push(format!("{META_FILE} missing in {}", dir.display()));
            None
        }
    };
    let mut order: Vec<String> = Vec::new();
    let mut by_name: BTreeMap<String, PackageRecord> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match PackageRecord::parse_line(line) {
            Ok(record) => {
                if !by_name.contains_key(&record.package) {
                    order.push(record.package.clone());
                }
                by_name.insert(record.package.clone(), record);
            }
            Err(error) => warnings.push(format!("{RESULTS_FILE} line {}: skipped: {error}", n + 1)),
        }
    }
    let records = order.into_iter().filter_map(|name| by_name.remove(&name)).collect();
    Ok(ReadResults {
        meta,
        records,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn folders_never_collide() {
        let root = tempfile::tempdir().expect("tempdir");
        let first = ResultsDir::create(root.path(), at("2026-03-03T14:00:00Z")).expect("first");
        let second = ResultsDir::create(root.path(), at("2026-03-03T14:00:00Z")).expect("second");
        assert!(first.path().ends_with("ft_20260303_140000"));
        assert!(second.path().ends_with("ft_20260303_140000_2"));
    }

    #[test]
    fn written_folders_read_back_and_a_truncated_line_is_a_warning() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = ResultsDir::create(root.path(), at("2026-03-03T14:00:00Z")).expect("create");
        dir.write_meta(&RunMeta {
            run_id: "r1".into(),
            ..RunMeta::default()
        })
        .expect("meta");
        let record = |name: &str, category: &str| PackageRecord {
            package: name.into(),
            category: category.into(),
            ..PackageRecord::default()
        };
        dir.append_package(&record("a", "compatible")).expect("append");
        dir.append_package(&record("b", "crash")).expect("append");
        dir.append_package(&record("a", "intermittent")).expect("append");
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(RESULTS_FILE))
            .expect("open");
        file.write_all(b"{\"package\": \"c\", \"categ").expect("write");
        let read = read_results_dir(dir.path()).expect("read");
        assert_eq!(read.meta.expect("meta").run_id, "r1");
        let got: Vec<(&str, &str)> = read
            .records
            .iter()
            .map(|r| (r.package.as_str(), r.category.as_str()))
            .collect();
        assert_eq!(got, vec![("a", "intermittent"), ("b", "crash")]);
        assert_eq!(read.warnings.len(), 1, "{:?}", read.warnings);
        assert!(read.warnings[0].contains("line 4"));
    }

    #[test]
    fn an_unwritable_results_dir_is_an_error_naming_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let blocker = root.path().join("file");
        std::fs::write(&blocker, "x").expect("write");
        let error = format!(
            "{:#}",
            ResultsDir::create(&blocker.join("sub"), jiff::Timestamp::now()).expect_err("fails")
        );
        assert!(
            error.contains("cannot create results dir") && error.contains("file/sub"),
            "{error}"
        );
        assert!(read_results_dir(&root.path().join("missing")).is_err());
    }
}
