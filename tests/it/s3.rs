//! A real S3-compatible server (s3s-fs on 127.0.0.1) as the store: inputs and outputs on
//! S3, a server restart during a step, and exit code 3 when the store stays unreachable.

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

#[test]
fn a_step_rides_out_a_restart_of_the_server() {
    let dir = tempdir();
    let mut server = S3Server::start(&dir.path().join("s3"));
    server.bucket("data");
    server.stop();
    // The step starts while the server is down; it comes back 3 s later.
    let mut cmd = taft();
    server.env(&mut cmd).args(["prep", "--out", "s3://data/runs/restart", "--set", "synthetic.unlabeled=2000"]);
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    server.restart();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the step gave up during the restart: {stderr}");
    let m = manifest(&dir.path().join("s3/data/runs/restart")).expect("committed after the restart");
    assert_eq!(m["summary"]["conversations"], 3500);
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
