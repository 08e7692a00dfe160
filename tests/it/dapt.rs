//! `taft dapt` and the trainer end to end: learning on a tiny model, metrics read back by
//! TensorBoard's reader, the output loaded by transformers, same seed → same run, SIGKILL
//! and resume → the same result, NaN losses and bad configs stopping with clear errors.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use taft::model::checkpoint::{load_weights, read_config};
use taft::model::heads::{Classifier, MlmHead};
use tch::{nn, Device};

use crate::common::*;
use crate::model::{max_abs_diff, parity_script, read};

/// transformers vs taft on the MLM logits of the model taft trained.
const LOGITS_TOL: f64 = 1e-4;

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub prep: PathBuf,
    pub init: PathBuf,
}

/// A small learnable dataset and a tiny RoBERTa-family model, made once.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempdir();
        let (prep, init) = (dir.path().join("prep"), dir.path().join("init"));
        taft_run(&["prep", "-o", s(&prep), "--set", "synthetic={seed: 3, train: 10, val: 5, test: 5, unlabeled: 250, learnable: true}"]).ok();
        taft_run(&[
            "init", "-i", s(&prep), "-o", s(&init), "--set",
            "scratch={vocab_size: 400, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64, max_length: 128}",
        ])
        .ok();
        Fixture { _dir: dir, prep, init }
    })
}

/// `taft dapt` on the fixture into `out`, small and fast, with extra `--set`s.
fn dapt(out: &Path, sets: &[&str]) -> std::process::Command {
    dapt_to(s(out), sets)
}

/// [`dapt`] into a store URL.
fn dapt_to(out: &str, sets: &[&str]) -> std::process::Command {
    let base = [
        "block_size=64",
        "train.epochs=2",
        "train.lr=1e-3",
        "train.device=cpu",
        "train.threads=1",
        "train.checkpoint_every=5",
        "train.log_every=5",
    ];
    training_step("dapt", &fixture().prep, out, &base, sets)
}

/// `taft STEP` on a prep output and the fixture's model into `out`, with `--set`s: `base`
/// first, then `sets`.
pub fn training_step(step: &str, data: &Path, out: &str, base: &[&str], sets: &[&str]) -> std::process::Command {
    let mut cmd = taft();
    cmd.args([step, "-i", s(data), "-i", s(&fixture().init), "-o", out]);
    for set in base.iter().chain(sets) {
        cmd.args(["--set", set]);
    }
    cmd
}

pub fn records(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
            r.as_object_mut().unwrap().remove("time");
            r
        })
        .collect()
}

pub fn values(records: &[serde_json::Value], kind: &str, key: &str) -> Vec<f64> {
    records.iter().filter(|r| r["kind"] == kind).map(|r| r[key].as_f64().unwrap()).collect()
}

