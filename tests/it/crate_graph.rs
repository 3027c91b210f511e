//! The crate graph the README's Development section draws is the one the
//! manifests declare, and no sink or reverse-ETL crate depends on a source
//! crate (what they share with the sources lives in `tidewater-endpoint`).

use std::collections::{BTreeMap, BTreeSet};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The tidewater crates a manifest's `[dependencies]` names, without the
/// `tidewater-` prefix.
fn tidewater_dependencies(manifest: &toml::Table) -> BTreeSet<String> {
    manifest
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|deps| {
            deps.keys()
                .filter_map(|name| name.strip_prefix("tidewater-"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn read_manifest(path: &str) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every crate of the workspace (the binary as `tidewater`) and the
/// tidewater crates it depends on, from the manifests.
fn graph_in_manifests() -> BTreeMap<String, BTreeSet<String>> {
    let root = read_manifest(&format!("{ROOT}/Cargo.toml"));
    let mut graph = BTreeMap::from([("tidewater".to_string(), tidewater_dependencies(&root))]);
    let members = root["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    for member in members {
        let member = member.as_str().expect("a member path");
        let manifest = read_manifest(&format!("{ROOT}/{member}/Cargo.toml"));
        let name = manifest["package"]["name"].as_str().expect("package.name");
        let name = name.strip_prefix("tidewater-").unwrap_or(name).to_string();
        graph.insert(name, tidewater_dependencies(&manifest));
    }
    graph
}

/// The graph in the README: the code block after "The crates depend on each
/// other", one line per crate, `tidewater-X  → a, b  comment`.
fn graph_in_readme() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    let (_, after) = readme
        .split_once("The crates depend on each other")
        .expect("the README's Development section draws the crate graph");
    let block = after
        .split("```")
        .nth(1)
        .expect("the crate graph's code block");
    let mut graph = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (left, right) = line.split_once('→').expect("`crate → dependencies`");
        let name = left.split_whitespace().next().expect("a crate name");
        let name = name.strip_prefix("tidewater-").unwrap_or(name).to_string();
        // The dependency list ends where a comment starts (two spaces).
        let list = right.trim_start().split("  ").next().unwrap_or("");
        let deps = if list.starts_with("no tidewater crate") {
            BTreeSet::new()
        } else {
            list.split(',').map(|d| d.trim().to_string()).collect()
        };
        graph.insert(name, deps);
    }
    graph
}

#[test]
fn readme_crate_graph_matches_the_manifests() {
    assert_eq!(graph_in_readme(), graph_in_manifests());
}

#[test]
fn sinks_and_reverse_etl_depend_on_no_source_crate() {
    let graph = graph_in_manifests();
    for consumer in ["lake", "warehouse", "reverse", "core", "endpoint"] {
        let deps = &graph[consumer];
        assert!(
            !deps.contains("postgres") && !deps.contains("mysql"),
            "tidewater-{consumer} depends on a source crate: {deps:?}"
        );
    }
}
