//! The exported surface as the source declares it, scanned from `src/`, for the tests that check
//! every exported operation is covered (bindings generated, refusals tested, closed stores).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An operation or type the exported surface declares, with the name the bindings give it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exported {
    pub owner: String,
    /// snake_case as in Rust (and Python).
    pub name: String,
}

/// Every method of every `#[uniffi::export]` impl block and trait in `src/`, with its
/// exported name (a constructor's or method's `name = "..."` wins), so a new operation is
/// checked without touching this test.
pub fn exported_operations() -> BTreeSet<Exported> {
    let mut found = BTreeSet::new();
    for file in rust_sources(&crate_root().join("src")) {
        let source = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = source.lines().collect();
        let mut index = 0;
        while index < lines.len() {
            if !lines[index].trim_start().starts_with("#[uniffi::export") {
                index += 1;
                continue;
            }
            let header = lines[index + 1].trim();
            let owner = header
                .trim_start_matches("pub ")
                .trim_start_matches("impl ")
                .trim_start_matches("trait ")
                .split([' ', ':', '{'])
                .next()
                .unwrap()
                .to_owned();
            let mut depth = 0i32;
            let mut rename = None;
            for line in &lines[index + 1..] {
                index += 1;
                let trimmed = line.trim();
                if let Some(name) = trimmed
                    .strip_prefix("#[uniffi::constructor(name = \"")
                    .or_else(|| trimmed.strip_prefix("#[uniffi::method(name = \""))
                    .and_then(|rest| rest.split('"').next())
                {
                    rename = Some(name.to_owned());
                }
                if depth == 1 {
                    let signature = trimmed.trim_start_matches("pub ");
                    if let Some(rest) = signature.strip_prefix("fn ") {
                        let name = rest.split(['(', '<']).next().unwrap().to_owned();
                        found.insert(Exported {
                            owner: owner.clone(),
                            name: rename.take().unwrap_or(name),
                        });
                    }
                }
                depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
                if depth == 0 && line.contains('}') {
                    break;
                }
            }
        }
    }
    found
}

/// The names `Coven`'s exported operations have in the bindings.
pub fn coven_operations() -> BTreeSet<String> {
    exported_operations()
        .into_iter()
        .filter(|op| op.owner == "Coven")
        .map(|op| op.name)
        .collect()
}

/// Every `.rs` file under `dir`.
pub fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}
