//! `taft prep`: sample and synthetic data, read-back by Rust and pyarrow, idempotency,
//! `on_error: skip`, gzip input, and a kill in the middle of the write.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use taft::data::parquet::read_conversations;
use taft::data::Conversation;

use crate::common::*;

fn sample() -> std::path::PathBuf {
    root().join("data/sample.jsonl")
}

/// The conversations a JSON-lines file holds, parsed independently of taft's parser: by
/// Python's `json`, with the padding utterances (`<pad>` or author 0) dropped as SPEC §1 says.
fn expected(path: &Path) -> Vec<Conversation> {
    const SCRIPT: &str = r#"
import json, sys
out = []
for line in open(sys.argv[1], encoding="utf-8"):
    if not line.strip():
        continue
    r = json.loads(line)
    utterances = [{"text": t, "speaker": a, "label": l}
                  for t, a, l in zip(r["texts"], r["authors"], r["labels"], strict=True)
                  if t != "<pad>" and a != 0]
    out.append({"id": r["id"], "split": r["split"], "status": r.get("status"),
                "satisfaction": r.get("satisfaction"), "utterances": utterances})
print(json.dumps(out))
"#;
    let r = run(python().args(["-c", SCRIPT, s(path)])).ok();
    let records: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let conversations: Vec<Conversation> =
        records.into_iter().map(|c| serde_json::from_value(c).expect("a conversation")).collect();
    assert!(!conversations.is_empty());
    conversations
}

fn read_back(out: &Path) -> Vec<Conversation> {
    let bytes = std::fs::read(out.join("conversations.parquet")).unwrap();
    read_conversations(Bytes::from(bytes), "test").unwrap()
}

/// Every file the manifest lists exists with that size and sha256, and nothing else does.
fn check_manifest_files(out: &Path) -> serde_json::Value {
    let m = manifest(out).expect("committed");
    let mut listed: Vec<String> = Vec::new();
    for f in m["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        let bytes = std::fs::read(out.join(path)).unwrap();
        assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap(), "{path}");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), f["sha256"].as_str().unwrap(), "{path}");
        listed.push(path.to_string());
    }
    let mut present: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "_MANIFEST.json")
        .collect();
    present.sort();
    listed.sort();
    assert_eq!(present, listed);
    m
}

#[test]
fn sample_round_trips_through_parquet() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let r = taft_run(&["prep", "--input", s(&sample()), "--out", s(&out)]).ok();
    assert!(r.stdout.contains("prep: done"), "{}", r.stdout);
    assert_eq!(read_back(&out), expected(&sample()));
    let m = check_manifest_files(&out);
    assert_eq!(m["step"], "prep");
    assert_eq!(m["inputs"][0]["url"], s(&sample()));
    assert!(m["program"].as_str().unwrap().starts_with("taft "));
    assert_eq!(m["config"]["on_error"], "fail");
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["conversations"], serde_json::json!({"train": 16, "val": 6, "test": 6, "unlabeled": 12}));
    assert_eq!(stats["rejected"], 0);
    let mut lengths: Vec<u64> = expected(&sample()).iter().map(|c| c.utterances.len() as u64).collect();
    lengths.sort();
    let per_conv = &stats["utterances_per_conversation"];
    assert_eq!(per_conv["count"], 40);
    assert_eq!(per_conv["min"], lengths[0]);
    assert_eq!(per_conv["max"], lengths[39]);
    assert_eq!(per_conv["p50"], lengths[19], "nearest-rank median of 40 values is the 20th");
    assert_eq!(
        stats["utterances"]["train"].as_u64().unwrap()
            + stats["utterances"]["val"].as_u64().unwrap()
            + stats["utterances"]["test"].as_u64().unwrap()
            + stats["utterances"]["unlabeled"].as_u64().unwrap(),
        lengths.iter().sum::<u64>()
    );
    // Alerts (author 1) are kept; padding is dropped.
    assert!(stats["speaker"]["train"]["1"].as_u64().unwrap() >= 16);
    assert!(stats["speaker"]["train"].get("0").is_none());
}

