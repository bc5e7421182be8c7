//! A property-based HTTP fuzz run of the served OpenAPI document with schemathesis (PyPI,
//! version pinned in tests/requirements.txt; `.ci/run` installs it), bounded in time: no 5xx,
//! every status, content type and body as the document says. The events stream never ends by
//! itself, so it is left out (the contract and resume tests cover it).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;

/// The run is bounded by its number of cases (the coverage phase's boundary and negative
/// cases, then `MAX_EXAMPLES` generated cases per operation: about a minute on two idle cores);
/// `MAX_TIME_SECS` caps it on a busy machine, and the test kills it past `HARD_LIMIT`.
const MAX_EXAMPLES: u32 = 10;
const MAX_TIME_SECS: u64 = 240;
const HARD_LIMIT: Duration = Duration::from_secs(420);

/// The installed schemathesis, run by module so no script directory needs to be on PATH.
fn schemathesis() -> Command {
    let mut command = Command::new("python3");
    command.args(["-m", "schemathesis.cli"]);
    command
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let server = TestServer::start();
    let addr = server.addr.expect("TCP");
    let work = tempfile::tempdir().unwrap();
    let out_path = work.path().join("stdout.txt");
    let err_path = work.path().join("stderr.txt");
    let mut child = schemathesis()
        .current_dir(work.path())
        .args([
            "run",
            &format!("http://{addr}/api/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {}", server.owner_token),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--exclude-path",
            "/api/groups/{id}/events",
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            &MAX_EXAMPLES.to_string(),
            "--max-time",
            &MAX_TIME_SECS.to_string(),
            "--request-timeout",
            "10",
            "--seed",
            "16",
            "--workers",
            "1",
        ])
        // Files, not pipes: a full pipe would stall the program before the deadline.
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "schemathesis is not installed ({err}): \
                 python3 -m pip install -r server/tests/requirements.txt"
            )
        });
    let deadline = Instant::now() + HARD_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran past {HARD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        !stderr.contains("No module named schemathesis"),
        "schemathesis is not installed: python3 -m pip install -r server/tests/requirements.txt"
    );
    assert!(status.success(), "schemathesis failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("passed"), "no test case ran:\n{stdout}");
}
