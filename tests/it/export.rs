//! `taft export` and `taft predict`: the exported ONNX file passes `onnx.checker` (full check)
//! and gives Python onnxruntime's outputs; it matches the trained model (tch) within 1e-4 for
//! both encoder families, with the adaptive layer (masked and unmasked) and without, for role
//! and finetune outputs; predict's labels equal evaluate's; shards partition the input; int8
//! agrees with fp32; a failed validation commits nothing; bad inputs are refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow_array::{Array, Float32Array, Int32Array, Int64Array, ListArray, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::*;
use crate::evaluate::evaluate;
use crate::finetune::{finetune, parents};

/// tch vs ONNX Runtime (the step's own check, recorded in its summary).
const TOL: f64 = 1e-4;
/// Rust ort vs Python ort on the same file and the same tokens.
const ORT_TOL: f64 = 1e-5;

pub struct Models {
    _dir: tempfile::TempDir,
    /// RoBERTa family: a tapt finetune output (status; no adaptive layer) and its export with int8.
    pub tapt: PathBuf,
    pub tapt_export: PathBuf,
    /// RoBERTa family: the role output with the adaptive layer (padding masked).
    pub role_export: PathBuf,
    /// BERT family: a role output with an unmasked adaptive layer and a taft finetune from it.
    pub bert_role: PathBuf,
    pub bert_taft: PathBuf,
}

pub fn export(inputs: &[&Path], out: &Path, sets: &[&str]) -> Run {
    let mut cmd = taft();
    cmd.arg("export");
    for i in inputs {
        cmd.args(["-i", s(i)]);
    }
    cmd.args(["-o", s(out), "--set", "threads=1"]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    run(&mut cmd)
}

/// The models and exports the tests share, made once.
pub fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = tempdir();
        let p = |name: &str| dir.path().join(name);
        let prep = &parents().prep;
        // Status only: the satisfaction head of so small a model stays near chance, where int8
        // flips near-ties (the BERT taft model below has both heads).
        run(&mut finetune("tapt", &parents().direct, &p("tapt"), &["train.epochs=3", "satisfaction=none"])).ok();
        export(&[&p("tapt"), prep], &p("tapt-export"), &["quantize=int8"]).ok();
        export(&[&parents().adaptive], &p("role-export"), &[]).ok();
        taft_run(&[
            "init", "-i", s(prep), "-o", s(&p("bert-init")), "--set",
            "scratch={family: bert, vocab_size: 400, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64, max_length: 128}",
        ])
        .ok();
        taft_run(&[
            "role", "-i", s(prep), "-i", s(&p("bert-init")), "-o", s(&p("bert-role")),
            "--set", "train.epochs=1", "--set", "train.batch_size=64", "--set", "train.threads=1",
            "--set", "adaptive={heads: 4, ffn: 64, mask_padding: false}",
        ])
        .ok();
        let mut cmd = taft();
        cmd.args(["finetune", "-i", s(prep), "-i", s(&p("bert-role")), "-o", s(&p("bert-taft"))]);
        for set in ["method=taft", "max_length=64", "train.epochs=2", "train.batch_size=16", "train.threads=1", "encoder_cache=true"] {
            cmd.args(["--set", set]);
        }
        run(&mut cmd).ok();
        Models {
            tapt: p("tapt"),
            tapt_export: p("tapt-export"),
            role_export: p("role-export"),
            bert_role: p("bert-role"),
            bert_taft: p("bert-taft"),
            _dir: dir,
        }
    })
}

/// One row of a predictions file: the item key (id, utterance) and per head (pred, probs).
pub type Rows = BTreeMap<(String, i32), BTreeMap<String, (i32, Vec<f32>)>>;

