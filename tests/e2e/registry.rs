//! The registry reader on the real laruche snapshot kept beside the repository.

use std::path::PathBuf;

use domain::registry::{Selection, select};

/// `../shared/registries/laruche`, beside the clone; its absence fails the test.
fn laruche() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/registries/laruche");
    assert!(
        path.join("index.yaml").is_file(),
        "the laruche registry snapshot is missing: looked in {}",
        path.display()
    );
    path
}

#[test]
fn every_file_of_the_laruche_snapshot_loads_and_the_top_packages_select() {
    let registry = cli::registry_dir::load_registry(&laruche()).expect("the snapshot loads");
    assert_eq!(registry.index.packages.len(), 4999);
    assert!(
        registry.warnings.is_empty(),
        "{:?}",
        &registry.warnings[..registry.warnings.len().min(5)]
    );
    assert_eq!(registry.entries.len(), 4999);
    let selection = Selection {
        top: Some(20),
        python_version: Some("3.13".into()),
        ..Selection::default()
    };
    let selected = select(&registry.index, &registry.entries, &registry.dir, &selection).expect("select");
    assert_eq!(selected.specs.len(), 20);
    assert_eq!(
        selected.specs[0].name, "packaging",
        "boto3 is skipped in the index, packaging is next"
    );
    assert!(
        selected
            .specs
            .iter()
            .all(|s| matches!(s.source, domain::Source::Git { .. }))
    );
    let all = select(&registry.index, &registry.entries, &registry.dir, &Selection::default()).expect("select");
    let enriched_unskipped = registry.index.packages.iter().filter(|e| e.enriched && !e.skip).count();
    assert!(
        all.specs.len() <= enriched_unskipped && all.specs.len() > 1000,
        "{} selectable",
        all.specs.len()
    );
}
