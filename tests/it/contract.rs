//! The step contract under adversity: outputs that overlap inputs, prefixes holding other
//! files, symbolic links, two writers at once, inputs changed after their commit, content
//! fingerprints, hostile inputs under a memory cap, and exit codes a scheduler can act on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;

fn sample() -> PathBuf {
    root().join("data/sample.jsonl")
}

/// Every file under a folder (links as names, not followed), relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    fn walk(base: &Path, dir: &Path, names: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                walk(base, &entry.path(), names);
            } else {
                names.push(entry.path().strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    walk(dir, dir, &mut names);
    names.sort();
    names
}

#[test]
fn an_output_may_not_overlap_an_input() {
    let dir = tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(sample(), data.join("sample.jsonl")).unwrap();
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    let before = tree(dir.path());
    let input = data.join("sample.jsonl");
    for (out, how) in [
        (data.clone(), "contains the input"),
        (dir.path().to_path_buf(), "contains the input"),
        (input.clone(), "is the input"),
        (data.join("sample.jsonl/x"), "is inside the input"),
    ] {
        let r = taft_run(&["prep", "--input", s(&input), "--out", s(&out)]);
        assert_eq!(r.code, 2, "{}: {}", out.display(), r.stderr);
        assert!(r.stderr.contains(how), "{}: {}", out.display(), r.stderr);
    }
    // `--out .` from the folder that holds the input.
    let r = run(taft().current_dir(&data).args(["prep", "--input", "sample.jsonl", "--out", "."]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(tree(dir.path()), before, "nothing was written or deleted");
}

#[test]
fn a_prefix_holding_other_files_is_refused_and_left_as_it_was() {
    let dir = tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(out.join("sub/data.bin"), "mine too").unwrap();
    let input = sample();
    for force in [false, true] {
        let mut args = vec!["prep", "--input", s(&input), "--out", s(&out)];
        if force {
            args.push("--force");
        }
        let r = taft_run(&args);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("holds 2 file(s) that taft did not write (notes.txt, sub/data.bin)"), "{}", r.stderr);
    }
    assert_eq!(tree(&out), ["notes.txt", "sub/data.bin"]);
}

#[test]
fn a_rerun_deletes_only_what_taft_wrote_and_never_follows_links() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let bad = write_lines(
        dir.path(),
        "in.jsonl",
        &[
            r#"{"id":1,"split":"train","status":1,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#,
            r#"{"id":2,"split":"train","status":9,"satisfaction":3,"texts":["a"],"authors":[2],"labels":[1]}"#,
        ],
    );
    taft_run(&["prep", "--input", s(&bad), "--out", s(&out), "--set", "on_error=skip"]).ok();
    assert!(out.join("rejects.jsonl").exists());
    // Someone adds a file beside the output, and puts links where taft writes.
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("precious.txt"), "keep me").unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::os::unix::fs::symlink(&victim, out.join("_work")).unwrap();
    std::fs::remove_file(out.join("stats.json")).unwrap();
    std::os::unix::fs::symlink(victim.join("precious.txt"), out.join("stats.json")).unwrap();

    // The new output has no rejects: the old rejects.jsonl (taft's) goes, nothing else does.
    std::fs::write(&bad, std::fs::read_to_string(sample()).unwrap()).unwrap();
    taft_run(&["prep", "--input", s(&bad), "--out", s(&out)]).ok();
    assert_eq!(tree(&out), ["_MANIFEST.json", "_work", "conversations.parquet", "notes.txt", "stats.json"]);
    assert!(std::fs::symlink_metadata(out.join("_work")).unwrap().file_type().is_symlink());
    assert!(!std::fs::symlink_metadata(out.join("stats.json")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(victim.join("precious.txt")).unwrap(), "keep me");
    assert_eq!(tree(&victim), ["precious.txt"]);
}

#[test]
fn a_second_writer_exits_3_naming_the_first_and_a_killed_one_does_not_block() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let spawn = |args: &[&str]| {
        taft().args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap()
    };
    let wait_for_lease = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !out.join("_taft/lease").exists() {
            assert!(child.try_wait().unwrap().is_none(), "the run ended before it was seen holding the lease");
            assert!(Instant::now() < deadline, "the run never took the lease");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // A run of several seconds; a second run on the same output while it writes.
    let long = ["prep", "--out", s(&out), "--set", "synthetic.unlabeled=100000"];
    let mut first = spawn(&long);
    wait_for_lease(&mut first);
    let r = taft_run(&long);
    assert!(first.try_wait().unwrap().is_none(), "the first run ended before the second came");
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("another run is writing this output"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("pid {}", first.id())), "{}", r.stderr);
    assert!(first.wait().unwrap().success());
    assert!(taft_run(&long).ok().stdout.contains("up to date"));

    // A run killed while it holds its lease (valid 60 s): its process is gone, so the next
    // run takes over at once instead of waiting for the lease to expire.
    let mut killed = spawn(&[&long[..], &["--force"]].concat());
    wait_for_lease(&mut killed);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let started = Instant::now();
    let r = taft_run(&["prep", "--out", s(&out), "--set", "synthetic.unlabeled=100"]).ok();
    assert!(r.stdout.contains("prep: done"), "{}", r.stdout);
    assert!(r.stderr.contains("taking over the lease of a run that is gone"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(30), "did not wait for the 60 s lease to expire");
}

fn manifest_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("_MANIFEST.json")).unwrap()).unwrap()
}

