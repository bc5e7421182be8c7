//! The foreign bindings. `bindings/generate.sh` generates Swift, Kotlin and Python with the
//! in-crate generator from the library this test run built; the Python tests
//! (`tests/bindings/`) and the Python demo then run against it. No Swift or Kotlin compiler is
//! available here, so for those two the check is that generation succeeds and that every
//! exported operation and type appears in the generated source.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::surface::{exported_operations, rust_sources};

/// Generated once per test run into this test's scratch directory under `target/`.
fn bindings() -> &'static Path {
    static GENERATED: OnceLock<PathBuf> = OnceLock::new();
    GENERATED.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bindings");
        let generator = PathBuf::from(env!("CARGO_BIN_EXE_uniffi-bindgen"));
        // The same `cargo test` built the library, as a dependency of this test, so cargo left
        // it in `deps/` rather than copying it up beside the generator.
        let library_name = if cfg!(target_os = "macos") {
            "libcoven_group.dylib"
        } else {
            "libcoven_group.so"
        };
        let library = generator.with_file_name("deps").join(library_name);
        assert!(library.exists(), "{} was not built", library.display());
        let output = Command::new("bash")
            .arg(crate_root().join("bindings/generate.sh"))
            .arg(&out)
            .env("COVEN_LIBRARY", &library)
            .env("UNIFFI_BINDGEN", &generator)
            .output()
            .expect("run bindings/generate.sh");
        assert_success("bindings/generate.sh", &output);
        out
    })
}

fn crate_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[track_caller]
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn python(args: &[&str]) -> Output {
    Command::new("python3")
        .args(args)
        .current_dir(crate_root())
        .env("PYTHONPATH", bindings().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 is required for the binding tests (.ci/run installs it)")
}

#[test]
fn python_binding_tests_pass() {
    let output = python(&[
        "-m",
        "unittest",
        "discover",
        "--start-directory",
        "tests/bindings",
        "--pattern",
        "test_*.py",
        "--verbose",
    ]);
    assert_success("the Python binding tests", &output);
    // unittest reports on stderr; make sure tests actually ran.
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(report.contains("\nOK"), "{report}");
    assert!(!report.contains("Ran 0 tests"), "{report}");
}

#[test]
fn python_demo_runs() {
    let output = python(&["examples/chat.py"]);
    assert_success("examples/chat.py", &output);
    let transcript = String::from_utf8_lossy(&output.stdout);
    let (live, timeline) = transcript
        .split_once("canonical timeline")
        .unwrap_or_else(|| panic!("no timeline in:\n{transcript}"));
    assert_eq!(live.matches("✓ done").count(), 6, "{live}");
    for line in [
        "#1   Arthur   Who keeps the grail tonight?",
        "#5   Arthur   And who guards the gate?",
    ] {
        assert!(timeline.contains(line), "no {line:?} in:\n{timeline}");
    }
    assert_eq!(
        timeline
            .lines()
            .filter(|line| line.starts_with('#'))
            .count(),
        8,
        "{timeline}"
    );
}

/// Every type deriving a UniFFI record, enum, error or object.
fn exported_types() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for file in rust_sources(&crate_root().join("src")) {
        let source = fs::read_to_string(&file).unwrap();
        let mut exported_next = false;
        let mut rename = None;
        for line in source.lines().map(str::trim) {
            if line.starts_with("#[derive(") && line.contains("uniffi::") {
                exported_next = true;
            } else if let Some(name) = line.strip_prefix("#[uniffi(name = \"") {
                rename = name.split('"').next().map(str::to_owned);
            } else if exported_next
                && (line.starts_with("pub struct ") || line.starts_with("pub enum "))
            {
                let name = line.split_whitespace().nth(2).unwrap();
                let name = name.trim_end_matches(['{', ';']).to_owned();
                found.insert(rename.take().unwrap_or(name));
                exported_next = false;
            }
        }
    }
    found
}

fn camel_case(snake: &str) -> String {
    let mut camel = String::new();
    for (i, part) in snake.split('_').enumerate() {
        let mut chars = part.chars();
        match (i, chars.next()) {
            (0, Some(first)) => camel.push(first),
            (_, Some(first)) => camel.extend(first.to_uppercase()),
            (_, None) => {}
        }
        camel.extend(chars);
    }
    camel
}

