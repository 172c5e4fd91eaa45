//! Tidy checks that keep the map true: every source file opens with a `//!` paragraph saying
//! what it is for; a module imports only modules listed before it in ARCHITECTURE.md's code
//! map (read from the document itself, so the map and the code cannot drift apart); no two
//! files of one module import each other in a cycle; and no function visible outside its
//! module returns `Result<_, String>` (errors crossing a seam are typed).

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
            } else if c == '\n' {
                out.push('\n');
            }
            continue;
        }
        if in_string {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_string = false;
                out.push('"');
            } else if c == '\n' {
                out.push('\n');
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

/// Public functions allowed to return `Result<_, String>` for now, as (file, function, why).
/// Each entry must still be needed: the test fails on one that no longer matches anything.
const STRING_ERRORS_ALLOWED: [(&str, &str, &str); 0] = [];

/// `code` with every `#[cfg(test)]` module's body blanked (newlines kept), so helpers inside
/// unit-test modules are not held to the rule.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    let mut from = 0;
    while let Some(found) = out[from..].find("#[cfg(test)]") {
        let start = from + found;
        let mut rest = start + "#[cfg(test)]".len();
        // Further attributes (`#[path = ...]`) and whitespace before the item.
        loop {
            let trimmed = out[rest..].trim_start();
            rest = out.len() - trimmed.len();
            if trimmed.starts_with("#[") {
                rest += trimmed.find(']').map_or(trimmed.len(), |end| end + 1);
            } else {
                break;
            }
        }
        let item = &out[rest..];
        let item = item.strip_prefix("pub ").unwrap_or(item);
        let is_inline_module = item.starts_with("mod ")
            && item
                .find(['{', ';'])
                .is_some_and(|at| item.as_bytes()[at] == b'{');
        from = rest;
        if !is_inline_module {
            continue;
        }
        let open = rest + out[rest..].find('{').unwrap_or(0);
        let mut depth = 0usize;
        let mut close = out.len();
        for (offset, c) in out[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + offset;
                        break;
                    }
                }
                _ => {}
            }
        }
        let blanked: String = out[open + 1..close]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(open + 1..close, &blanked);
        from = open + 1;
    }
    out
}

/// The end of the bracketed group opening at `open` (`(`, `[` or `<`), skipping `->`.
fn group_end(text: &str, open: usize) -> usize {
    let bytes = text.as_bytes();
    let mut depth = 0i32;
    let mut at = open;
    while at < bytes.len() {
        match bytes[at] {
            b'-' if bytes.get(at + 1) == Some(&b'>') => at += 1,
            b'(' | b'[' | b'<' => depth += 1,
            b')' | b']' | b'>' => {
                depth -= 1;
                if depth == 0 {
                    return at;
                }
            }
            _ => {}
        }
        at += 1;
    }
    bytes.len()
}

/// Whether a type mentions `Result<_, String>` anywhere (`Option<Result<T, String>>` too).
/// One-argument results (`io::Result<String>`, `anyhow::Result<String>`) are other errors.
fn has_string_error(ty: &str) -> bool {
    ty.match_indices("Result").any(|(at, _)| {
        let before = ty[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return false;
        }
        let rest = ty[at + "Result".len()..].trim_start();
        if !rest.starts_with('<') {
            return false;
        }
        let open = ty.len() - rest.len();
        let inner = &ty[open + 1..group_end(ty, open)];
        let bytes = inner.as_bytes();
        let mut arguments = Vec::new();
        let (mut depth, mut start, mut index) = (0i32, 0, 0);
        while index < bytes.len() {
            match bytes[index] {
                b'-' if bytes.get(index + 1) == Some(&b'>') => index += 1,
                b'(' | b'[' | b'<' => depth += 1,
                b')' | b']' | b'>' => depth -= 1,
                b',' if depth == 0 => {
                    arguments.push(&inner[start..index]);
                    start = index + 1;
                }
                _ => {}
            }
            index += 1;
        }
        arguments.push(&inner[start..]);
        arguments.retain(|argument| !argument.trim().is_empty());
        let error = arguments.last().map_or("", |argument| argument.trim());
        let error = error.trim_start_matches("::");
        let error = error
            .strip_prefix("std::string::")
            .or_else(|| error.strip_prefix("alloc::string::"))
            .unwrap_or(error);
        arguments.len() == 2 && error == "String"
    })
}

/// Where `word` first stands as a whole word in `text`.
fn word_at(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).map(|(at, _)| at).find(|&at| {
        !text[..at].chars().next_back().is_some_and(is_ident)
            && !text[at + word.len()..].chars().next().is_some_and(is_ident)
    })
}

