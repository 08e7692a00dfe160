//! `taft encode`: the frozen encoder's states as an artifact. Shards together hold what the
//! step's own cache computes, finetune trains on them to the same records without one
//! encoder pass, and states of another model, other data, other settings or an incomplete
//! set of shards are refused before any training.

use std::path::Path;

use crate::common::*;
use crate::finetune::{close_records, finetune, parents};

fn encode(prep: &Path, model: &Path, out: &Path, sets: &[&str]) -> Run {
    let mut args = vec!["encode", "-i", s(prep), "-i", s(model), "-o", s(out)];
    for set in ["max_length=64", "fp16=false", "batch_size=16", "threads=1"].iter().chain(sets) {
        args.extend(["--set", set]);
    }
    taft_run(&args)
}

fn summary(out: &Path) -> serde_json::Value {
    manifest(out).expect("a manifest")["summary"].clone()
}

#[test]
fn finetune_reads_encode_shards_as_its_own_cache_and_refuses_states_made_otherwise() {
    let p = parents();
    let dir = tempdir();
    let path = |name: &str| dir.path().join(name);
    // The adaptive model's states in two shards (`--shard`), the direct model's in one.
    encode(&p.prep, &p.adaptive, &path("enc-0"), &[]).ok();
    // The inputs in either order; `--shard` as `--set shard=…`.
    taft_run(&[
        "encode",
        "-i",
        s(&p.adaptive),
        "-i",
        s(&p.prep),
        "-o",
        s(&path("enc-1")),
        "--shard",
        "1/2",
        "--set",
        "max_length=64",
        "--set",
        "fp16=false",
        "--set",
        "batch_size=16",
        "--set",
        "threads=1",
    ])
    .ok();
    // enc-0 was made without a shard: the whole set. Make shard 0/2 beside it.
    encode(&p.prep, &p.adaptive, &path("enc-half"), &["shard=0/2"]).ok();
    encode(&p.prep, &p.direct, &path("enc-direct"), &[]).ok();
    let (whole, half0, half1) = (summary(&path("enc-0")), summary(&path("enc-half")), summary(&path("enc-1")));
    let count = |s: &serde_json::Value| s["states"]["conversations"].as_u64().unwrap();
    // 300 + 60 + 60 labeled conversations, split between the shards by id.
    assert_eq!(count(&whole), 420, "{whole}");
    assert_eq!(count(&half0) + count(&half1), 420);
    assert!(count(&half0) > 150 && count(&half1) > 150, "{half0} {half1}");
    assert_eq!(whole["states"]["first_token_only"], false);
    assert_eq!(summary(&path("enc-direct"))["states"]["first_token_only"], true);
    // fp32 rows of 32 values: every token of the adaptive model's, the first of the direct's.
    let size = |d: &str, f: &str| std::fs::metadata(path(d).join(f)).unwrap().len();
    assert_eq!(size("enc-0", "index.bin"), 420 * 32);
    assert_eq!(size("enc-direct", "states.bin"), 420 * 32 * 4);
    assert!(size("enc-0", "states.bin") > 420 * 32 * 4 * 20, "most conversations fill 64 tokens");
    assert_eq!(size("enc-half", "states.bin") + size("enc-1", "states.bin"), size("enc-0", "states.bin"));

    let sets = ["train.epochs=2", "encoder_cache_fp16=false"];
    for (method, parent, states) in
        [("taft", &p.adaptive, vec![path("enc-half"), path("enc-1")]), ("noadapt", &p.direct, vec![path("enc-direct")])]
    {
        let cached = path(&format!("{method}-cached"));
        run(&mut finetune(method, parent, &cached, &[sets[0], sets[1], "encoder_cache=true"])).ok();
        let read = path(&format!("{method}-read"));
        let mut cmd = finetune(method, parent, &read, &sets);
        for st in &states {
            cmd.args(["-i", s(st)]);
        }
        run(&mut cmd).ok();
        let (a, b) = (crate::dapt::records(&cached), crate::dapt::records(&read));
        assert!(close_records(&a, &b, 1e-5), "{method}: {a:?}\n{b:?}");
        let (built, opened) = (summary(&cached), summary(&read));
        assert_eq!(built["encoder_forwards"], 420, "{method}");
        assert_eq!(opened["encoder_forwards"], 0, "{method}: {opened}");
        assert_eq!(opened["encoder_cache"]["source"], "encode", "{method}");
        assert_eq!(opened["encoder_cache"]["conversations"], 420, "{method}");
    }

    // Refused before training, naming what differs.
    let refused = |method: &str, parent: &Path, states: &[&Path], sets: &[&str], want: &str| {
        let out = path("refused");
        let mut cmd = finetune(method, parent, &out, sets);
        for st in states {
            cmd.args(["-i", s(st)]);
        }
        let r = run(&mut cmd);
        assert_eq!(r.code, 2, "{method} {want}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{method}: wanted `{want}` in {}", r.stderr);
        assert!(manifest(&out).is_none(), "nothing committed");
    };
    let (half, one, direct) = (path("enc-half"), path("enc-1"), path("enc-direct"));
    refused("taft", &p.adaptive, &[&half], &[], "the shards must be 0/n … n-1/n of one n, each once; found 0/2");
    refused("taft", &p.adaptive, &[&half, &one, &half], &[], "each once");
    refused("taft", &p.adaptive, &[&half, &path("enc-0")], &[], "found 0/2, 0/1");
    encode(&p.prep, &p.adaptive, &path("enc-1-fp16"), &["shard=1/2", "fp16=true"]).ok();
    refused("taft", &p.adaptive, &[&half, &path("enc-1-fp16")], &[], "made otherwise");
    refused("noadapt", &p.direct, &[&path("enc-0")], &[], "not of this step's model");
    refused("taft", &p.adaptive, &[&half, &one], &["max_length=48"], "cut to max_length 64");
    refused(
        "taft",
        &p.adaptive,
        &[&half, &one],
        &["truncation=tail"],
        "(truncation head); this step cuts them to 64 (truncation tail)",
    );
    refused("tapt", &p.direct, &[&direct], &[], "method `tapt` trains the encoder");
    // Another prep output (the same conversations, another seed of the generator).
    let other = path("prep-other");
    taft_run(&[
        "prep",
        "-o",
        s(&other),
        "--set",
        "synthetic={seed: 4, train: 300, val: 60, test: 60, unlabeled: 250, learnable: true, noise: 0.0}",
    ])
    .ok();
    let out = path("refused-data");
    let mut cmd = crate::finetune::finetune_on(&other, "noadapt", &p.direct, &out, &[]);
    cmd.args(["-i", s(&direct)]);
    let r = run(&mut cmd);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not of this step's data"), "{}", r.stderr);
}

