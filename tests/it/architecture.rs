//! The import rule of `docs/architecture.md`, checked on the source: dependencies point
//! down the layers below, no import circle among `src` files holds more than two files,
//! and no file holds more than 700 lines of code (comments, blank lines and tests not
//! counted).
//!
//! It reads `src/**/*.rs` as text (std only), so it runs without any feature. What counts
//! as an import of file A on file B: a path in A's code that names an item of B,
//! through `crate::`, `super::` or a child module (in `use` statements and in
//! expressions alike), resolved through re-exports to the file that defines the item.
//! Not counted:
//! - comments (intra-doc links) and string literals;
//! - test code: items under `#[cfg(test)]` (inline test modules, test-only helpers) and
//!   the files declared under it (`tests.rs`, `lockstep.rs`);
//! - re-exports: `pub use` anywhere (a public path kept for users, such as
//!   `limits::RequestLimitsLayer`) and a folder's `mod.rs` (or `lib.rs`) re-exporting
//!   from its own children. They name an item; the code that uses the item imports it
//!   from the file that defines it.
//!
//! `cargo test --test architecture -- --nocapture` prints the graph's summary;
//! with `ARCH_EDGES=1` every file's imports too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, highest first: a file may import its own layer and the ones below, never
/// one above. A module's layer is that of its longest prefix in this table; mirror of
/// the module map in `docs/architecture.md`.
const LAYERS: &[(&str, &[&str])] = &[
    ("kits", &["testing", "client", "doctor"]),
    ("server", &["serve"]),
    ("layer", &["layer", "tunnel"]),
    ("listener", &["listener", "grpc", "takeover"]),
    ("enforcement", &["supervise", "recycle"]),
    ("stream", &["stream"]),
    ("registry", &["registry", "metrics"]),
    ("conn", &["conn"]),
    ("metrics hooks", &["metrics::hooks"]),
    ("vocabulary", &["conn::reason"]),
    (
        "data",
        &[
            "policy",
            "rate",
            "limits",
            "options",
            "census",
            "serde_millis",
        ],
    ),
];

/// The most lines of code a file may hold (blank lines, comments and test code not
/// counted): past it, a file holds more than one concept.
const MAX_CODE_LINES: usize = 700;

/// The largest import circle allowed: two files that know each other (a type and its
/// guard, a folder's facade and a child) are one concept split for size.
const MAX_CIRCLE: usize = 2;

struct File {
    /// The module path, `["conn", "reason"]` for `src/conn/reason.rs`.
    module: Vec<String>,
    /// The code with comments, strings and test items removed.
    code: String,
    /// Re-exported names: the name and the path it stands for (from the crate root).
    reexports: Vec<(String, Vec<String>)>,
    /// Paths this file's code uses, from the crate root.
    uses: Vec<Vec<String>>,
}