#[test]
fn pyarrow_reads_what_prep_wrote() {
    let dir = tempdir();
    let out = dir.path().join("out");
    taft_run(&["prep", "--input", s(&sample()), "--out", s(&out)]).ok();
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
assert str(t.schema.field("utterances").type) == "list<item: struct<text: string not null, speaker: int32 not null, label: int32 not null> not null>", t.schema
print(json.dumps(t.to_pylist(), ensure_ascii=False))
"#;
    let r = run(python().args(["-c", script, s(&out.join("conversations.parquet"))])).ok();
    let rows: Vec<Conversation> = serde_json::from_str(&r.stdout).expect("pyarrow rows match the record type");
    assert_eq!(rows, expected(&sample()));
}

#[test]
fn synthetic_data_is_seeded_and_sized() {
    let dir = tempdir();
    let small = [
        "--set",
        "synthetic.train=40",
        "--set",
        "synthetic.val=10",
        "--set",
        "synthetic.test=10",
        "--set",
        "synthetic.unlabeled=60",
    ];
    let run_to = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["prep", "--out", s(&out)];
        args.extend_from_slice(&small);
        args.extend_from_slice(extra);
        taft_run(&args).ok();
        out
    };
    let a = run_to("a", &["--set", "synthetic.seed=1"]);
    let b = run_to("b", &["--set", "synthetic.seed=1"]);
    let c = run_to("c", &["--set", "synthetic.seed=2"]);
    let (ra, rb, rc) = (read_back(&a), read_back(&b), read_back(&c));
    assert_eq!(ra.len(), 120);
    assert_eq!(ra, rb);
    assert_ne!(ra, rc);
    assert_eq!(ra.iter().filter(|c| c.split == taft::data::Split::Unlabeled).count(), 60);
    assert!(ra.iter().all(|c| (5..=15).contains(&c.utterances.len())));
    check_manifest_files(&a);
}

#[test]
fn second_run_is_up_to_date_and_a_change_is_not() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let input = dir.path().join("in.jsonl");
    std::fs::copy(sample(), &input).unwrap();
    let prep = |extra: &[&str]| {
        let mut args = vec!["prep", "--input", s(&input), "--out", s(&out)];
        args.extend_from_slice(extra);
        taft_run(&args).ok()
    };
    prep(&[]);
    let first = manifest(&out).unwrap();
    let r = prep(&[]);
    assert!(r.stdout.contains("prep: up to date"), "{}", r.stdout);
    assert_eq!(manifest(&out).unwrap(), first, "an up-to-date run rewrites nothing");

    let r = prep(&["--set", "on_error=skip"]);
    assert!(r.stdout.contains("prep: done"), "a changed config runs again: {}", r.stdout);
    assert_ne!(manifest(&out).unwrap()["fingerprint"], first["fingerprint"]);

    let r = prep(&["--set", "on_error=skip", "--force"]);
    assert!(r.stdout.contains("prep: done"), "--force runs again: {}", r.stdout);

    // A changed input is not up to date either.
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str(r#"{"id":"extra","split":"unlabeled","texts":["Bonjour"],"authors":[2],"labels":[0]}"#);
    text.push('\n');
    std::fs::write(&input, text).unwrap();
    let r = prep(&["--set", "on_error=skip"]);
    assert!(r.stdout.contains("prep: done"), "{}", r.stdout);
    assert_eq!(read_back(&out).len(), 41);
}

#[test]
fn gzip_input_gives_the_same_conversations() {
    let dir = tempdir();
    let gz = dir.path().join("sample.jsonl.gz");
    let r = run(python().args([
        "-c",
        "import gzip, shutil, sys; shutil.copyfileobj(open(sys.argv[1], 'rb'), gzip.open(sys.argv[2], 'wb'))",
        s(&sample()),
        s(&gz),
    ]));
    r.ok();
    let out = dir.path().join("out");
    taft_run(&["prep", "--input", s(&gz), "--out", s(&out)]).ok();
    assert_eq!(read_back(&out), expected(&sample()));
}

