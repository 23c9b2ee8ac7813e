//! The hypervisor's top-level modules depend one way: no module reaches,
//! through `crate::` paths, one that reaches back to it. Lower rooms report
//! upward through hooks registered at boot instead (arch's exception
//! handlers, the console's VM names, vgic's guest-timer owner). A source
//! check, no QEMU: it reads kernel/vigil/src.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn sources(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            sources(&e.unwrap().path(), out);
        }
    } else if p.extension().is_some_and(|e| e == "rs") {
        out.push(p.to_path_buf());
    }
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The first path segment after each `crate::`, braces included
/// (`use crate::{arch, gic::its}` names arch and gic).
fn crate_deps(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        let (mut depth, mut item) = (0, String::new());
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
    }
    out
}

#[test]
fn kernel_modules_form_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel/vigil/src");
    let mut graph = BTreeMap::new();
    for e in fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let mut files = Vec::new();
        sources(&p, &mut files);
        let deps: BTreeSet<String> = files
            .iter()
            .flat_map(|f| crate_deps(&fs::read_to_string(f).unwrap()))
            .filter(|d| *d != name && !d.is_empty())
            .collect();
        graph.insert(name, deps);
    }
    for (m, deps) in &graph {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("{m:9} -> {}", deps.join(" "));
    }
    // Depth-first search; a module met again while on the stack closes a
    // cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| *s == m) {
            cycles.push(format!("{} -> {m}", stack[i..].join(" -> ")));
            return;
        }
        if !done.insert(m) {
            return;
        }
        stack.push(m);
        for d in graph.get(m).into_iter().flatten() {
            visit(d, graph, stack, done, cycles);
        }
        stack.pop();
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(graph.contains_key("vm") && graph.contains_key("arch"));
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}