/// Reads a predictions.parquet (evaluate's or predict's).
pub fn predictions(path: &Path) -> Rows {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut rows = Rows::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = batch.column_by_name("id").unwrap();
        let ids: Vec<String> = if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
            a.values().iter().map(|i| i.to_string()).collect()
        } else {
            let a = col.as_any().downcast_ref::<StringArray>().unwrap();
            (0..a.len()).map(|i| a.value(i).to_string()).collect()
        };
        let utt: Vec<i32> = match batch.column_by_name("utterance") {
            Some(c) => c.as_any().downcast_ref::<Int32Array>().unwrap().values().to_vec(),
            None => vec![-1; ids.len()],
        };
        let schema = batch.schema();
        let heads: Vec<String> =
            schema.fields().iter().filter_map(|f| f.name().strip_suffix("_pred").map(str::to_string)).collect();
        for (r, id) in ids.iter().enumerate() {
            let entry = rows.entry((id.clone(), utt[r])).or_default();
            assert!(entry.is_empty(), "{}: item {id}/{} twice", path.display(), utt[r]);
            for h in &heads {
                let pred = batch.column_by_name(&format!("{h}_pred")).unwrap();
                let pred = pred.as_any().downcast_ref::<Int32Array>().unwrap().value(r);
                let probs = batch.column_by_name(&format!("{h}_probs")).unwrap();
                let list = probs.as_any().downcast_ref::<ListArray>().unwrap().value(r);
                let p = list.as_any().downcast_ref::<Float32Array>().unwrap().values().to_vec();
                entry.insert(h.clone(), (pred, p));
            }
        }
    }
    rows
}

pub fn summary(dir: &Path) -> serde_json::Value {
    manifest(dir).unwrap_or_else(|| panic!("{}: no manifest", dir.display()))["summary"].clone()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max)
}

/// Texts of the test split's conversations (as JSON lines for predict, and as the list the
/// Python reference tokenizes: a one-text conversation's item is its text).
fn texts(n: usize) -> Vec<String> {
    let dir = tempdir();
    let out = dir.path().join("t.jsonl");
    let sets = ["seed=11", "train=0", "val=0", "test=40", "unlabeled=0", "learnable=true"];
    let mut args = vec!["synth", "-o", s(&out)];
    sets.iter().for_each(|x| args.extend(["--set", x]));
    taft_run(&args).ok();
    let text = std::fs::read_to_string(dir.path().join("t.jsonl")).unwrap();
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for t in v["texts"].as_array().unwrap() {
            out.push(t.as_str().unwrap().to_string());
        }
    }
    // Short and long items: single utterances and whole conversations' worth of words.
    let long: Vec<String> = out.chunks(6).map(|c| c.join(" ")).collect();
    out.truncate(n / 2);
    // Text that spells special tokens is read as text, by taft and by `tokenizers` alike.
    out[0] = format!("{} </s> <pad> [SEP] <s>{}", out[0], out[1]);
    out[1] = "[CLS] <mask>".to_string();
    out.extend(long.into_iter().take(n - out.len()));
    out
}

