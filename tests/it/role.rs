//! `taft role` (speaker-role pretraining, TAFT step 1a): it learns the speaker on learnable
//! data and stays at chance on the plain synthetic data, both variants write the heads they
//! should, the original's contiguous split is available, and bad settings are rejected.

use std::path::Path;

use crate::common::*;
use crate::dapt::{fixture, records, training_step, values};

fn role(data: &Path, out: &Path, sets: &[&str]) -> std::process::Command {
    let base = [
        "train.epochs=1",
        "train.lr=1e-3",
        "train.batch_size=64",
        "train.device=cpu",
        "train.threads=1",
        "adaptive.heads=4",
        "adaptive.ffn=64",
    ];
    training_step("role", data, s(out), &base, sets)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn tensor_names(path: &Path) -> Vec<String> {
    let mut names = taft::model::checkpoint::tensor_names(path).unwrap();
    names.sort();
    names
}

#[test]
fn role_learns_the_speaker_and_writes_its_heads() {
    let dir = tempdir();
    let out = dir.path().join("taft");
    run(&mut role(&fixture().prep, &out, &["train.epochs=2"])).ok();
    let m = manifest(&out).unwrap();
    let test = &m["summary"]["test"];
    eprintln!("role (adaptive) on learnable data: test {test}");
    assert!(test["accuracy"].as_f64().unwrap() > 0.85, "{test}");
    let report = json(&out.join("test_report.json"));
    assert_eq!(report["labels"], serde_json::json!(["customer", "operator"]));
    let support: u64 =
        report["report"]["per_class"].as_array().unwrap().iter().map(|c| c["support"].as_u64().unwrap()).sum();
    assert_eq!(support, m["summary"]["data"]["test"].as_u64().unwrap());
    let heads = tensor_names(&out.join("heads.safetensors"));
    assert!(heads.iter().any(|n| n == "adaptive.self_attn.in_proj_weight"), "{heads:?}");
    assert!(heads.iter().any(|n| n == "classifiers.role.weight"), "{heads:?}");
    let recs = records(&out);
    let losses = values(&recs, "eval", "loss");
    assert_eq!(losses.len(), 2, "one evaluation per epoch");
    let best = m["summary"]["best"]["value"].as_f64().unwrap();
    assert_eq!(best, losses.iter().copied().fold(f64::INFINITY, f64::min), "the lowest validation loss is kept");
    let taft = json(&out.join("taft.json"));
    assert_eq!(taft["heads"]["role"], serde_json::json!(["customer", "operator"]));
    assert_eq!(taft["lineage"].as_array().unwrap().len(), 2);

    // The direct variant has no adaptive layer; its output feeds another step as a model.
    let direct = dir.path().join("direct");
    run(&mut role(&fixture().prep, &direct, &["variant=direct"])).ok();
    let heads = tensor_names(&direct.join("heads.safetensors"));
    assert_eq!(heads, ["classifiers.role.bias", "classifiers.role.weight"]);
}

#[test]
fn role_stays_at_chance_without_signal_and_keeps_the_original_split_on_request() {
    let dir = tempdir();
    let plain = dir.path().join("plain");
    taft_run(&["prep", "-o", s(&plain), "--set", "synthetic={seed: 4, train: 10, val: 5, test: 60, unlabeled: 150}"])
        .ok();
    let out = dir.path().join("chance");
    run(&mut role(&plain, &out, &["split=contiguous"])).ok();
    let m = manifest(&out).unwrap();
    let test = &m["summary"]["test"];
    let (acc, kappa, loss) =
        (test["accuracy"].as_f64().unwrap(), test["kappa"].as_f64().unwrap(), test["loss"].as_f64().unwrap());
    // The entropy of the test labels: what a model that knows nothing scores (cross-entropy).
    let report = json(&out.join("test_report.json"));
    let support: Vec<f64> =
        report["report"]["per_class"].as_array().unwrap().iter().map(|c| c["support"].as_f64().unwrap()).collect();
    assert_eq!(support.len(), 2);
    let n: f64 = support.iter().sum();
    let entropy: f64 = support.iter().map(|&c| -(c / n) * (c / n).ln()).sum();
    eprintln!(
        "role on labels without signal: test accuracy {acc:.3}, kappa {kappa:.3}, cross-entropy {loss:.4} (label entropy {entropy:.4})"
    );
    // At chance: accuracy near 0.5 on balanced speakers, no agreement beyond chance, and a
    // cross-entropy equal to the labels' entropy. A model that knows nothing scores exactly
    // that; one that favours a class (a one-class predictor, c ≠ 0.5) scores
    // -½ln c - ½ln(1-c), more than ln 2.
    assert!((0.4..0.6).contains(&acc), "no signal, no skill: {acc}");
    assert!(kappa.abs() < 0.15, "{kappa}");
    assert!((loss - entropy).abs() < 0.02, "cross-entropy {loss} vs label entropy {entropy}");
    // The contiguous cut: the first 75 % of the utterances train.
    let data = &m["summary"]["data"];
    let (train, val) = (data["train"].as_u64().unwrap(), data["val"].as_u64().unwrap());
    assert_eq!(train, ((train + val) as f64 * 0.75) as u64, "{data}");
}

#[test]
fn bad_role_settings_are_rejected() {
    let dir = tempdir();
    let out = dir.path().join("bad");
    for (set, expect) in [
        ("adaptive.heads=12", "adaptive.heads 12 must divide the model's hidden size 32"),
        ("variant=both", "unknown variant `both`"),
        ("val_fraction=0", "val_fraction must be in (0, 1)"),
        ("max_length=1000", "max_length 1000 exceeds the 128 positions of the model"),
        ("dropout=1.5", "dropout 1.5 must be in [0, 1)"),
        ("adaptive.heads=-4", "adaptive.heads -4 must be in 1..=1024"),
    ] {
        let r = run(&mut role(&fixture().prep, &out, &[set]));
        assert_eq!(r.code, 2, "{set}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{set}: {}", r.stderr);
    }
    assert!(manifest(&out).is_none());
}
