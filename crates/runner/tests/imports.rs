//! The runner's module graph, read from its sources: every `crate::x`
//! reference of every file in `src/` (tests and comments left out) is an
//! edge from the file's module to `x`. The graph has no cycle, and it keeps
//! the layering ARCHITECTURE.md states: parsing and planning never import an
//! executor, reporters never import an executor, executors never import a
//! reporter. Run it with `cargo test -p ukci-runner --test imports`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module's role: what it may import is decided by it.
const ROLES: &[(&str, Role)] = &[
    ("diag", Role::Value),
    ("durations", Role::Value),
    ("units", Role::Value),
    ("exitcode", Role::Value),
    ("rundir", Role::Value),
    ("envmatch", Role::Value),
    ("manifest", Role::Parse),
    ("hostconfig", Role::Parse),
    ("outcome", Role::Value),
    ("qemu", Role::Plan),
    ("host", Role::Plan),
    ("plan", Role::Plan),
    ("events", Role::Events),
    ("exec", Role::Execute),
    ("kut", Role::Execute),
    ("lane", Role::Execute),
    ("vf", Role::Execute),
    ("hostcheck", Role::Execute),
    ("junit", Role::Report),
    ("terminal", Role::Report),
    ("matrix", Role::Report),
    ("reproduce", Role::Report),
    ("html", Role::Report),
    ("session", Role::Session),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    /// Small value types and plain decisions.
    Value,
    /// Manifests and the host config: parsing and validation.
    Parse,
    /// Host facts, the typed QEMU command line and the plan.
    Plan,
    /// The one interface between executors and reporters.
    Events,
    /// Runs the plan and emits events.
    Execute,
    /// Consumes events (or manifests) and writes output.
    Report,
    /// One run end to end: the only module that joins executors and reporters.
    Session,
}

impl Role {
    /// Whether a module of this role may import one of role `to`.
    fn may_import(self, to: Role) -> bool {
        match self {
            Role::Execute => to != Role::Report && to != Role::Session,
            Role::Report => to != Role::Execute && to != Role::Session,
            Role::Session => true,
            // Values, parsing, planning and the events sit below every
            // executor and reporter.
            _ => to <= self,
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a source file belongs to (`hostcheck/vf_token.rs`
/// belongs to `hostcheck`); `None` for `lib.rs`.
fn module_of(file: &Path, src: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code without its unit tests and without comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim();
        // `#[cfg(test)] mod tests { ... }` ends every file that has one.
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(l.split(" //").next().unwrap_or(l));
        out.push('\n');
    }
    out
}

/// The modules `code` names through `crate::`: `crate::x::...`,
/// `use crate::x;` and `use crate::{x, y::z};`.
fn references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        // `ukci_crate::` or `$crate::` are not this crate.
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group, nested groups skipped.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

/// module → the modules it references (only those that are modules here).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f, &src)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(f, &src) else {
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        let refs = references(&code(&text))
            .into_iter()
            .filter(|r| modules.contains(r) && *r != m)
            .collect::<Vec<_>>();
        g.entry(m).or_default().extend(refs);
    }
    g
}

/// A cycle of `g`, as the modules along it (the first repeated at the end).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for n in g.get(m).into_iter().flatten() {
            match marks.get(n.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|p| p == n).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(n.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(n, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in g.keys() {
        if marks.get(m.as_str()).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(m, g, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_runner_modules_import_each_other_without_a_cycle() {
    let g = graph();
    assert!(g.len() > 10, "read too few modules: {g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle in crates/runner/src: {} (see the layering in ARCHITECTURE.md)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn every_module_keeps_its_layer() {
    let roles: BTreeMap<&str, Role> = ROLES.iter().copied().collect();
    let mut wrong = Vec::new();
    for (m, refs) in graph() {
        let Some(&role) = roles.get(m.as_str()) else {
            wrong.push(format!(
                "module `{m}` has no role: add it to ROLES in crates/runner/tests/imports.rs and to ARCHITECTURE.md"
            ));
            continue;
        };
        for r in refs {
            let to = roles[r.as_str()];
            if !role.may_import(to) {
                wrong.push(format!("`{m}` ({role:?}) imports `{r}` ({to:?})"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Files of `src/` whose code (tests and comments left out) names `what`.
fn files_naming(what: &str) -> Vec<String> {
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut out: Vec<String> = files
        .iter()
        .filter(|f| code(&std::fs::read_to_string(f).unwrap()).contains(what))
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn each_output_and_the_wire_format_have_one_writer() {
    // JUnit is written in junit.rs, the terminal in terminal.rs, the
    // agent's wire format (and the CI matrix's JSON) in one place each.
    assert_eq!(files_naming("quick_junit"), ["junit.rs"]);
    assert_eq!(files_naming("maud"), ["html.rs"]);
    assert_eq!(files_naming("indicatif"), ["terminal.rs"]);
    assert_eq!(files_naming("serde_json"), ["events.rs", "matrix.rs"]);
}

#[test]
fn the_runner_starts_no_process_itself() {
    // Every child goes through crates/supervise: its own process group, a
    // hard timeout, killed and reaped on every path.
    let src = src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let starting: Vec<String> = files
        .iter()
        .filter(|f| {
            code(&std::fs::read_to_string(f).unwrap())
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|word| word == "Command")
        })
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert_eq!(starting, Vec::<String>::new());
}

#[test]
fn the_reader_sees_every_form_of_reference() {
    let text = "use crate::diag::{Diagnostics, shown};\nuse crate::{exitcode, junit::{self, x}, terminal};\n\
                // use crate::session;\nfn f() { crate::rundir::replace(); ukci_crate::x(); }\n\
                #[cfg(test)]\nmod tests {\n    use crate::plan;\n}\n";
    let got: Vec<String> = references(&code(text)).into_iter().collect();
    assert_eq!(got, ["diag", "exitcode", "junit", "rundir", "terminal"]);
    let mut g = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        g.entry(a.to_string())
            .or_insert_with(BTreeSet::new)
            .insert(b.to_string());
    }
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().remove("a");
    assert_eq!(find_cycle(&g), None);
}