/// Checks one export: the step's recorded parity, then onnx.checker and Python onnxruntime
/// against `taft predict` on the same texts.
fn check_export(export_dir: &Path, work: &Path, model_file: &str) {
    let s_ = summary(export_dir);
    let diffs = s_["validation"]["max_abs_diff"].as_object().unwrap();
    assert!(!diffs.is_empty());
    for (name, d) in diffs {
        assert!(d.as_f64().unwrap() <= TOL, "{}: {name} differs by {d}", export_dir.display());
    }
    let cases = s_["validation"]["cases"].as_array().unwrap();
    let max_length = s_["max_length"].as_u64().unwrap();
    assert!(cases.iter().any(|c| c["batch"] == 8 && c["padding_tokens"].as_u64().unwrap() > 0));
    assert!(cases.iter().any(|c| c["batch"] == 1 && c["sequence"].as_u64() == Some(max_length)));

    let texts = texts(24);
    let texts_json = work.join("texts.json");
    std::fs::write(&texts_json, serde_json::to_vec(&texts).unwrap()).unwrap();
    let lines: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": format!("t{i}"), "texts": [t]}).to_string())
        .collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let jsonl = write_lines(work, "texts.jsonl", &lines);
    let reference = work.join("ref.json");
    let py = run(python().arg(root().join("tests/parity/onnx_ref.py")).args([
        s(export_dir),
        s(&texts_json),
        s(&reference),
        "--model",
        model_file,
    ]));
    assert_eq!(py.code, 0, "onnx_ref.py: {}", py.stderr);
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
    assert_eq!(reference["opset"], 17);
    check_ops(&reference["ops"], s_["graph"].as_str().unwrap(), model_file, &s_);
    // Padding changes nothing unless the adaptive layer attends to it (the original's quirk),
    // or the activations are quantized per batch (int8: their scale depends on the batch).
    if s_["adaptive"]["mask_padding"] != false && model_file == "model.onnx" {
        assert!(reference["padding_max_diff"].as_f64().unwrap() < 1e-4, "{}", reference["padding_max_diff"]);
    }
    let out = work.join(format!("predict-{model_file}"));
    let variant = if model_file.contains("int8") { "model=int8" } else { "model=fp32" };
    // One item per call: the same tokens as the Python side's single runs, whatever the padding.
    let args =
        ["predict", "-i", s(export_dir), "-i", s(&jsonl), "-o", s(&out), "--set", variant, "--set", "batch_size=1"];
    taft_run(&args).ok();
    let rows = predictions(&out.join("predictions.parquet"));
    assert_eq!(rows.len(), texts.len());
    for (head, probs) in reference["probs_single"].as_object().unwrap() {
        for (i, p) in probs.as_array().unwrap().iter().enumerate() {
            let p: Vec<f32> = p.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let id = format!("t{i}");
            let (_, ours) = &rows.iter().find(|((k, _), _)| *k == id).expect("predicted").1[head];
            assert!(max_diff(&p, ours) <= ORT_TOL, "{head} item {i}: python {p:?} vs taft {ours:?}");
        }
    }
}

/// The operators of an export as `onnx` reads them: `fused` writes one contrib Attention per
/// encoder layer (int8: quantized projections and standard attention) and no standalone
/// LayerNormalization, except for the one layer that attends from the first token alone (the
/// adaptive layer, or without one the encoder's last), which is standard operators (four
/// Transposes); `portable` only standard operators.
fn check_ops(ops: &serde_json::Value, graph: &str, model_file: &str, summary: &serde_json::Value) {
    let ops = ops.as_object().unwrap();
    let count = |op: &str| ops.get(op).and_then(|v| v.as_u64()).unwrap_or(0);
    let adaptive = u64::from(!summary["adaptive"].is_null());
    let layers = 2 + adaptive;
    match (graph, model_file.contains("int8")) {
        ("fused", false) => {
            assert_eq!(count("com.microsoft:Attention"), 1 + adaptive, "{ops:?}");
            // Every LayerNorm as InstanceNormalization over rows.
            assert_eq!(count("ai.onnx:InstanceNormalization"), 1 + 2 * layers, "{ops:?}");
            assert_eq!(
                count("ai.onnx:LayerNormalization") + count("com.microsoft:SkipLayerNormalization"),
                0,
                "{ops:?}"
            );
            assert_eq!(count("ai.onnx:Transpose"), 4, "{ops:?}");
        }
        ("fused", true) => {
            assert_eq!(count("com.microsoft:Attention"), 0, "{ops:?}");
            assert_eq!(count("ai.onnx:InstanceNormalization"), 1 + 2 * layers, "{ops:?}");
            assert!(count("ai.onnx:MatMulInteger") > 0, "{ops:?}");
        }
        ("portable", _) => {
            assert!(ops.keys().all(|k| k.starts_with("ai.onnx:")), "{ops:?}");
            assert_eq!(count("ai.onnx:LayerNormalization"), 1 + 2 * layers, "{ops:?}");
        }
        other => panic!("unknown graph {other:?}"),
    }
}

