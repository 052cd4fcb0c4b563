//! The JavaScript client library and the pages, run from `cargo test` so
//! that one command runs the whole suite: the library's unit tests in
//! Node.js, its tests against this build's server binary, the check that
//! the committed `web/dist` is what `web/src` builds to, and the browser
//! test in Debian's Chromium (two people chat, share a file, ask the
//! assistant, survive a restart; an admin kicks one).
//!
//! They need Node.js and npm (the first test installs the dev dependencies
//! with `npm ci`), and Chromium for the browser test; without them they say
//! so and pass, and with `CI` set they fail.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The library's directory.
fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// `npm ci` once per test run, whichever test comes first; `false` when
/// there is no npm here (the caller says it skipped).
fn npm_ready(test: &str) -> bool {
    static INSTALLED: Mutex<Option<bool>> = Mutex::new(None);
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(ready) = *installed {
        if !ready {
            support::skipped(test, "Node.js and npm", "PATH");
        }
        return ready;
    }
    let present = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !present {
        *installed = Some(false);
        support::skipped(test, "Node.js and npm", "PATH");
        return false;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(client_dir())
        .status()
        .expect("run npm ci");
    assert!(status.success(), "npm ci failed in clients/js");
    *installed = Some(true);
    true
}

/// Runs `npm run <script>` in the library's directory with the server
/// binary of this build, and fails the test if it fails.
fn npm_run(test: &str, script: &str) {
    // One at a time: the scripts build into the same directories.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !npm_ready(test) {
        return;
    }
    let output = Command::new("npm")
        .args(["run", script])
        .current_dir(client_dir())
        .env("ROOMCAST_BIN", env!("CARGO_BIN_EXE_roomcast"))
        .output()
        .expect("run npm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "npm run {script} failed:\n{text}");
    // Node's test runner reports what it skipped; say so here too.
    if let Some(line) = text
        .lines()
        .find(|line| line.starts_with("# skipped") && !line.ends_with(" 0"))
    {
        support::skipped(test, "everything its Node tests need", line);
    }
}

#[test]
fn the_client_library_passes_its_unit_tests() {
    npm_run("client library unit tests", "test");
}

#[test]
fn the_client_library_works_against_this_server() {
    npm_run("client library against the server", "test:server");
}

#[test]
fn the_pages_work_in_chromium() {
    npm_run("pages in Chromium", "test:e2e");
}

#[test]
fn the_committed_pages_are_built_from_their_source() {
    npm_run("built pages are current", "check:web");
}