fn generated(relative: &str) -> String {
    let path = bindings().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn the_scan_finds_the_whole_surface() {
    let operations = exported_operations();
    let names: BTreeSet<String> = operations
        .iter()
        .map(|op| format!("{}.{}", op.owner, op.name))
        .collect();
    for expected in [
        "Coven.open",
        "Coven.open_in_memory",
        "Coven.send",
        "Coven.subscribe",
        "Coven.adopt_group",
        "Coven.close",
        "Harness.run_turn",
        "GroupListener.on_updates",
        "ReplySink.delta",
        "Subscription.cancel",
    ] {
        assert!(
            names.contains(expected),
            "{expected} not found in {names:?}"
        );
    }
    assert!(operations.len() > 40, "{names:?}");
    let types = exported_types();
    for expected in [
        "Coven",
        "CovenError",
        "GroupEvent",
        "GroupUpdate",
        "Config",
        "ReplySink",
    ] {
        assert!(
            types.contains(expected),
            "{expected} not found in {types:?}"
        );
    }
}

#[test]
fn every_exported_operation_appears_in_swift_kotlin_and_python() {
    let swift = generated("swift/CovenGroup.swift");
    let kotlin = generated("kotlin/dev/coven/group/coven_group.kt");
    let python = generated("python/coven_group.py");
    let mut missing = Vec::new();
    for op in exported_operations() {
        let camel = camel_case(&op.name);
        // Swift backquotes names that are keywords (`open`); Kotlin backquotes every name.
        let in_swift = swift.contains(&format!("func {camel}("))
            || swift.contains(&format!("func `{camel}`("));
        let in_kotlin = kotlin.contains(&format!("fun `{camel}`("));
        let in_python = python.contains(&format!("def {}(", op.name));
        for (language, present) in [
            ("Swift", in_swift),
            ("Kotlin", in_kotlin),
            ("Python", in_python),
        ] {
            if !present {
                missing.push(format!("{language}: {}.{}", op.owner, op.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from the bindings: {missing:#?}"
    );
}

#[test]
fn every_exported_type_appears_in_swift_kotlin_and_python() {
    let swift = generated("swift/CovenGroup.swift");
    let kotlin = generated("kotlin/dev/coven/group/coven_group.kt");
    let python = generated("python/coven_group.py");
    // Declarations may break lines between modifiers (`public\nenum`).
    let swift = swift.split_whitespace().collect::<Vec<_>>().join(" ");
    let kotlin = kotlin.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut missing = Vec::new();
    for name in exported_types() {
        let in_swift = ["struct", "enum", "class"].iter().any(|kind| {
            swift.contains(&format!("public {kind} {name}"))
                || swift.contains(&format!("open class {name}"))
        });
        // Kotlin names the error type `...Exception`.
        let kotlin_name = match name.strip_suffix("Error") {
            Some(stem) if name == "CovenError" => format!("{stem}Exception"),
            _ => name.clone(),
        };
        let in_kotlin = [
            "data class",
            "sealed class",
            "enum class",
            "open class",
            "class",
        ]
        .iter()
        .any(|kind| kotlin.contains(&format!("{kind} {kotlin_name}")));
        let in_python = python.contains(&format!("class {name}"));
        for (language, present) in [
            ("Swift", in_swift),
            ("Kotlin", in_kotlin),
            ("Python", in_python),
        ] {
            if !present {
                missing.push(format!("{language}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from the bindings: {missing:#?}"
    );
}

#[test]
fn generated_swift_uses_the_configured_module_names() {
    let out = bindings().join("swift");
    for file in [
        "CovenGroup.swift",
        "CovenGroupFFI.h",
        "CovenGroupFFI.modulemap",
    ] {
        assert!(out.join(file).exists(), "{file} was not generated");
    }
    assert!(generated("swift/CovenGroupFFI.modulemap").contains("module CovenGroupFFI"));
    assert!(generated("kotlin/dev/coven/group/coven_group.kt").contains("package dev.coven.group"));
}