#[test]
fn dapt_learns_and_its_output_reads_back_in_tensorboard_and_transformers() {
    let dir = tempdir();
    let out = dir.path().join("dapt");
    let r = run(&mut dapt(&out, &["train.epochs=3"])).ok();
    assert!(r.stdout.contains("dapt: done"), "{}", r.stdout);

    let recs = records(&out);
    let train = values(&recs, "train", "loss");
    let eval = values(&recs, "eval", "loss");
    let ppl = values(&recs, "eval", "perplexity");
    assert_eq!(eval.len(), 3, "one evaluation per epoch");
    let head: f64 = train[..3].iter().sum::<f64>() / 3.0;
    let tail: f64 = train[train.len() - 3..].iter().sum::<f64>() / 3.0;
    eprintln!("dapt: train loss {head:.3} -> {tail:.3}, eval loss {eval:?}");
    assert!(tail < head - 0.3, "the training loss falls: {head} -> {tail}");
    assert!(eval[2] < eval[0], "the evaluation loss falls: {eval:?}");
    assert!(eval[2] < (400f64).ln() - 0.5, "better than a uniform guess over the vocabulary: {}", eval[2]);
    for (l, p) in eval.iter().zip(&ppl) {
        assert!((l.exp() - p).abs() < 1e-9 * p);
    }
    assert!(recs.iter().all(|r| r.get("first_token_words").is_none()), "masked LM alone by default");

    let manifest = manifest(&out).expect("committed");
    let files: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for f in ["config.json", "metrics.jsonl", "model.safetensors", "taft.json", "tokenizer.json"] {
        assert!(files.contains(&f), "{f} in {files:?}");
    }
    assert!(files.iter().all(|f| !f.starts_with("_work")) && !out.join("_work").exists());
    let taft: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("taft.json")).unwrap()).unwrap();
    let steps: Vec<&str> = taft["lineage"].as_array().unwrap().iter().map(|l| l["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["init", "dapt"]);

    // TensorBoard's reader sees metrics.jsonl; transformers loads the model and agrees on logits.
    let reference = dir.path().join("ref.safetensors");
    let r = run(python().args([&parity_script("dapt_ref.py"), s(&out), s(&reference)])).ok();
    eprint!("{}", r.stdout);
    let reference = read(&reference);
    let config = read_config(&out).unwrap();
    let family = config.family("config.json").unwrap();
    assert_eq!(config.extra["architectures"], serde_json::json!(["RobertaForMaskedLM"]));
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Classifier::new(&vs.root(), &config, family, None, &[], 0.0);
    let head = MlmHead::new(&MlmHead::path(&vs.root(), family), &config, family);
    load_weights(&vs, &out, &[]).unwrap();
    let ids = &reference["input_ids"];
    let logits = tch::no_grad(|| {
        let hidden = model.encoder.forward_t(ids, None, None, false);
        head.forward(&hidden, model.encoder.embeddings.word_embeddings())
    });
    let diff = max_abs_diff(&logits, &reference["logits"]);
    eprintln!("parity dapt output MLM logits (taft vs transformers): max abs diff {diff:.2e}");
    assert!(diff <= LOGITS_TOL, "{diff}");

    // Same config again: up to date.
    let again = run(&mut dapt(&out, &["train.epochs=3"])).ok();
    assert!(again.stdout.contains("up to date"), "{}", again.stdout);
}

#[test]
fn first_token_words_teaches_the_first_token_its_blocks_words() {
    let dir = tempdir();
    let out = dir.path().join("words");
    run(&mut dapt(&out, &["first_token_words=5", "train.epochs=10", "train.lr=3e-3"])).ok();
    let recs = records(&out);
    let words = values(&recs, "eval", "first_token_words");
    let eval = values(&recs, "eval", "loss");
    eprintln!("dapt with first_token_words: word loss {words:?}, masked LM {eval:?}");
    assert_eq!(words.len(), 10, "one evaluation per epoch");
    assert!(words[9] < words[0] - 0.02, "the first token's word loss falls: {words:?}");
    assert!(eval[9] < eval[0], "masked LM still learns: {eval:?}");
    let summary = &manifest(&out).expect("committed")["summary"];
    assert_eq!(summary["data"]["first_token_words"], 5.0, "{summary}");
}

#[test]
fn a_batch_run_in_parts_trains_as_the_whole_batch() {
    // Without dropout, one block per pass (each block's backward before the next block's
    // forward) gives the whole batch's losses and weights; the summary records the blocks
    // per pass in force. A memory budget below two blocks' activations (about 0.7 MiB each
    // here) picks one block per pass, the same run as the explicit setting.
    let dir = tempdir();
    let init = dir.path().join("init");
    taft_run(&[
        "init", "-i", s(&fixture().prep), "-o", s(&init), "--set",
        "scratch={vocab_size: 400, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64, max_length: 128, dropout: 0.0}",
    ])
    .ok();
    let train = |name: &str, per_pass: &str| {
        let out = dir.path().join(name);
        let mut cmd = taft();
        cmd.args(["dapt", "-i", s(&fixture().prep), "-i", s(&init), "-o", s(&out)]);
        for set in [
            "block_size=64",
            "train.epochs=2",
            "train.lr=1e-3",
            "train.device=cpu",
            "train.threads=1",
            "train.log_every=1",
            "first_token_words=1",
            per_pass,
        ] {
            cmd.args(["--set", set]);
        }
        run(&mut cmd).ok();
        out
    };
    let (whole, parts) = (train("whole", "pass_memory_mib=0"), train("parts", "blocks_per_pass=1"));
    let budget = train("budget", "pass_memory_mib=1");
    let (a, b) = (records(&whole), records(&parts));
    for (kind, key) in [("train", "loss"), ("eval", "loss"), ("eval", "first_token_words")] {
        let (x, y) = (values(&a, kind, key), values(&b, kind, key));
        assert!(x.len() >= 2 && x.len() == y.len(), "{kind} {key}: {x:?} vs {y:?}");
        for (u, v) in x.iter().zip(&y) {
            assert!((u - v).abs() < 1e-4, "{kind} {key}: {x:?} vs {y:?}");
        }
    }
    assert!(values(&a, "train", "loss").last() < values(&a, "train", "loss").first(), "it trains");
    let per_pass = |out: &Path| manifest(out).expect("committed")["summary"]["data"]["blocks_per_pass"].clone();
    assert_eq!((per_pass(&whole), per_pass(&parts), per_pass(&budget)), (8.into(), 1.into(), 1.into()));
    assert_eq!(records(&budget), b, "the budget's parts are the explicit setting's");
}

#[test]
fn same_seed_same_run_and_a_killed_run_resumes_to_the_same_result() {
    let dir = tempdir();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    run(&mut dapt(&a, &[])).ok();
    run(&mut dapt(&c, &[])).ok();
    assert_eq!(records(&a), records(&c), "one seed, one history");
    let weights = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&c), "one seed, one model");

    // SIGKILL somewhere after a few checkpoints, between two of them.
    let killed_after = kill_after_checkpoint(&mut dapt(&b, &[]), &b.join("_work/state.json"), 20);
    assert!(manifest(&b).is_none(), "a killed step leaves nothing that looks finished");

    let r = run(&mut dapt(&b, &[])).ok();
    let resumed = resumed_from(&r.stderr);
    eprintln!("killed after checkpoint {killed_after}, resumed from step {resumed}");
    assert!(resumed >= killed_after);
    assert_eq!(records(&a), records(&b), "the resumed run ends as the uninterrupted one");
    assert!(weights(&a) == weights(&b), "and with the same weights");
    assert!(!b.join("_work").exists());

    // A different seed is a different run (the comparison above can fail).
    let d = dir.path().join("d");
    run(&mut dapt(&d, &["train.seed=5"])).ok();
    assert_ne!(records(&a), records(&d));
}

