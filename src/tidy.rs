//! Tidy checks that keep the map true: every source file opens with a `//!` paragraph saying
//! what it is for; a module imports only modules listed before it in ARCHITECTURE.md's code
//! map (read from the document itself, so the map and the code cannot drift apart); and no
//! two files of one module import each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate roots and the test-only modules (fixtures may use anything, and anything's
/// tests may use them).
const TEST_SUPPORT: [&str; 4] = ["lib", "main", "tidy", "testing"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The top-level modules in the order ARCHITECTURE.md's code map lists them (its
/// "### `name`" headings); dependencies point up this list.
fn documented_order() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let map = text
        .split("## Code map")
        .nth(1)
        .expect("ARCHITECTURE.md has a Code map section");
    let map = map.split("\n## ").next().unwrap_or(map);
    map.lines()
        .filter_map(|line| line.strip_prefix("### `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The code of a file without comments and string literals' contents, so prose and
/// messages that mention a path do not count as imports.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_string, mut line_comment, mut block_comment) = (false, false, 0usize);
    while let Some(c) = chars.next() {
        if line_comment {
            if c == '\n' {
                line_comment = false;
                out.push('\n');
            }
            continue;
        }
        if block_comment > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block_comment -= 1;
            }
            continue;
        }
        if in_string {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_string = false;
                out.push('"');
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => line_comment = true,
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                block_comment += 1;
            }
            '"' => {
                in_string = true;
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The top-level module a source file belongs to (`src/http/kv.rs` → `http`).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root().join("src")).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The identifiers that follow `prefix` in `code` (`crate::` → `http`, `state`, ...).
fn paths_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    code.match_indices(prefix).filter_map(move |(at, _)| {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let missing: Vec<_> = sources(&root().join("src"))
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! purpose comment: {missing:?}"
    );
}

#[test]
fn modules_import_only_modules_listed_before_them_in_architecture_md() {
    let order = documented_order();
    let position: BTreeMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(index, name)| (name.as_str(), index))
        .collect();
    let mut violations = Vec::new();
    let mut undocumented = BTreeSet::new();
    for path in sources(&root().join("src")) {
        let Some(module) = module_of(&path) else {
            continue;
        };
        if TEST_SUPPORT.contains(&module.as_str()) {
            continue;
        }
        let Some(&own) = position.get(module.as_str()) else {
            undocumented.insert(module);
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&path).unwrap_or_default());
        for used in paths_after(&code, "crate::").collect::<BTreeSet<_>>() {
            if used == module || TEST_SUPPORT.contains(&used) {
                continue;
            }
            match position.get(used) {
                Some(&theirs) if theirs < own => {}
                Some(_) => violations.push(format!(
                    "{} uses crate::{used}, listed after {module}",
                    path.display()
                )),
                None => {
                    undocumented.insert(used.to_string());
                }
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "modules missing from ARCHITECTURE.md's code map: {undocumented:?} (order: {order:?})"
    );
    assert!(
        violations.is_empty(),
        "imports against ARCHITECTURE.md's order {order:?}:\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_two_files_of_a_module_import_each_other_in_a_cycle() {
    // Edges between sibling files of one module: `super::x` from `<module>/y.rs`, or
    // `crate::<module>::x`. The module root (mod.rs) is left out: children use its types and
    // it re-exports theirs, which is a module's shape, not a cycle.
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for path in sources(&root().join("src")) {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let Some(file) = path.file_stem().and_then(|stem| stem.to_str()) else {
            continue;
        };
        let parent = path
            .parent()
            .and_then(|parent| parent.file_name())
            .and_then(|name| name.to_str());
        if file == "mod" || file == "tests" || parent != Some(module.as_str()) {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&path).unwrap_or_default());
        let own_prefix = format!("crate::{module}::");
        let targets: BTreeSet<String> = paths_after(&code, "super::")
            .chain(paths_after(&code, &own_prefix))
            .filter(|target| *target != file)
            .map(str::to_string)
            .collect();
        edges.insert((module.clone(), file.to_string()), targets);
    }
    // Depth-first search per file; reaching a file still on the path is a cycle.
    fn visit(
        node: &(String, String),
        edges: &BTreeMap<(String, String), BTreeSet<String>>,
        path: &mut Vec<(String, String)>,
        done: &mut BTreeSet<(String, String)>,
        cycles: &mut Vec<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(start) = path.iter().position(|on_path| on_path == node) {
            let cycle: Vec<String> = path[start..]
                .iter()
                .chain(std::iter::once(node))
                .map(|(module, file)| format!("{module}::{file}"))
                .collect();
            cycles.push(cycle.join(" -> "));
            return;
        }
        path.push(node.clone());
        for target in edges.get(node).into_iter().flatten() {
            let next = (node.0.clone(), target.clone());
            if edges.contains_key(&next) {
                visit(&next, edges, path, done, cycles);
            }
        }
        path.pop();
        done.insert(node.clone());
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

/// The part of a file that is not its inline test module (`#[cfg(test)] mod tests { .. }`,
/// by convention at the end).
fn without_inline_tests(text: &str) -> &str {
    let mut offset = 0;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

#[test]
fn long_lived_tasks_are_spawned_only_through_tasks() {
    let offenders: Vec<_> = sources(&root().join("src"))
        .into_iter()
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            !(name == "tests.rs" || name.ends_with("_tests.rs") || name == "tasks.rs")
                && module_of(path).is_some_and(|module| !TEST_SUPPORT.contains(&module.as_str()))
        })
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            code_only(without_inline_tests(&text)).contains("tokio::spawn(")
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "spawn long-lived tasks through tasks::Tasks (named, counted, stopped at shutdown): {offenders:?}"
    );
}

#[test]
fn only_rpc_raft_and_server_reach_into_raft_or_the_store() {
    // Everything else reads, writes and watches through `rpc::Cluster`, so a client agent
    // (which has neither a Raft node nor a full store) can stand behind the same calls.
    let offenders: Vec<_> = sources(&root().join("src"))
        .into_iter()
        .filter(|path| {
            module_of(path).is_some_and(|module| {
                !matches!(module.as_str(), "rpc" | "raft" | "server")
                    && !TEST_SUPPORT.contains(&module.as_str())
            })
        })
        .filter(|path| {
            let code = code_only(&std::fs::read_to_string(path).unwrap_or_default());
            code.contains(".raft()") || code.contains(".store()")
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "call through rpc::Cluster instead: {offenders:?}"
    );
}