#[test]
fn exports_match_the_trained_model_and_python_onnxruntime_for_both_families() {
    let m = models();
    let dir = tempdir();
    // RoBERTa: finetune without the adaptive layer; role with the masked adaptive layer.
    check_export(&m.tapt_export, dir.path(), "model.onnx");
    let role = summary(&m.role_export);
    assert_eq!((role["family"].as_str(), role["adaptive"]["mask_padding"].as_bool()), (Some("roberta"), Some(true)));
    check_export(&m.role_export, dir.path(), "model.onnx");
    // BERT: role and finetune with the unmasked adaptive layer (the original's quirk).
    for (i, model) in [&m.bert_role, &m.bert_taft].into_iter().enumerate() {
        let out = dir.path().join(format!("bert-{i}"));
        export(&[model], &out, &[]).ok();
        let sm = summary(&out);
        assert_eq!((sm["family"].as_str(), sm["adaptive"]["mask_padding"].as_bool()), (Some("bert"), Some(false)));
        check_export(&out, dir.path(), "model.onnx");
    }
    // The portable graph (standard operators only) of both families and both adaptive masks.
    for (i, model) in [&parents().adaptive, &m.bert_taft].into_iter().enumerate() {
        let out = dir.path().join(format!("portable-{i}"));
        export(&[model], &out, &["graph=portable"]).ok();
        assert_eq!(summary(&out)["graph"], "portable");
        check_export(&out, dir.path(), "model.onnx");
    }
    // The files beside the model.
    let taft_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.tapt_export.join("taft.json")).unwrap()).unwrap();
    assert_eq!(taft_json["export"]["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(taft_json["method"], "tapt");
    assert!(m.tapt_export.join("tokenizer.json").exists());
}

#[test]
fn predict_labels_equal_evaluate_labels() {
    let m = models();
    let dir = tempdir();
    for (model, export_dir) in [(&m.tapt, &m.tapt_export), (&parents().adaptive, &m.role_export)] {
        let eval = dir.path().join("eval");
        let _ = std::fs::remove_dir_all(&eval);
        evaluate(model, &eval, &[]).ok();
        let a = predictions(&eval.join("predictions.parquet"));
        assert!(a.len() > 50);
        // One session on both threads, and two sessions of one thread sharing the runs.
        for instances in [1, 2] {
            let pred = dir.path().join("pred");
            let _ = std::fs::remove_dir_all(&pred);
            taft_run(&[
                "predict",
                "-i",
                s(export_dir),
                "-i",
                s(&parents().prep),
                "-o",
                s(&pred),
                "--set",
                "split=test",
                "--set",
                "batch_size=7",
                "--set",
                "threads=2",
                "--set",
                &format!("instances={instances}"),
            ])
            .ok();
            let done = summary(&pred);
            assert_eq!(done["instances"], instances);
            assert_eq!(done["threads"], 2);
            let b = predictions(&pred.join("predictions.parquet"));
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{}", model.display());
            for (key, heads) in &a {
                for (head, (label, probs)) in heads {
                    let (label2, probs2) = &b[key][head];
                    assert_eq!(label, label2, "{key:?} {head} ({instances} instances)");
                    assert!(max_diff(probs, probs2) <= TOL, "{key:?} {head}: {probs:?} vs {probs2:?}");
                }
            }
        }
    }
}

#[test]
fn shards_are_disjoint_and_cover_the_input() {
    let m = models();
    let dir = tempdir();
    let whole = dir.path().join("whole");
    taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&parents().prep), "-o", s(&whole)]).ok();
    let whole = predictions(&whole.join("predictions.parquet"));
    // Three shards as a workflow's fan-out (`shards: 3`), run in parallel.
    let wf = dir.path().join("shards.yaml");
    std::fs::write(
        &wf,
        format!(
            "name: shards\nstore: {}\nsteps:\n  - name: predict\n    kind: predict\n    shards: 3\n    config: {{inputs: [{}, {}]}}\n",
            s(&dir.path().join("store")),
            s(&m.tapt_export),
            s(&parents().prep)
        ),
    )
    .unwrap();
    let r = taft_run(&["run", s(&wf)]).ok();
    let mut union = Rows::new();
    for i in 0..3 {
        let out = dir.path().join(format!("store/predict-{i}"));
        let shard = format!("{i}/3");
        assert_eq!(manifest(&out).unwrap()["config"]["shard"], shard.as_str(), "{}", r.stdout);
        let rows = predictions(&out.join("predictions.parquet"));
        assert!(rows.len() > whole.len() / 5, "shard {i}: {} of {}", rows.len(), whole.len());
        for (k, v) in rows {
            assert!(union.insert(k.clone(), v).is_none(), "{k:?} in two shards");
        }
    }
    // The flag is the same setting.
    let one = dir.path().join("one");
    let r =
        taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&parents().prep), "-o", s(&one), "--shard", "1/3"]).ok();
    assert!(r.stdout.contains("\"shard\":\"1/3\""), "{}", r.stdout);
    let (one, fanned) = (
        predictions(&one.join("predictions.parquet")),
        predictions(&dir.path().join("store/predict-1/predictions.parquet")),
    );
    assert_eq!(one.keys().collect::<Vec<_>>(), fanned.keys().collect::<Vec<_>>());
    assert_eq!(union.len(), whole.len());
    for (k, heads) in &whole {
        for (head, (label, probs)) in heads {
            assert_eq!(union[k][head].0, *label);
            assert!(max_diff(&union[k][head].1, probs) <= ORT_TOL);
        }
    }
    let bad = taft_run(&[
        "predict",
        "-i",
        s(&m.tapt_export),
        "-i",
        s(&parents().prep),
        "-o",
        s(&dir.path().join("x")),
        "--shard",
        "3/3",
    ]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("shard `3/3`"), "{}", bad.stderr);
}