#[test]
fn states_on_s3_are_written_downloaded_checked_and_read() {
    let p = parents();
    let dir = tempdir();
    let server = S3Server::start(&dir.path().join("s3"));
    let bucket = server.bucket("runs");
    for (from, to) in [(&p.prep, "prep"), (&p.direct, "direct")] {
        let status = std::process::Command::new("cp").arg("-r").arg(from).arg(bucket.join(to)).status().unwrap();
        assert!(status.success());
    }
    let sets = ["--set", "max_length=64", "--set", "threads=1"];
    run(server
        .env(&mut taft())
        .args(["encode", "-i", "s3://runs/prep", "-i", "s3://runs/direct", "-o", "s3://runs/enc"])
        .args(sets))
    .ok();
    let m = manifest(&bucket.join("enc")).expect("committed on S3");
    assert_eq!(m["summary"]["states"]["conversations"], 420);
    assert_eq!(m["summary"]["states"]["fp16"], true);
    // The same noadapt run from local disk and from S3 (the states downloaded and checked).
    let local = dir.path().join("local");
    let mut cmd = finetune("noadapt", &p.direct, &local, &["train.epochs=1"]);
    run(cmd.args(["-i", s(&bucket.join("enc"))])).ok();
    let cmd = finetune("noadapt", &p.direct, &dir.path().join("unused"), &["train.epochs=1"]);
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut remote = taft();
    server.env(&mut remote);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "-i" | "-o" => i += 2,
            a => {
                remote.arg(a);
                i += 1;
            }
        }
    }
    remote.args(["-i", "s3://runs/prep", "-i", "s3://runs/direct", "-i", "s3://runs/enc", "-o", "s3://runs/noadapt"]);
    run(&mut remote).ok();
    let out = bucket.join("noadapt");
    assert_eq!(manifest(&out).unwrap()["summary"]["encoder_forwards"], 0);
    assert_eq!(crate::dapt::records(&out), crate::dapt::records(&local));
    // A states file that is not what its manifest lists is refused.
    std::fs::write(bucket.join("enc/states.bin"), b"torn").unwrap();
    remote.args(["--force"]);
    let r = run(&mut remote);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("s3://runs/enc/states.bin"), "{}", r.stderr);
}