#[test]
fn skip_sets_bad_records_aside_with_reasons() {
    let dir = tempdir();
    let good = std::fs::read_to_string(sample()).unwrap();
    let mut lines: Vec<&str> = good.lines().take(5).collect();
    lines.insert(
        2,
        r#"{"id":"bad1","split":"train","status":9,"satisfaction":1,"texts":["a"],"authors":[2],"labels":[0]}"#,
    );
    lines.push("not json at all");
    let input = write_lines(dir.path(), "in.jsonl", &lines);
    let out = dir.path().join("out");
    let r = taft_run(&["prep", "--input", s(&input), "--out", s(&out), "--set", "on_error=skip"]).ok();
    assert!(r.stdout.contains("\"rejected\":2"), "{}", r.stdout);
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(out.join("rejects.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rejects.len(), 2);
    assert_eq!(rejects[0]["line"], 3);
    assert_eq!(rejects[0]["source"], s(&input));
    assert!(rejects[0]["errors"][0].as_str().unwrap().contains("field `status`: 9 is out of range 0..=4"));
    assert!(rejects[0]["record"].as_str().unwrap().contains("bad1"));
    assert_eq!(rejects[1]["line"], 7);
    assert!(rejects[1]["errors"][0].as_str().unwrap().starts_with("not JSON"));
    assert_eq!(read_back(&out).len(), 5);
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["rejected"], 2);
    check_manifest_files(&out);
}

#[test]
fn failed_run_over_a_committed_output_leaves_it_uncommitted() {
    let dir = tempdir();
    let out = dir.path().join("out");
    taft_run(&["prep", "--input", s(&sample()), "--out", s(&out)]).ok();
    assert!(manifest(&out).is_some());
    let bad = write_lines(dir.path(), "bad.jsonl", &[r#"{"id":1,"split":"train"}"#]);
    let r = taft_run(&["prep", "--input", s(&bad), "--out", s(&out)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(manifest(&out).is_none(), "a failed rerun must not leave the old manifest claiming the output");
}

#[test]
fn killed_mid_write_leaves_no_manifest_and_a_rerun_commits_and_cleans_up() {
    let dir = tempdir();
    let input = dir.path().join("big.jsonl");
    taft_run(&["synth", "--out", s(&input), "--scale", "10"]).ok();
    let out = dir.path().join("out");
    let mut child = taft()
        .args(["prep", "--input", s(&input), "--out", s(&out)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the Parquet file's staging copy (`conversations.parquet#N`) holds bytes,
    // then kill the step hard, in the middle of its write.
    let deadline = Instant::now() + Duration::from_secs(60);
    let staging = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains(".parquet#")).collect())
            .unwrap_or_default()
    };
    while !staging().iter().any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0)) {
        assert!(child.try_wait().unwrap().is_none(), "prep finished before it could be killed; use a larger input");
        assert!(Instant::now() < deadline, "prep never staged any bytes");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(manifest(&out).is_none(), "a killed step must not look complete");
    assert!(!staging().is_empty(), "the kill left a staging file");

    taft_run(&["prep", "--input", s(&input), "--out", s(&out)]).ok();
    assert_eq!(read_back(&out).len(), 58_000);
    check_manifest_files(&out);
    assert!(staging().is_empty(), "no staging file is left");
}

#[tokio::test]
async fn prep_writes_to_a_memory_store_through_the_library() {
    use taft::config::RawConfig;
    use taft::steps::{self, Overrides, StepKind};
    let mut raw = RawConfig::empty("test");
    raw.apply_sets(&[
        "synthetic.train=5".into(),
        "synthetic.val=0".into(),
        "synthetic.test=0".into(),
        "synthetic.unlabeled=5".into(),
    ])
    .unwrap();
    let overrides = Overrides { out: Some("memory://it-prep/out".into()), ..Default::default() };
    let report = steps::run(StepKind::Prep, &raw, &overrides).await.unwrap();
    assert!(!report.up_to_date);
    let store = taft::store::Store::open("memory://it-prep/out").unwrap();
    let bytes = store.get("conversations.parquet").await.unwrap().unwrap();
    assert_eq!(read_conversations(bytes, "memory").unwrap().len(), 10);
    let again = steps::run(StepKind::Prep, &raw, &overrides).await.unwrap();
    assert!(again.up_to_date);
}