#[test]
fn sigterm_mid_training_writes_a_checkpoint_exits_3_and_the_retry_resumes() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // No periodic checkpoint: the only one is written on SIGTERM.
    let sets = ["train.checkpoint_every=0", "train.epochs=3"];
    run(&mut dapt(&a, &sets)).ok();
    let log = dir.path().join("b.log");
    let mut child = dapt(&b, &sets)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // SIGTERM once the first of three epochs has been evaluated.
    while !std::fs::read_to_string(&log).unwrap().contains("\"evaluated\"") {
        assert!(child.try_wait().unwrap().is_none(), "ended before its first evaluation");
        assert!(started.elapsed() < Duration::from_secs(60), "no evaluation within a minute");
        std::thread::sleep(Duration::from_millis(5));
    }
    let term = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(3), "SIGTERM is retryable: {stderr}");
    assert!(term.elapsed() < Duration::from_secs(10), "took {:?} to stop", term.elapsed());
    assert!(stderr.contains("stopped by SIGTERM after training step"), "{stderr}");
    assert!(manifest(&b).is_none(), "nothing committed");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("_work/state.json")).expect("a checkpoint on SIGTERM")).unwrap();
    let stopped_at = state["step"].as_u64().unwrap();
    // The lease was released: the retry starts at once and resumes from that checkpoint.
    let r = run(&mut dapt(&b, &sets)).ok();
    assert_eq!(resumed_from(&r.stderr), stopped_at);
    assert_eq!(records(&a), records(&b), "the resumed run ends as the uninterrupted one");
    assert!(std::fs::read(a.join("model.safetensors")).unwrap() == std::fs::read(b.join("model.safetensors")).unwrap());
}

/// Starts `cmd`, SIGKILLs it a moment after its checkpoint `state` (a file on disk) reaches
/// `min_step`, and returns the step of that checkpoint.
pub fn kill_after_checkpoint(cmd: &mut std::process::Command, state: &Path, min_step: u64) -> u64 {
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    loop {
        let step = std::fs::read(state)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|v| v["step"].as_u64());
        if let Some(step) = step.filter(|&s| s >= min_step) {
            std::thread::sleep(Duration::from_millis(37));
            child.kill().unwrap();
            child.wait().unwrap();
            return step;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint within 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Files under a folder, at any depth (0 when it does not exist).
fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { files_under(&p) } else { 1 }).sum()
}

fn resumed_from(stderr: &str) -> u64 {
    events(stderr)
        .iter()
        .find(|e| e["message"] == "resuming from the checkpoint under _work/")
        .and_then(|e| e["step"].as_u64())
        .expect("the rerun resumes")
}

