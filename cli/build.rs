//! Embeds the default registry (`registry/` at the repository root) in the binary: one
//! `include_str!` per file, listed in `$OUT_DIR/builtin_registry.rs`.

use std::fmt::Write;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let registry = manifest_dir.join("..").join("registry");
    println!("cargo:rerun-if-changed={}", registry.display());
    println!("cargo:rerun-if-changed={}", registry.join("packages").display());
    let mut files = vec![("index.yaml".to_string(), registry.join("index.yaml"))];
    let mut packages: Vec<PathBuf> = std::fs::read_dir(registry.join("packages"))
        .expect("registry/packages exists")
        .map(|entry| entry.expect("readable registry/packages").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    packages.sort();
    for path in packages {
        let name = path.file_name().expect("file name").to_string_lossy().into_owned();
        files.push((format!("packages/{name}"), path));
    }
    let mut code = String::from("const BUILTIN_FILES: &[(&str, &str)] = &[\n");
    for (relative, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(code, "    ({relative:?}, include_str!({:?})),", absolute(path)).expect("write to a string");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_registry.rs");
    std::fs::write(out, code).expect("write builtin_registry.rs");
}

fn absolute(path: &Path) -> String {
    path.canonicalize().expect("registry file exists").display().to_string()
}