#[test]
fn int8_agrees_with_fp32() {
    let m = models();
    // Both files predict the test split; the agreement is computed here from their outputs.
    let dir = tempdir();
    let mut rows = Vec::new();
    for variant in ["fp32", "int8"] {
        let out = dir.path().join(variant);
        let model = format!("model={variant}");
        let args = ["predict", "-i", s(&m.tapt_export), "-i", s(&parents().prep), "-o", s(&out)];
        taft_run(&[&args[..], &["--set", "split=test", "--set", &model, "--set", "threads=1"]].concat()).ok();
        rows.push(predictions(&out.join("predictions.parquet")));
    }
    let (fp32, int8) = (&rows[0], &rows[1]);
    assert!(fp32.len() >= 50 && fp32.len() == int8.len(), "{} and {} rows", fp32.len(), int8.len());
    let (mut same, mut worst) = (0usize, 0f64);
    for (key, heads) in fp32 {
        let (label, probs) = &heads["status"];
        let (label8, probs8) = &int8[key]["status"];
        same += usize::from(label == label8);
        worst = worst.max(max_diff(probs, probs8));
    }
    let agreement = same as f64 / fp32.len() as f64;
    assert!(agreement >= 0.97, "int8 agrees with fp32 on {agreement} of the test split");
    assert!(worst < 0.2, "largest probability difference {worst}");
    // The step's own check said the same.
    let sm = summary(&m.tapt_export);
    assert!(sm["int8"]["heads"]["status"]["agreement"].as_f64().unwrap() >= 0.97, "{}", sm["int8"]);
    let fp32_bytes = std::fs::metadata(m.tapt_export.join("model.onnx")).unwrap().len();
    let int8_bytes = std::fs::metadata(m.tapt_export.join("model.int8.onnx")).unwrap().len();
    assert!(int8_bytes < fp32_bytes, "{int8_bytes} vs {fp32_bytes}");
    // The int8 file passes the checker and gives Python onnxruntime's outputs too.
    let dir = tempdir();
    check_export(&m.tapt_export, dir.path(), "model.int8.onnx");
}