#[test]
fn checkpoints_and_resume_work_on_s3() {
    let dir = tempdir();
    let server = S3Server::start(&dir.path().join("s3"));
    let bucket = server.bucket("runs");
    let local = dir.path().join("local");
    run(&mut dapt(&local, &["train.epochs=1"])).ok();
    let out = bucket.join("dapt");
    let killed_after = kill_after_checkpoint(
        server.env(&mut dapt_to("s3://runs/dapt", &["train.epochs=1"])),
        &out.join("_work/state.json"),
        10,
    );
    assert!(manifest(&out).is_none());
    let r = run(server.env(&mut dapt_to("s3://runs/dapt", &["train.epochs=1"]))).ok();
    let resumed = resumed_from(&r.stderr);
    eprintln!("s3: killed after checkpoint {killed_after}, resumed from step {resumed}");
    assert!(resumed >= killed_after);
    assert_eq!(records(&local), records(&out), "the run resumed on S3 ends as the local one");
    assert!(
        std::fs::read(local.join("model.safetensors")).unwrap()
            == std::fs::read(out.join("model.safetensors")).unwrap()
    );
    assert_eq!(files_under(&out.join("_work")), 0, "no _work/ object is left");
    // Progress and evaluations reach the logs as JSON events.
    let events = events(&r.stderr);
    assert!(events.iter().any(|e| e["message"] == "evaluated" && e["step"].as_u64().is_some()), "{}", r.stderr);
    assert!(events.iter().any(|e| e["message"] == "progress" && e["step"] == e["total"]), "{}", r.stderr);
}

#[test]
fn a_corrupt_checkpoint_stops_the_resume_until_force_starts_over() {
    let dir = tempdir();
    let out = dir.path().join("corrupt");
    kill_after_checkpoint(&mut dapt(&out, &[]), &out.join("_work/state.json"), 10);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_work/state.json")).unwrap()).unwrap();
    let weights = out.join(state["checkpoint"].as_str().unwrap()).join("model.safetensors");
    std::fs::write(&weights, b"not tensors").unwrap();
    let r = run(&mut dapt(&out, &[]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cannot be resumed") && r.stderr.contains("--force"), "{}", r.stderr);
    assert!(manifest(&out).is_none());
    let r = run(dapt(&out, &[]).arg("--force")).ok();
    assert!(!r.stderr.contains("resuming from the checkpoint"), "{}", r.stderr);
    assert!(manifest(&out).is_some() && !out.join("_work").exists());
}

#[test]
fn a_diverging_run_stops_naming_the_step() {
    let dir = tempdir();
    let out = dir.path().join("nan");
    let r = run(&mut dapt(&out, &["train.lr=1e30", "train.max_grad_norm=null"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("training step 2") && r.stderr.contains("the loss is"), "{}", r.stderr);
    assert!(manifest(&out).is_none());
}

#[test]
fn bad_dapt_configs_are_rejected_before_training() {
    let dir = tempdir();
    let out = dir.path().join("bad");
    for (set, expect) in [
        ("block_size=4096", "block_size 4096 exceeds the 128 positions"),
        ("train.lrr=1", "unknown field `lrr`"),
        ("mlm_probability=1.5", "mlm_probability must be in (0, 1)"),
        ("train.precision=fp8", "unknown variant `fp8`"),
        ("first_token_words=-1", "first_token_words must be a finite weight ≥ 0 (0: off), not -1"),
    ] {
        let r = run(&mut dapt(&out, &[set]));
        assert_eq!(r.code, 2, "{set}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{set}: {}", r.stderr);
    }
    if !tch::Cuda::is_available() {
        for precision in ["fp16", "bf16"] {
            let r = run(&mut dapt(&out, &[&format!("train.precision={precision}")]));
            assert_eq!(r.code, 2);
            assert!(r.stderr.contains(&format!("{precision} needs a CUDA device")), "{}", r.stderr);
        }
    }
    let f = fixture();
    let r = taft_run(&["dapt", "-i", s(&f.prep), "-i", s(&f.prep), "-o", s(&out)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("2 prep output(s) and 0 other(s)"), "{}", r.stderr);
}

/// Both reduced precisions train on the GPU: finite evaluation losses that fall.
#[test]
#[ignore = "needs CUDA: run with --ignored on a GPU machine"]
fn dapt_in_fp16_and_bf16_on_cuda() {
    assert!(tch::Cuda::is_available(), "this test needs a CUDA device");
    let dir = tempdir();
    for precision in ["fp16", "bf16"] {
        let out = dir.path().join(precision);
        let r = run(&mut dapt(&out, &["train.device=cuda", &format!("train.precision={precision}"), "train.epochs=3"]))
            .ok();
        let recs = records(&out);
        let eval = values(&recs, "eval", "loss");
        eprintln!("dapt {precision} on CUDA: eval losses {eval:?}");
        assert!(eval.iter().all(|l| l.is_finite()) && eval[2] < eval[0], "{precision}: {eval:?}\n{}", r.stderr);
    }
}