#[test]
fn inputs_are_checked_against_their_manifests_and_their_content_counts() {
    let dir = tempdir();
    let (prep, other, init) = (dir.path().join("prep"), dir.path().join("other"), dir.path().join("init"));
    let small = "synthetic={train: 5, val: 2, test: 2, unlabeled: 60}";
    taft_run(&["prep", "-o", s(&prep), "--set", small]).ok();
    taft_run(&["prep", "-o", s(&other), "--set", small, "--set", "synthetic.seed=9"]).ok();
    let init_cmd = [
        "init",
        "-i",
        s(&prep),
        "-o",
        s(&init),
        "--set",
        "scratch={vocab_size: 200, hidden_size: 16, num_attention_heads: 2, intermediate_size: 32}",
    ];
    taft_run(&init_cmd).ok();
    assert!(taft_run(&init_cmd).ok().stdout.contains("up to date"));

    // Bytes changed after the commit: refused, naming the file.
    let parquet = prep.join("conversations.parquet");
    let original = std::fs::read(&parquet).unwrap();
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    std::fs::write(&parquet, &tampered).unwrap();
    let r = taft_run(&[&init_cmd[..], &["--force"]].concat());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("{}: ", s(&parquet))) && r.stderr.contains("changed after it was committed"),
        "{}",
        r.stderr
    );

    // The upstream output rewritten with other bytes under the same fingerprint (what a
    // forced rerun of a step that is not byte-reproducible does): downstream is not up to date.
    std::fs::copy(other.join("conversations.parquet"), &parquet).unwrap();
    let mut m = manifest_json(&prep);
    let entry = manifest_json(&other)["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "conversations.parquet")
        .unwrap()
        .clone();
    for f in m["files"].as_array_mut().unwrap() {
        if f["path"] == "conversations.parquet" {
            *f = entry.clone();
        }
    }
    std::fs::write(prep.join("_MANIFEST.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = taft_run(&init_cmd).ok();
    assert!(r.stdout.contains("init: done"), "the content changed, so init runs again: {}", r.stdout);
}

/// Runs `taft ARGS` with its data segment capped at 256 MiB (a runaway allocation aborts
/// it instead of exiting with a code of ours).
fn capped(args: &[&str]) -> Run {
    let exe = env!("CARGO_BIN_EXE_taft");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    run(std::process::Command::new("bash")
        .args(["-c", &format!("ulimit -d 262144; exec '{exe}' {}", quoted.join(" "))])
        .env("TAFT_LOG_FORMAT", "json")
        .current_dir(root()))
}

#[test]
fn hostile_inputs_are_input_errors_in_bounded_memory() {
    let dir = tempdir();
    // 320 MiB without a newline.
    let long = dir.path().join("long.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&long).unwrap());
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..320 {
            f.write_all(&chunk).unwrap();
        }
    }
    let r = capped(&["prep", "--input", s(&long), "--out", s(&dir.path().join("out-long"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "{}:1: the line is 335544320 bytes long, more than max_line_bytes (16777216)",
            s(&long)
        )),
        "{}",
        r.stderr
    );
    // A gzip bomb: 512 MiB of one line from 0.5 MB.
    let bomb = dir.path().join("bomb.jsonl.gz");
    run(python().args([
        "-c",
        "import gzip, sys; m = gzip.compress(b'a' * (8 << 20)); open(sys.argv[1], 'wb').write(m * 64)",
        s(&bomb),
    ]))
    .ok();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 2 << 20);
    let r = capped(&["prep", "--input", s(&bomb), "--out", s(&dir.path().join("out-bomb"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("the line is 536870912 bytes long"), "{}", r.stderr);
    // The limit is a setting: with room for the line it is read (and found not to be JSON).
    let r =
        capped(&["prep", "--input", s(&long), "--out", s(&dir.path().join("out-small")), "--set", "max_line_bytes=64"]);
    assert_eq!(r.code, 2);
    let record = r#"{"id": 1, "split": "unlabeled", "texts": ["a"], "authors": [2], "labels": [1]}"#;
    let small = write_lines(dir.path(), "small.jsonl", &[record]);
    let ok = dir.path().join("out-ok");
    let r = taft_run(&["prep", "--input", s(&small), "--out", s(&ok), "--set", "max_line_bytes=64"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let want = format!(":1: the line is {} bytes long, more than max_line_bytes (64)", record.len());
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    taft_run(&["prep", "--input", s(&small), "--out", s(&ok), "--set", "max_line_bytes=128"]).ok();
    assert!(manifest(&dir.path().join("out-long")).is_none() && manifest(&dir.path().join("out-bomb")).is_none());
}

#[test]
fn bad_settings_are_exit_2_with_the_setting_named() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let input = sample();
    // (arguments, environment, expected message)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--set", "synthetic.train=18446744073709551615"], vec![], "add up to more than"),
        (vec!["--set", "synthetic.max_utterances=100000000"], vec![], "max_utterances must be at most"),
        (vec!["--input", s(&input), "--set", "max_line_bytes=0"], vec![], "max_line_bytes must be between"),
        (
            vec!["--input", s(&input)],
            vec![("TAFT_STORE_RETRY_TIMEOUT", "-1")],
            "TAFT_STORE_RETRY_TIMEOUT=\"-1\": expected a positive number",
        ),
        (vec!["--input", s(&input)], vec![("TAFT_STORE_RETRY_TIMEOUT", "soon")], "TAFT_STORE_RETRY_TIMEOUT=\"soon\""),
        (vec!["--input", s(&input)], vec![("TAFT_LEASE_SECONDS", "0")], "TAFT_LEASE_SECONDS=\"0\""),
    ];
    for (args, env, want) in cases {
        let mut cmd = taft();
        cmd.args(["prep", "--out", s(&out)]).args(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let r = run(&mut cmd);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: expected {want:?} in {}", r.stderr);
    }
    let r = taft_run(&["synth", "--out", s(&dir.path().join("x.jsonl")), "--scale", "18446744073709551615"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("overflow"), "{}", r.stderr);
    // Malformed store URLs and missing accounts are not worth retrying.
    for (url, want) in [
        ("s3://", "s3://"),
        ("az://container/x", "az://container/x"),
        ("s3://b/k?X-Amz-Signature=SECRET", "no query string"),
    ] {
        let r = run(taft().args(["prep", "--input", s(&input), "--out", url]).env_remove("AZURE_STORAGE_ACCOUNT_NAME"));
        assert_eq!(r.code, 2, "{url}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{url}: {}", r.stderr);
        assert!(!r.stderr.contains("SECRET"), "{url}: {}", r.stderr);
    }
}

#[test]
fn a_corrupt_input_parquet_is_exit_2() {
    let dir = tempdir();
    let (prep, init) = (dir.path().join("prep"), dir.path().join("init"));
    taft_run(&["prep", "-o", s(&prep), "--set", "synthetic={train: 5, val: 2, test: 2, unlabeled: 30}"]).ok();
    // Truncated, with a manifest that agrees (a file committed corrupt, not changed later).
    let parquet = prep.join("conversations.parquet");
    let bytes = std::fs::read(&parquet).unwrap();
    let cut = &bytes[..bytes.len() / 2];
    std::fs::write(&parquet, cut).unwrap();
    let mut m = manifest_json(&prep);
    for f in m["files"].as_array_mut().unwrap() {
        if f["path"] == "conversations.parquet" {
            f["size"] = serde_json::json!(cut.len());
            f["sha256"] = serde_json::json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(cut)));
        }
    }
    std::fs::write(prep.join("_MANIFEST.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = taft_run(&["init", "-i", s(&prep), "-o", s(&init)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{}: not a readable Parquet file", s(&parquet))), "{}", r.stderr);
}
