//! The command line: help, version, log formats, and the linked back ends.

use crate::common::*;

#[test]
fn help_and_version() {
    let r = taft_run(&["--version"]).ok();
    assert_eq!(r.stdout.trim(), format!("taft {}", env!("CARGO_PKG_VERSION")));
    let r = taft_run(&["--help"]).ok();
    for sub in ["prep", "run", "synth", "info"] {
        assert!(r.stdout.contains(sub), "{sub} missing from --help");
    }
    let r = taft_run(&["prep", "--help"]).ok();
    for flag in ["--config", "--set", "--input", "--out", "--force", "--log-format"] {
        assert!(r.stdout.contains(flag), "{flag} missing from prep --help");
    }
    let r = taft_run(&["run", "--help"]).ok();
    assert!(r.stdout.contains("--store") && r.stdout.contains("--dry-run"));
    let r = taft_run(&["prep", "--no-such-flag"]);
    assert_eq!(r.code, 2);
}

#[test]
fn logs_are_json_lines_when_asked_and_text_otherwise() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let args = ["prep", "--input", "data/sample.jsonl", "--out", s(&out)];
    let r = run(taft().args(["--log-format", "json"]).args(args)).ok();
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(event["level"].is_string() && event["message"].is_string(), "{line}");
    }
    let r = run(taft().args(["--log-format", "text"]).args(args).arg("--force")).ok();
    assert!(
        r.stderr.contains("INFO")
            && serde_json::from_str::<serde_json::Value>(r.stderr.lines().next().unwrap()).is_err()
    );
}

#[test]
fn info_shows_libtorch_and_onnxruntime_linked_without_ld_library_path() {
    let r = run(taft().env_remove("LD_LIBRARY_PATH").env_remove("ORT_DYLIB_PATH").arg("info")).ok();
    let info: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(info["train"]["libtorch"].as_str().unwrap().starts_with("2.11."), "{info}");
    assert_eq!(info["train"]["matmul_check"], 54.0);
    assert!(info["serve"]["build"].as_str().unwrap().contains("ORT Build Info"), "{info}");
}

#[test]
fn synth_writes_json_lines_that_prep_accepts() {
    let dir = tempdir();
    let gz = dir.path().join("sub/synth.jsonl.gz");
    let r = taft_run(&[
        "synth",
        "--out",
        s(&gz),
        "--set",
        "train=3",
        "--set",
        "val=1",
        "--set",
        "test=1",
        "--set",
        "unlabeled=5",
    ])
    .ok();
    assert!(r.stdout.contains("wrote 10 conversations"), "{}", r.stdout);
    let out = dir.path().join("out");
    let r = taft_run(&["prep", "--input", s(&gz), "--out", s(&out)]).ok();
    assert!(r.stdout.contains("\"conversations\":10"), "{}", r.stdout);
    let r = taft_run(&["synth", "--out", s(&gz), "--set", "trian=3"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown field `trian`"), "{}", r.stderr);
}

#[test]
fn a_reader_gone_away_is_not_a_crash() {
    // `taft … | head`: stdout's reader has closed the pipe before taft writes. The command
    // still does its work and exits 0, with no panic on stderr.
    for args in [&["run", "workflows/demo.yaml", "--dry-run"][..], &["info"][..]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = taft().args(args).stdout(writer).stderr(std::process::Stdio::piped()).output().expect("taft runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("internal error"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_closed_stderr_keeps_the_errors_exit_code() {
    // A failing step whose stderr reader has gone away: the error cannot be written, and the
    // exit code still says which error it was (2: a bad config), not a panic's 101.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let dir = tempdir();
    let status = taft()
        .args(["prep", "-o", s(&dir.path().join("p")), "--set", "synthetic={train: -1}"])
        .stdout(std::process::Stdio::null())
        .stderr(writer)
        .status()
        .expect("taft runs");
    assert_eq!(status.code(), Some(2));
}

#[test]
fn run_refuses_zero_jobs() {
    let r = taft_run(&["run", "workflows/demo.yaml", "--jobs", "0", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--jobs"), "{}", r.stderr);
}
