//! The views of a run: pure functions from results records to text or serialisable rows, one
//! module per command (`show`, `flaky`, `compat`, `compare`, `export`, `report` with its
//! `render`ing), and `plan`, what `run --dry-run` prints. `text` holds the helpers they share,
//! `builds` what `show` and `compare` say of the builds and versions a run ran on.

pub mod builds;
pub mod compare;
pub mod compat;
pub mod export;
pub mod flaky;
pub mod plan;
pub mod render;
pub mod report;
pub mod show;
pub mod text;
