//! A real S3-compatible server (s3s-fs on 127.0.0.1) as the store: inputs and outputs on
//! S3, a server restart during an upload, a killed upload cleaned up by the next run, a
//! wrong secret kept out of the logs, and exit code 3 when the store stays unreachable.

use std::time::Duration;

use crate::common::*;

#[test]
fn prep_reads_and_writes_s3_and_is_idempotent() {
    let dir = tempdir();
    let server = S3Server::start(&dir.path().join("s3"));
    let bucket = server.bucket("data");
    std::fs::create_dir_all(bucket.join("in")).unwrap();
    std::fs::copy(root().join("data/sample.jsonl"), bucket.join("in/sample.jsonl")).unwrap();
    let prep = || {
        run(server.env(&mut taft()).args([
            "prep",
            "--input",
            "s3://data/in/sample.jsonl",
            "--out",
            "s3://data/runs/sample",
        ]))
        .ok()
    };
    let r = prep();
    assert!(r.stdout.contains("prep: done: s3://data/runs/sample"), "{}", r.stdout);
    // The server keeps objects as files: check what was committed on its disk.
    let out = bucket.join("runs/sample");
    let m = manifest(&out).expect("manifest on S3");
    assert_eq!(m["inputs"][0]["url"], "s3://data/in/sample.jsonl");
    let parquet = std::fs::read(out.join("conversations.parquet")).unwrap();
    let rows = taft::data::parquet::read_conversations(parquet.into(), "s3").unwrap();
    assert_eq!(rows.len(), 40);
    let r = prep();
    assert!(r.stdout.contains("prep: up to date"), "{}", r.stdout);
}

/// Names under a folder (recursively) that start with `prefix`.
fn files_starting_with(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            found.extend(files_starting_with(&entry.path(), prefix));
        } else if name.starts_with(prefix) {
            found.push(name);
        }
    }
    found
}

/// Waits until a multipart upload in progress has bytes on the server (s3s-fs keeps each
/// uploaded part as `.upload_id-ID.part-N` in its folder).
fn wait_for_an_upload(server: &S3Server, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while files_starting_with(&server.dir, ".upload_id-").is_empty() {
        assert!(child.try_wait().unwrap().is_none(), "the step ended before its upload was caught");
        assert!(std::time::Instant::now() < deadline, "no multipart upload within 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A prep big enough for a multipart upload (its Parquet is over 10 MiB).
fn big_prep(server: &S3Server, out: &str) -> std::process::Command {
    let mut cmd = taft();
    server.env(&mut cmd).args(["prep", "--out", out, "--set", "synthetic.unlabeled=60000"]);
    cmd
}

#[test]
fn a_step_rides_out_a_restart_of_the_server_during_an_upload() {
    let dir = tempdir();
    let mut server = S3Server::start(&dir.path().join("s3"));
    server.bucket("data");
    let mut child = big_prep(&server, "s3://data/runs/restart")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_an_upload(&server, &mut child);
    // Read the step's logs as they come, to restart the server once the step has met it down.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (lines, pipe) = (lines.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let is_retry = |e: &serde_json::Value| {
        e["target"].as_str().is_some_and(|t| t.starts_with("object_store"))
            && e["message"].as_str().is_some_and(|m| m.contains("retry"))
    };
    server.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).any(|e| is_retry(&e)) {
        assert!(std::time::Instant::now() < deadline, "the step made no request while the server was down");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr = lines.lock().unwrap().join("\n");
    assert!(status.success(), "the step gave up during the restart: {stderr}");
    let retries: Vec<serde_json::Value> = events(&stderr).into_iter().filter(is_retry).collect();
    assert!(!retries.is_empty(), "no retry was logged: {stderr}");
    eprintln!("s3 restart during an upload: {} request(s) retried, e.g. {}", retries.len(), retries[0]["message"]);
    let out = dir.path().join("s3/data/runs/restart");
    let m = manifest(&out).expect("committed after the restart");
    assert_eq!(m["summary"]["conversations"], 61500);
    assert!(files_starting_with(&server.dir, ".upload").is_empty(), "no upload is left in progress");
}

#[test]
fn a_killed_upload_leaves_nothing_behind_once_the_step_is_run_again() {
    let dir = tempdir();
    let server = S3Server::start(&dir.path().join("s3"));
    server.bucket("data");
    let mut child = big_prep(&server, "s3://data/runs/killed")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_an_upload(&server, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = dir.path().join("s3/data/runs/killed");
    assert!(manifest(&out).is_none());
    assert!(!files_starting_with(&server.dir, ".upload-").is_empty(), "the killed run left its upload open");
    let r = run(&mut big_prep(&server, "s3://data/runs/killed")).ok();
    assert!(r.stderr.contains("aborting a multipart upload a killed run left"), "{}", r.stderr);
    assert!(files_starting_with(&server.dir, ".upload").is_empty(), "orphaned uploads were aborted");
    // The server keeps objects as files (and leaves emptied folders): every object left is
    // the committed output's.
    let mut left = files_starting_with(&out, "");
    left.sort();
    assert_eq!(left, ["_MANIFEST.json", "conversations.parquet", "stats.json"]);
}

#[test]
fn a_wrong_secret_is_exit_2_and_no_credential_reaches_the_logs() {
    let dir = tempdir();
    let server = S3Server::start(&dir.path().join("s3"));
    server.bucket("data");
    let wrong = "wrong-secret-0123456789";
    let mut cmd = taft();
    // Debug logs of taft and the store client too: nothing there may carry a credential.
    server.env(&mut cmd).env("AWS_SECRET_ACCESS_KEY", wrong).env("TAFT_LOG", "debug").args([
        "prep",
        "--input",
        s(&root().join("data/sample.jsonl")),
        "--out",
        "s3://data/runs/denied",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("s3://data/runs/denied"), "{}", r.stderr);
    for secret in [wrong, S3_KEY] {
        assert!(!r.stderr.contains(secret), "{secret} in the logs: {}", r.stderr);
    }
    assert!(events(&r.stderr).len() > 3, "JSON logs were written: {}", r.stderr);
}

#[test]
fn an_unreachable_store_exits_3_so_schedulers_retry() {
    let dir = tempdir();
    let mut server = S3Server::start(&dir.path().join("s3"));
    server.stop();
    let mut cmd = taft();
    server.env(&mut cmd).env("TAFT_STORE_RETRY_TIMEOUT", "1").args([
        "prep",
        "--input",
        s(&root().join("data/sample.jsonl")),
        "--out",
        "s3://data/runs/x",
    ]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("s3://data/runs/x"), "{}", r.stderr);
}
