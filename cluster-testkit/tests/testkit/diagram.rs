//! A failing case is drawn: the failure report shows the shrunk run as a space-time
//! diagram and writes it as an HTML page a browser opens.

use cluster_testkit::conformance::{self, SuiteOptions};
use cluster_testkit::mutants::Mutation;

use crate::mutant;

#[test]
fn a_conformance_failure_prints_its_diagram_and_writes_it_for_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SuiteOptions::new(64).with_seed(77);
    options.history_dir = Some(dir.path().to_path_buf());
    let failure = conformance::check_scenarios(&mutant(Mutation::Reorder), &options)
        .expect_err("the reorder mutant must be caught");
    let report = failure.to_string();
    let diagram = report
        .split_once("space-time diagram:\n")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no diagram in:\n{report}"));
    // One column per node, and the reordered messages as arrows between them.
    assert!(
        diagram.starts_with("cluster run on `mutant-reorder`, seed"),
        "{report}"
    );
    assert!(diagram.contains("│   1     2"), "{report}");
    assert!(
        diagram.contains("●─────▶") || diagram.contains("◀─────●"),
        "{report}"
    );
    let html = report
        .lines()
        .find_map(|l| l.strip_prefix("space-time diagram (open in a browser): "))
        .unwrap_or_else(|| panic!("no HTML diagram in:\n{report}"));
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<svg"));
    assert!(html.starts_with(dir.path().to_str().unwrap()), "{html}");
}
