//! What a run tests: the laruche registry format and the choice of packages from it, the
//! environment variables a registry file may set, and the free-threaded wheels that let
//! `--trust-ft-wheels` skip a package. The CLI reads the files and PyPI's answers; these parse
//! what it read.

pub mod env;
pub mod laruche;
pub mod wheels;