/// Every function in `code` visible outside its module (`pub`, `pub(crate)`, `pub(in ...)`;
/// not `pub(super)` or `pub(self)`) that returns `Result<_, String>`, and every type alias
/// that names one (an alias would hide it from a signature): (line, name).
fn string_error_signatures(code: &str) -> Vec<(usize, String)> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for (at, _) in code.match_indices("fn ") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        // The qualifiers between the visibility and `fn`.
        let mut head = code[..at].trim_end();
        for qualifier in ["extern \"\"", "extern", "unsafe", "async", "const"] {
            if let Some(rest) = head.strip_suffix(qualifier) {
                if !rest.chars().next_back().is_some_and(is_ident) {
                    head = rest.trim_end();
                }
            }
        }
        let (before, scope) = match head.strip_suffix(')') {
            Some(inner) => {
                let open = inner.rfind('(').unwrap_or(0);
                (inner[..open].trim_end(), Some(inner[open + 1..].trim()))
            }
            None => (head, None),
        };
        let visible = before
            .strip_suffix("pub")
            .is_some_and(|rest| !rest.chars().next_back().is_some_and(is_ident))
            && !matches!(scope, Some("super" | "self"));
        if !visible {
            continue;
        }
        let rest = &code[at + 3..];
        let name_len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        let name = &rest[..name_len];
        // Skip the generics, then the parameters; the return type follows.
        let mut position = at + 3 + name_len;
        let after_name = code[position..].trim_start();
        position = code.len() - after_name.len();
        if after_name.starts_with('<') {
            position = group_end(code, position) + 1;
        }
        let Some(params) = code[position..].find('(') else {
            continue;
        };
        let params_end = group_end(code, position + params);
        let tail = &code[params_end + 1..];
        let end = tail.find(['{', ';']).unwrap_or(tail.len());
        let tail = &tail[..end];
        let Some(returns) = tail.trim_start().strip_prefix("->") else {
            continue;
        };
        let returns = &returns[..word_at(returns, "where").unwrap_or(returns.len())];
        if has_string_error(returns) {
            found.push((code[..at].lines().count(), name.to_string()));
        }
    }
    for (at, _) in code.match_indices("type ") {
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_ident(c) || c == '#')
        {
            continue;
        }
        let rest = &code[at + 5..];
        let Some((name, value)) = rest.split_once('=') else {
            continue;
        };
        let value = &value[..value.find(';').unwrap_or(value.len())];
        let name = name.trim();
        if !name.contains(['{', '}', ';', '(']) && has_string_error(value) {
            let name = name.split('<').next().unwrap_or(name).trim();
            found.push((code[..at].lines().count(), format!("type {name}")));
        }
    }
    found
}

#[test]
fn string_error_detection_reads_signatures() {
    let code = r#"
        pub fn a() -> Result<u8, String> {}
        pub(crate) async fn b<F: Fn(u8) -> u8>(f: F)
            -> Option<Result<Vec<u8>, std::string::String>> where F: Send {}
        pub fn j<F>(f: F) -> Result<u8, Error>
        where
            F: Fn() -> Result<u8, String>, {}
        pub unsafe extern "C" fn k() -> Result<Box<dyn Fn(u8) -> u8>, String> {}
        pub(super) fn c() -> Result<(), String> {}
        fn d() -> Result<(), String> {}
        pub fn e() -> std::io::Result<String> {}
        pub fn f() -> Result<String, Error> {}
        pub const fn g(x: Result<(), String>) -> u8 {}
        pub type H<T> = Result<T, String>;
        impl X { pub fn i(&self) -> Result<Vec<(u8, u8)>, String>; }
    "#;
    let names: Vec<String> = string_error_signatures(&code_only(code))
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    assert_eq!(names, ["a", "b", "k", "i", "type H"]);
    let test_module =
        "pub fn x() {}\n#[cfg(test)]\nmod tests {\n    pub fn y() -> Result<(), String> {}\n}\n";
    assert!(string_error_signatures(&without_test_modules(test_module)).is_empty());
}

#[test]
fn no_function_visible_outside_its_module_returns_a_string_error() {
    // A caller in another module could only compare the text. Errors crossing a module
    // boundary are typed, one type per seam, and `http::error` alone turns them into status
    // codes (ARCHITECTURE.md). Code inside one module, the CLI's edge and tests may keep text.
    let mut found = Vec::new();
    let mut allowed_used = BTreeSet::new();
    for path in sources(&root().join("src")) {
        let relative = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let Some(module) = module_of(&path) else {
            continue;
        };
        let file = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or("");
        if module == "cli"
            || TEST_SUPPORT.contains(&module.as_str())
            || file == "tests"
            || file.ends_with("_tests")
        {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&path).unwrap_or_default());
        for (line, name) in string_error_signatures(&without_test_modules(&code)) {
            let allowed = STRING_ERRORS_ALLOWED
                .iter()
                .find(|(file, function, _)| *file == relative && *function == name);
            match allowed {
                Some(entry) => {
                    allowed_used.insert(entry.0.to_string() + "::" + entry.1);
                }
                None => found.push(format!("{relative}:{line}: {name}")),
            }
        }
    }
    assert!(
        found.is_empty(),
        "functions visible outside their module return Result<_, String>; return the \
         module's typed error instead (or narrow them to pub(super) if only the module uses \
         them):\n{}",
        found.join("\n")
    );
    let stale: Vec<_> = STRING_ERRORS_ALLOWED
        .iter()
        .map(|(file, function, _)| format!("{file}::{function}"))
        .filter(|entry| !allowed_used.contains(entry))
        .collect();
    assert!(
        stale.is_empty(),
        "STRING_ERRORS_ALLOWED lists functions that no longer return Result<_, String>: \
         {stale:?}"
    );
}