fn main_src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Removes comments, string and char literals (keeping line structure irrelevant).
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !is_ident(b[i - 1]))
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            // Multi-byte UTF-8 passes through unchanged.
            let ch = text[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Removes every item under `#[cfg(test)]` (or `#[cfg(all(test, ..))]`); returns the
/// code and the names of child modules declared under it as files.
fn strip_test_items(code: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(code.len());
    let mut test_files = Vec::new();
    let mut rest = code;
    loop {
        let next = ["#[cfg(test)]", "#[cfg(all(test"]
            .iter()
            .filter_map(|m| rest.find(m))
            .min();
        let Some(at) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let b = item.as_bytes();
        // Skip the attribute, then the item: up to its `;` or its matching `}`.
        let mut i = item.find(']').expect("attribute end") + 1;
        let mut depth = 0usize;
        let mut end = b.len();
        while i < b.len() {
            match b[i] {
                b'[' | b'(' => depth += 1,
                b']' | b')' => depth = depth.saturating_sub(1),
                b';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                b'{' if depth == 0 => {
                    let mut braces = 0usize;
                    while i < b.len() {
                        match b[i] {
                            b'{' => braces += 1,
                            b'}' => {
                                braces -= 1;
                                if braces == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                    end = i + 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let skipped = &item[..end.min(item.len())];
        if skipped.trim_end().ends_with(';')
            && let Some(name) = mod_decl(skipped.rsplit("mod ").next().unwrap_or(""), true)
        {
            test_files.push(name);
        }
        rest = &item[end.min(item.len())..];
    }
    (out, test_files)
}

/// `name;` (a file module) or `name {` (inline) after `mod `.
fn mod_decl(after_mod: &str, file_only: bool) -> Option<String> {
    let name: String = after_mod
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let tail = after_mod[name.len()..].trim_start();
    (!name.is_empty() && (tail.starts_with(';') || (!file_only && tail.starts_with('{'))))
        .then_some(name)
}

/// Expands a path that may hold groups, `a::{b, c::{d, e as f}}`, into its paths. Each
/// path keeps an alias: `(segments, name it is known by)`.
fn expand(path: &str) -> Vec<(Vec<String>, String)> {
    let path = path.trim();
    if let Some(open) = path.find('{') {
        let prefix: Vec<String> = split_path(&path[..open]);
        let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
        let mut out = Vec::new();
        for part in split_top(inner) {
            for (mut segs, alias) in expand(&part) {
                if segs == ["self"] {
                    let alias = prefix.last().cloned().unwrap_or_default();
                    out.push((prefix.clone(), alias));
                    continue;
                }
                let mut full = prefix.clone();
                full.append(&mut segs);
                out.push((full, alias));
            }
        }
        return out;
    }
    let (p, alias) = match path.split_once(" as ") {
        Some((p, a)) => (p, Some(a.trim().to_string())),
        None => (path, None),
    };
    let segs = split_path(p);
    if segs.is_empty() {
        return Vec::new();
    }
    let alias = alias.unwrap_or_else(|| segs.last().cloned().unwrap_or_default());
    vec![(segs, alias)]
}

fn split_path(p: &str) -> Vec<String> {
    p.split("::")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn split_top(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// A path as written in `module`, made absolute (from the crate root); `None` for one
/// outside the crate.
fn absolute(
    module: &[String],
    children: &BTreeSet<String>,
    segs: &[String],
) -> Option<Vec<String>> {
    let first = segs.first()?;
    match first.as_str() {
        "crate" => Some(segs[1..].to_vec()),
        "self" => {
            let mut m = module.to_vec();
            m.extend_from_slice(&segs[1..]);
            Some(m)
        }
        "super" => {
            let mut m = module.to_vec();
            let mut rest = segs;
            while rest.first().is_some_and(|s| s == "super") {
                m.pop();
                rest = &rest[1..];
            }
            m.extend_from_slice(rest);
            Some(m)
        }
        child if children.contains(child) => {
            let mut m = module.to_vec();
            m.extend_from_slice(segs);
            Some(m)
        }
        _ => None,
    }
}

/// The `use` statements of `code` (`(inline module, visibility, path text)`) and the
/// other paths starting with `crate::`, `super::`, `self::` or a child module
/// (`(inline module, path)`). The inline module is the path of the `mod x { .. }`
/// blocks around it, which `super::` climbs out of.
#[allow(clippy::type_complexity)]
fn parse(
    code: &str,
    children: &BTreeSet<String>,
) -> (
    Vec<(Vec<String>, String, String)>,
    Vec<(Vec<String>, String)>,
) {
    let mut uses = Vec::new();
    let mut paths = Vec::new();
    let b = code.as_bytes();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut pending_mod: Option<String> = None;
    let mut i = 0;
    let here =
        |inline: &Vec<(String, usize)>| inline.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    while i < b.len() {
        let at_word = i == 0 || (!is_ident(b[i - 1]) && b[i - 1] != b':');
        match b[i] {
            b'{' => {
                depth += 1;
                if let Some(name) = pending_mod.take() {
                    inline.push((name, depth));
                }
                i += 1;
                continue;
            }
            b'}' => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            b';' => {
                pending_mod = None;
                i += 1;
                continue;
            }
            _ => {}
        }
        if at_word && code[i..].starts_with("mod ") {
            if let Some(name) = mod_decl(&code[i + 4..], false) {
                pending_mod = Some(name);
            }
            i += 4;
            continue;
        }
        if at_word && code[i..].starts_with("use ") {
            // Visibility written just before.
            let before = code[..i].trim_end();
            let vis = if before.ends_with("pub") {
                "pub".to_string()
            } else if before.ends_with(')') && before.contains("pub(") {
                let start = before.rfind("pub(").unwrap_or(0);
                before[start..].to_string()
            } else {
                String::new()
            };
            let end = code[i..].find(';').map_or(b.len(), |e| i + e);
            uses.push((here(&inline), vis, code[i + 4..end].to_string()));
            i = end + 1;
            continue;
        }
        if at_word && is_ident(b[i]) {
            let mut k = i;
            while k < b.len() && (is_ident(b[k]) || b[k] == b':') {
                k += 1;
            }
            let word = &code[i..k];
            let head = word.split("::").next().unwrap_or("");
            if word.contains("::")
                && (head == "crate" || head == "super" || head == "self" || children.contains(head))
            {
                paths.push((here(&inline), word.trim_end_matches(':').to_string()));
            }
            i = k;
            continue;
        }
        i += 1;
    }
    (uses, paths)
}

struct Graph {
    files: BTreeMap<String, File>,
    by_module: BTreeMap<Vec<String>, String>,
}

impl Graph {
    fn load(src: &Path) -> Graph {
        let mut paths = Vec::new();
        rs_files(src, &mut paths);
        paths.sort();
        let mut files = BTreeMap::new();
        let mut test_only = BTreeSet::new();
        for path in &paths {
            let module = module_of(src, path);
            let text = fs::read_to_string(path).expect("read");
            let (code, tests) = strip_test_items(&strip_comments_and_strings(&text));
            for t in tests {
                let mut m = module.clone();
                m.push(t);
                test_only.insert(m);
            }
            let mut children = BTreeSet::new();
            for (k, _) in code.match_indices("mod ") {
                if (k == 0 || !is_ident(code.as_bytes()[k - 1]))
                    && let Some(name) = mod_decl(&code[k + 4..], false)
                {
                    children.insert(name);
                }
            }
            let (use_stmts, other) = parse(&code, &children);
            let mut reexports = Vec::new();
            let mut uses = Vec::new();
            let within = |inline: &[String]| [module.as_slice(), inline].concat();
            for (inline, vis, text) in use_stmts {
                let here = within(&inline);
                for (segs, alias) in expand(&text) {
                    let Some(abs) = absolute(&here, &children, &segs) else {
                        continue;
                    };
                    if !vis.is_empty() {
                        reexports.push((alias, abs.clone()));
                    }
                    let own_child = abs.len() > here.len() && abs.starts_with(&here);
                    let facade = vis == "pub" || (!vis.is_empty() && own_child);
                    if !facade {
                        uses.push(abs);
                    }
                }
            }
            for (inline, p) in other {
                if let Some(abs) = absolute(&within(&inline), &children, &split_path(&p)) {
                    uses.push(abs);
                }
            }
            let rel = path
                .strip_prefix(src)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            files.insert(
                rel,
                File {
                    module,
                    code,
                    reexports,
                    uses,
                },
            );
        }
        files.retain(|_, f| !test_only.iter().any(|t| f.module.starts_with(t)));
        let by_module = files
            .iter()
            .map(|(name, f)| (f.module.clone(), name.clone()))
            .collect();
        Graph { files, by_module }
    }

    /// The file defining what `path` names (following re-exports).
    fn resolve(&self, path: &[String], depth: usize) -> Option<String> {
        if depth > 16 {
            return None;
        }
        // The longest prefix that is a file module.
        let mut n = path.len();
        while n > 0 && !self.by_module.contains_key(&path[..n]) {
            n -= 1;
        }
        let file = self.by_module.get(&path[..n])?.clone();
        if let Some(item) = path.get(n) {
            let f = &self.files[&file];
            if let Some((_, target)) = f.reexports.iter().find(|(alias, _)| alias == item) {
                let mut target = target.clone();
                target.extend_from_slice(&path[n + 1..]);
                if target != path {
                    return self.resolve(&target, depth + 1).or(Some(file));
                }
            }
        }
        Some(file)
    }

    fn edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, f) in &self.files {
            let out = edges.entry(name.clone()).or_default();
            for u in &f.uses {
                if let Some(target) = self.resolve(u, 0)
                    && &target != name
                    && self.files.contains_key(&target)
                {
                    out.insert(target);
                }
            }
        }
        edges
    }
}

/// Strongly connected components (Tarjan), largest first.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).expect("low");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).expect("low");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            comp.sort();
            t.out.push(comp);
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    let mut out = t.out;
    out.retain(|c| c.len() > 1);
    out.sort_by_key(|c| std::cmp::Reverse(c.len()));
    out
}

/// The layer of a module (index into `LAYERS`, 0 the highest), `None` for the crate
/// root.
fn layer_of(module: &[String]) -> Option<usize> {
    let joined = module.join("::");
    let mut best: Option<(usize, usize)> = None;
    for (i, (_, prefixes)) in LAYERS.iter().enumerate() {
        for p in *prefixes {
            let matches = joined == *p || joined.starts_with(&format!("{p}::"));
            if matches && best.is_none_or(|(len, _)| p.len() > len) {
                best = Some((p.len(), i));
            }
        }
    }
    best.map(|(_, i)| i)
}

#[test]
fn dependencies_point_down_and_circles_stay_small() {
    let graph = Graph::load(&main_src());
    let edges = graph.edges();
    let count: usize = edges.values().map(BTreeSet::len).sum();
    println!(
        "{} files (test code left out), {} imports between them",
        graph.files.len(),
        count
    );

    let mut unplaced = Vec::new();
    let mut upward = Vec::new();
    for (from, targets) in &edges {
        let fm = &graph.files[from].module;
        if fm.is_empty() {
            continue;
        }
        let Some(fl) = layer_of(fm) else {
            unplaced.push(from.clone());
            continue;
        };
        for to in targets {
            let tm = &graph.files[to].module;
            if let Some(tl) = layer_of(tm)
                && tl < fl
            {
                upward.push(format!(
                    "{from} ({}) -> {to} ({})",
                    LAYERS[fl].0, LAYERS[tl].0
                ));
            }
        }
    }
    println!("layers, highest first:");
    for (i, (name, _)) in LAYERS.iter().enumerate() {
        let members: Vec<&str> = graph
            .files
            .iter()
            .filter(|(_, f)| !f.module.is_empty() && layer_of(&f.module) == Some(i))
            .map(|(n, _)| n.as_str())
            .collect();
        println!("  {name:>13}: {}", members.join(" "));
    }
    if std::env::var_os("ARCH_EDGES").is_some() {
        for (from, to) in &edges {
            println!(
                "  {from} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(" ")
            );
        }
    }
    let circles = circles(&edges);
    println!("import circles (more than one file): {}", circles.len());
    for c in &circles {
        println!("  {} files: {}", c.len(), c.join(" "));
    }
    println!("upward imports: {}", upward.len());
    for u in &upward {
        println!("  {u}");
    }
    let mut sizes: Vec<(usize, &str)> = graph
        .files
        .iter()
        .map(|(name, f)| {
            let lines = f.code.lines().filter(|l| !l.trim().is_empty()).count();
            (lines, name.as_str())
        })
        .collect();
    sizes.sort_by_key(|(lines, _)| std::cmp::Reverse(*lines));
    println!("largest files, lines of code (no comments, blank lines or tests):");
    for (lines, name) in sizes.iter().take(10) {
        println!("  {lines:>5} {name}");
    }
    let too_long: Vec<_> = sizes.iter().filter(|(l, _)| *l > MAX_CODE_LINES).collect();

    assert!(
        unplaced.is_empty(),
        "files in no layer of LAYERS: {unplaced:?}"
    );
    let largest = circles.first().map_or(0, Vec::len);
    assert!(
        largest <= MAX_CIRCLE,
        "an import circle of {largest} files (at most {MAX_CIRCLE}): {:?}",
        circles.first()
    );
    assert!(
        upward.is_empty(),
        "{} upward imports: {upward:#?}",
        upward.len()
    );
    assert!(
        too_long.is_empty(),
        "files over {MAX_CODE_LINES} lines of code: {too_long:?}"
    );
}