#[test]
fn a_failed_validation_commits_nothing_and_bad_inputs_are_refused() {
    let m = models();
    let dir = tempdir();
    // A tolerance no float computation meets: exit 1, the output names the differing output.
    let out = dir.path().join("strict");
    let r = export(&[&m.tapt], &out, &["tolerance=1e-15"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("output `logits_") && r.stderr.contains("nothing was committed"), "{}", r.stderr);
    assert!(manifest(&out).is_none() && !out.join("model.onnx").exists());
    // int8 agreement that cannot be met.
    let r = export(
        &[&m.tapt, &parents().prep],
        &dir.path().join("i8"),
        &["quantize=int8", "min_agreement=1.0", "tolerance=1e-3"],
    );
    if r.code != 0 {
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("int8 model agrees"), "{}", r.stderr);
    }
    // Not a trained model; int8 without data; a stray key.
    let r = export(&[&parents().prep], &dir.path().join("a"), &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("finetune or role output"), "{}", r.stderr);
    let r = export(&[&m.tapt], &dir.path().join("b"), &["quantize=int8"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("prep output"), "{}", r.stderr);
    let r = export(&[&m.tapt], &dir.path().join("c"), &["quantise=int8"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("quantise"), "{}", r.stderr);
    // predict: malformed JSON lines name the file, line and field; the wrong model is refused.
    let bad = write_lines(dir.path(), "bad.jsonl", &[r#"{"texts": ["bonjour"]}"#, r#"{"texts": ["a", 7]}"#]);
    let r = taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&bad), "-o", s(&dir.path().join("p"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("bad.jsonl:2") && r.stderr.contains("texts[1]"), "{}", r.stderr);
    assert!(manifest(&dir.path().join("p")).is_none());
    let r = taft_run(&["predict", "-i", s(&m.tapt), "-i", s(&bad), "-o", s(&dir.path().join("q"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("made by `taft finetune`"), "{}", r.stderr);
    let r = taft_run(&[
        "predict",
        "-i",
        s(&m.tapt_export),
        "-i",
        s(&dir.path().join("missing.jsonl")),
        "-o",
        s(&dir.path().join("r")),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("missing.jsonl"), "{}", r.stderr);
}

/// The original's unmasked adaptive layer (`mask_padding: false`) saw every conversation
/// padded to max_length: in training (the cached encoder states included), evaluate, export
/// and predict, a conversation's probabilities do not depend on the rest of its batch.
#[test]
fn an_unmasked_adaptive_layer_scores_a_conversation_alike_alone_and_in_a_batch() {
    let m = models();
    let dir = tempdir();
    let p = |name: &str| dir.path().join(name);
    // libtorch: evaluate in batches of 1 and of 32.
    evaluate(&m.bert_taft, &p("eval-1"), &["batch_size=1"]).ok();
    evaluate(&m.bert_taft, &p("eval-32"), &["batch_size=32"]).ok();
    let (one, many) =
        (predictions(&p("eval-1").join("predictions.parquet")), predictions(&p("eval-32").join("predictions.parquet")));
    let mut worst = 0f64;
    for (key, heads) in &one {
        for (head, (_, probs)) in heads {
            worst = worst.max(max_diff(probs, &many[key][head].1));
        }
    }
    assert!(worst <= 1e-5, "evaluate: batch of 1 vs 32: {worst}");
    // finetune's own test report (on the cached encoder states, padding states included) is
    // what evaluate (the encoder run on every batch) finds.
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("eval-32").join("metrics.json")).unwrap()).unwrap();
    for head in ["status", "satisfaction"] {
        let (ours, theirs) = (&summary(&m.bert_taft)["test"][head], &metrics["tasks"][head]);
        assert_eq!(ours["f1_macro"], theirs["f1_macro"], "{head}: the cached path scores as evaluate does");
    }

    // ONNX Runtime: one short conversation alone, then inside a batch of 31 long ones.
    export(&[&m.bert_taft], &p("export"), &[]).ok();
    let record = |id: usize, utterances: usize| {
        let texts: Vec<String> = (0..utterances).map(|i| format!("bonjour le problème {i} est résolu merci")).collect();
        serde_json::json!({"id": id, "split": "test", "texts": texts, "authors": vec![2; utterances], "labels": vec![0; utterances]})
            .to_string()
    };
    let short = record(0, 1);
    let long: Vec<String> = (1..32).map(|i| record(i, 6 + i % 5)).collect();
    let alone = write_lines(dir.path(), "alone.jsonl", &[short.as_str()]);
    let mut lines = vec![short.as_str()];
    lines.extend(long.iter().map(String::as_str));
    let batch = write_lines(dir.path(), "batch.jsonl", &lines);
    for (input, out) in [(&alone, "pred-alone"), (&batch, "pred-batch")] {
        taft_run(&["predict", "-i", s(&p("export")), "-i", s(input), "-o", s(&p(out)), "--set", "batch_size=32"]).ok();
    }
    let (a, b) = (
        predictions(&p("pred-alone").join("predictions.parquet")),
        predictions(&p("pred-batch").join("predictions.parquet")),
    );
    assert_eq!(b.len(), 32);
    let key = ("0".to_string(), -1);
    for (head, (label, probs)) in &a[&key] {
        let (label2, probs2) = &b[&key][head];
        let d = max_diff(probs, probs2);
        assert!(label == label2 && d <= 1e-6, "predict {head}: alone {probs:?}, in a batch {probs2:?}");
    }
}

#[test]
fn an_int8_prediction_does_not_depend_on_the_rest_of_its_batch() {
    use taft::infer::{Exported, Variant};
    let dir = &models().tapt_export;
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let url = dir.display().to_string();
    let int8 = Exported::from_bytes(
        &url,
        &read("model.int8.onnx"),
        &read("tokenizer.json"),
        &read("taft.json"),
        Variant::Int8,
        Some(1),
    )
    .unwrap();
    // A long text, and 31 others made of its words in other orders: the same number of
    // tokens, so all 32 run together without padding, with other activations.
    let words: Vec<&str> = "bonjour conseiller ma box ne fonctionne plus depuis hier soir et le voyant reste rouge \
        malgré le redémarrage que vous m'aviez conseillé la semaine dernière pour mon dossier urgent"
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect();
    let probe = words.join(" ");
    let width = int8.ids(&[&probe]).unwrap()[0].len();
    let mut texts = vec![probe.clone()];
    let mut k = 1usize;
    while texts.len() < 32 && k < 10_000 {
        let mut w = words.clone();
        w.rotate_left(k % words.len());
        if k / words.len() % 2 == 1 {
            w.reverse();
        }
        w.swap(0, k % words.len());
        let t = w.join(" ");
        if !texts.contains(&t) && int8.ids(&[&t]).unwrap()[0].len() == width {
            texts.push(t);
        }
        k += 1;
    }
    assert_eq!(texts.len(), 32, "texts of {width} tokens");
    let alone = int8.probabilities(&[&probe], 1).unwrap();
    let together = int8.probabilities(&texts, 32).unwrap();
    for (h, (head, _)) in int8.heads.iter().enumerate() {
        let (a, b) = (&alone[h][0], &together[h][0]);
        assert_eq!(taft::infer::argmax(a), taft::infer::argmax(b), "{head}");
        assert!(max_diff(a, b) <= 1e-6, "{head}: alone {a:?}, in a batch {b:?}");
    }
    // The other rows did differ: the check compares a batch of distinct activations.
    assert!(together[0].iter().skip(1).any(|p| max_diff(p, &together[0][0]) > 1e-4));
}

#[test]
fn predict_ids_are_never_invented_numbers_and_an_empty_shard_keeps_the_schema() {
    let m = models();
    let dir = tempdir();
    let id_type = |path: &Path| {
        let file = std::fs::File::open(path.join("predictions.parquet")).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        builder.schema().field_with_name("id").unwrap().data_type().clone()
    };
    // A line without an id gets FILE:LINE, a string.
    let lines = write_lines(
        dir.path(),
        "calls.jsonl",
        &[r#"{"id": "2", "texts": ["bonjour", "ma box ne marche plus"]}"#, r#"{"texts": ["merci, tout fonctionne"]}"#],
    );
    let out = dir.path().join("p");
    taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&lines), "-o", s(&out)]).ok();
    let ids: Vec<String> = predictions(&out.join("predictions.parquet")).keys().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, ["2", "calls.jsonl:2"]);
    assert_eq!(id_type(&out), arrow_schema::DataType::Utf8);
    // Integer ids and a line without one do not mix: refused, naming the line.
    let mixed = write_lines(dir.path(), "mixed.jsonl", &[r#"{"id": 1, "texts": ["a"]}"#, r#"{"texts": ["b"]}"#]);
    let r = taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&mixed), "-o", s(&dir.path().join("q"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("mixed.jsonl:2") && r.stderr.contains("field `id`"), "{}", r.stderr);
    // One conversation with a string id, two shards: one of them is empty, and both have a
    // string id column.
    let one = write_lines(dir.path(), "one.jsonl", &[r#"{"id": "c-1", "texts": ["bonjour"]}"#]);
    let mut sizes = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("shard-{i}"));
        let shard = format!("{i}/2");
        taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&one), "-o", s(&out), "--shard", &shard]).ok();
        assert_eq!(id_type(&out), arrow_schema::DataType::Utf8, "shard {shard}");
        sizes.push(predictions(&out.join("predictions.parquet")).len());
    }
    sizes.sort();
    assert_eq!(sizes, [0, 1]);
}

#[test]
fn predict_reads_a_prep_output_a_row_group_at_a_time_and_checks_its_hash() {
    let m = models();
    let dir = tempdir();
    // More conversations than one row group holds (4096).
    let prep = dir.path().join("prep");
    let synthetic =
        r#"synthetic={"train": 0, "val": 0, "test": 40, "unlabeled": 8300, "min_utterances": 1, "max_utterances": 2}"#;
    taft_run(&["prep", "-o", s(&prep), "--set", synthetic]).ok();
    let groups = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let committed = taft::store::manifest::Committed::open(s(&prep)).await.unwrap();
        let mut groups = taft::data::parquet::RowGroups::open(&committed, "conversations.parquet").await.unwrap();
        let mut sizes = Vec::new();
        while let Some(g) = groups.next().await.unwrap() {
            sizes.push(g.len());
        }
        sizes
    });
    assert!(groups.len() >= 3 && groups.iter().sum::<usize>() == 8340, "{groups:?}");
    // The test split, found in the last row group, scored as from a file of JSON lines.
    let out = dir.path().join("p");
    taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&prep), "-o", s(&out), "--set", "split=test"]).ok();
    let streamed = predictions(&out.join("predictions.parquet"));
    assert_eq!(streamed.len(), 40);
    // A byte changed in the last row group after the commit: refused once the hash is
    // known, naming the file; nothing is committed.
    let file = prep.join("conversations.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() * 9 / 10;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let bad = dir.path().join("q");
    let r = taft_run(&["predict", "-i", s(&m.tapt_export), "-i", s(&prep), "-o", s(&bad), "--set", "split=test"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("conversations.parquet") && r.stderr.contains("changed after it was committed")
            || r.stderr.contains("not a readable Parquet file"),
        "{}",
        r.stderr
    );
    assert!(manifest(&bad).is_none());
}
