//! The fit loop every training step shares: AdamW with parameter groups, the linear
//! schedule, gradient clipping and accumulation, epochs or a step budget, evaluation and
//! best-checkpoint selection with early stopping, freezing, fp16 autocast with dynamic loss
//! scaling on CUDA, and checkpoints under `<out>/_work/` from which a killed step resumes
//! with the same result as an uninterrupted run.
//!
//! Determinism: the data order of an epoch (the [`Sampler`]), the randomness of a batch
//! (masking) and the dropout seed are all functions of `(seed, epoch, batch)`, so a run
//! resumed at an optimizer step replays exactly what the uninterrupted run did from there.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tch::{nn, Device, Kind, Tensor};

use super::config::{Mode, Precision, TrainConfig};
use super::optim::{no_decay, AdamW, Group};
use super::sampler::{mix, Sampler};
use super::schedule::LinearSchedule;
use super::work::{TrainState, WorkDir};
use crate::error::{Error, Result};
use crate::progress::StepProgress;
use crate::store::commit::Output;

/// Evaluation results by name (`loss`, `perplexity`, `f1_weighted`, …).
pub type Metrics = BTreeMap<String, f64>;

impl TrainConfig {
    /// The device to train on; fp16 and bf16 need CUDA.
    pub fn device(&self) -> Result<Device> {
        let device = crate::model::parse_device(&self.device)?;
        if matches!(self.precision, Precision::Fp16 | Precision::Bf16) && !device.is_cuda() {
            let name = if self.precision == Precision::Fp16 { "fp16" } else { "bf16" };
            return Err(Error::config(format!(
                "train.precision {name} needs a CUDA device (train.device is `{}`, which is the CPU here): use fp32",
                self.device
            )));
        }
        tch::set_num_threads(self.cpu_threads()? as i32);
        Ok(device)
    }
}

/// What a training step trains: its examples, its loss, its evaluation.
pub trait Objective {
    /// How an epoch draws the training examples.
    fn sampler(&self) -> Box<dyn Sampler + '_>;
    /// The mean loss of training examples `batch` (training mode: dropout on), handed to
    /// `backward` in parts that sum to it, each as soon as it is computed: the fit loop runs
    /// a part's backward pass before the objective computes the next, so only one part's
    /// activations are alive at a time. `seed` drives the batch's own randomness (masking).
    fn loss(&self, batch: &[usize], seed: u64, backward: &mut dyn FnMut(Tensor) -> Result<()>) -> Result<()>;
    /// Metrics on the evaluation data (called without gradients).
    fn evaluate(&self) -> Result<Metrics>;
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct Fit {
    pub steps: u64,
    pub total_steps: u64,
    /// Metric records in order (`kind` train or eval, `step`, `epoch`, values, `time`).
    pub history: Vec<serde_json::Value>,
    /// (step, value) of the best evaluation, when `best` is set.
    pub best: Option<(u64, f64)>,
    pub resumed_from: Option<u64>,
    pub stopped_early: bool,
    /// fp16 steps skipped for non-finite gradients.
    pub skipped_steps: u64,
    /// Optimizer steps per second in this process.
    pub steps_per_second: f64,
}

impl Fit {
    /// The last evaluation record, without its wall-clock time (what it records is the
    /// model's, the same in every run).
    pub fn last_eval(&self) -> Option<serde_json::Value> {
        let mut record = self.history.iter().rev().find(|r| r["kind"] == "eval")?.clone();
        if let Some(map) = record.as_object_mut() {
            map.remove("time");
        }
        Some(record)
    }

    /// The summary for the manifest.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "steps": self.steps,
            "total_steps": self.total_steps,
            "resumed_from": self.resumed_from,
            "stopped_early": self.stopped_early,
            "skipped_steps": self.skipped_steps,
            "best": self.best.map(|(step, value)| serde_json::json!({"step": step, "value": value})),
            "last_eval": self.last_eval(),
            "steps_per_second": (self.steps_per_second * 1000.0).round() / 1000.0,
        })
    }
}

/// Initial loss scale, growth interval and factors of the dynamic fp16 loss scaler
/// (`torch.amp.GradScaler` defaults).
const SCALE_INIT: f64 = 65536.0;
const SCALE_GROWTH_INTERVAL: u64 = 2000;

/// Trains the variables of `vs` on `objective`, checkpointing to `work`.
pub fn fit(config: &TrainConfig, vs: &nn::VarStore, objective: &dyn Objective, work: &WorkDir) -> Result<Fit> {
    let sampler = objective.sampler();
    let n = sampler.len();
    if n == 0 {
        return Err(Error::input("training: no training examples"));
    }
    let bs = config.batch_size;
    let batches_per_epoch = n.div_ceil(bs) as u64;
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum);
    let total = config.epochs.saturating_mul(steps_per_epoch).min(config.max_steps.unwrap_or(u64::MAX));
    let schedule = LinearSchedule { total_steps: total, warmup_steps: config.warmup_steps };
    let (autocast, fp16) = match config.precision {
        Precision::Fp16 => (true, true),
        Precision::Bf16 => (true, false),
        Precision::Fp32 => (false, false),
        Precision::Auto => (vs.device().is_cuda(), vs.device().is_cuda()),
    };

    let mut optimizer = AdamW::new(groups(vs, config)?, (0.9, 0.999), 1e-8);
    let mut state = TrainState::new(work.fingerprint(), if fp16 { SCALE_INIT } else { 1.0 });
    let resumed_from = match work.load(vs, &mut optimizer)? {
        Some(saved) => {
            tracing::info!(step = saved.step, "resuming from the checkpoint under _work/");
            state = saved;
            Some(state.step)
        }
        None => None,
    };

    let started = Instant::now();
    let start_step = state.step;
    let mut progress = StepProgress::new("training", total, state.step);
    let mut order: Option<(u64, Vec<usize>)> = None;
    while state.step < total && !state.stopped {
        let epoch = state.step / steps_per_epoch;
        let k = state.step % steps_per_epoch;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let idx = sampler.order(config.seed, epoch);
            if idx.len() != n {
                return Err(Error::Other(format!(
                    "the sampler drew {} examples for epoch {epoch}, not {n}",
                    idx.len()
                )));
            }
            order = Some((epoch, idx));
        }
        let idx = &order.as_ref().expect("set above").1;
        let first = k * config.grad_accum;
        let last = ((k + 1) * config.grad_accum).min(batches_per_epoch);
        let count = (last - first) as f64;

        optimizer.zero_grad();
        let mut loss_sum = 0.0;
        for b in first..last {
            let start = b as usize * bs;
            let batch = &idx[start..(start + bs).min(n)];
            let seed = mix(mix(config.seed, epoch), b);
            tch::manual_seed(seed as i64);
            let scale = state.scale / count;
            let mut backward = |part: Tensor| {
                let value = part.double_value(&[]);
                if !value.is_finite() {
                    return Err(Error::Other(format!(
                        "training step {} (epoch {}, batch {}): the loss is {value}; lower train.lr or check the data",
                        state.step + 1,
                        epoch + 1,
                        b + 1
                    )));
                }
                loss_sum += value;
                // Backward passes run outside autocast; the forward ops chose their types.
                tch::autocast(false, || (part.to_kind(Kind::Float) * scale).backward());
                Ok(())
            };
            if autocast {
                // libtorch keeps the autocast type per thread.
                super::autocast_type(config.precision == Precision::Bf16)?;
            }
            tch::autocast(autocast, || objective.loss(batch, seed, &mut backward))?;
        }

        let grad_norm = unscale_and_clip(&optimizer, state.scale, config.max_grad_norm);
        state.step += 1;
        let lr_factor = schedule.factor(state.step - 1);
        if grad_norm.is_finite() {
            optimizer.step(lr_factor)?;
            if fp16 {
                state.good_steps += 1;
                if state.good_steps % SCALE_GROWTH_INTERVAL == 0 {
                    state.scale *= 2.0;
                }
            }
        } else if fp16 {
            state.skipped_steps += 1;
            state.scale /= 2.0;
            state.good_steps = 0;
            tracing::warn!(
                step = state.step,
                scale = state.scale,
                "non-finite gradients: step skipped, loss scale halved"
            );
        } else {
            return Err(Error::Other(format!(
                "training step {}: the gradient norm is {grad_norm}; lower train.lr or set train.max_grad_norm",
                state.step
            )));
        }

        let loss = loss_sum / count;
        let epoch_f = state.step as f64 / steps_per_epoch as f64;
        progress.update(state.step, loss);
        if state.step % config.log_every == 0 || state.step == total {
            state.history.push(serde_json::json!({
                "kind": "train", "step": state.step, "epoch": round6(epoch_f), "loss": loss,
                "lr": config.lr * lr_factor, "grad_norm": grad_norm, "time": now(),
            }));
        }
        let end_of_epoch = state.step % steps_per_epoch == 0 || state.step == total;
        let due = config.eval_every.is_some_and(|e| state.step % e == 0);
        if (config.eval_each_epoch && end_of_epoch) || due {
            evaluate(config, vs, objective, work, &mut state, epoch_f)?;
        }
        if config.checkpoint_every > 0
            && state.step % config.checkpoint_every == 0
            && state.step < total
            && !state.stopped
        {
            work.save(vs, &optimizer, &state)?;
        }
        // SIGTERM (a pod preempted or drained): a checkpoint now, so the retry resumes here.
        if crate::runtime::stop_requested() && state.step < total && !state.stopped {
            work.save(vs, &optimizer, &state)?;
            progress.finish();
            return Err(Error::Interrupted(format!(
                "stopped by SIGTERM after training step {} of {total}: checkpoint written; a retry resumes from it",
                state.step
            )));
        }
    }
    progress.finish();

    if let (Some(_), Some(step)) = (&config.best, state.best_step) {
        work.load_best(vs)?;
        tracing::info!(step, "kept the best checkpoint");
    }
    let ran = state.step - start_step;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Fit {
        steps: state.step,
        total_steps: total,
        best: state.best_step.zip(state.best_value),
        resumed_from,
        stopped_early: state.stopped,
        skipped_steps: state.skipped_steps,
        steps_per_second: if seconds > 0.0 { ran as f64 / seconds } else { 0.0 },
        history: state.history,
    })
}

fn evaluate(
    config: &TrainConfig,
    vs: &nn::VarStore,
    objective: &dyn Objective,
    work: &WorkDir,
    state: &mut TrainState,
    epoch: f64,
) -> Result<()> {
    let metrics = tch::no_grad(|| objective.evaluate())?;
    tracing::info!(step = state.step, epoch = round6(epoch), metrics = %serde_json::to_string(&metrics)?, "evaluated");
    let mut record = serde_json::json!({"kind": "eval", "step": state.step, "epoch": round6(epoch)});
    for (k, v) in &metrics {
        record[k] = serde_json::json!(v);
    }
    record["time"] = serde_json::json!(now());
    state.history.push(record);
    let Some(best) = &config.best else { return Ok(()) };
    let value = *metrics.get(&best.metric).ok_or_else(|| {
        Error::config(format!(
            "train.best.metric `{}`: the evaluation reports {}",
            best.metric,
            metrics.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    // A NaN (or infinite) evaluation is never the best; it counts as one without improvement.
    let better = value.is_finite()
        && match (state.best_value, best.mode) {
            (None, _) => true,
            (Some(b), Mode::Min) => value < b,
            (Some(b), Mode::Max) => value > b,
        };
    if !value.is_finite() {
        tracing::warn!(step = state.step, metric = %best.metric, value, "the evaluation is not a number: not kept as the best");
    }
    if better {
        state.best_value = Some(value);
        state.best_step = Some(state.step);
        state.stale_evals = 0;
        work.save_best(vs)?;
    } else {
        state.stale_evals += 1;
        if best.patience.is_some_and(|p| state.stale_evals >= p) {
            tracing::info!(step = state.step, best_step = state.best_step, "no improvement: stopping early");
            state.stopped = true;
        }
    }
    Ok(())
}

/// Divides the gradients by the loss scale, clips their global norm and returns the norm
/// before clipping (not finite when a gradient is not).
fn unscale_and_clip(optimizer: &AdamW, scale: f64, max_norm: Option<f64>) -> f64 {
    let grads: Vec<Tensor> =
        optimizer.groups.iter().flat_map(|g| &g.params).map(|(_, p)| p.grad()).filter(Tensor::defined).collect();
    if grads.is_empty() {
        return 0.0;
    }
    tch::no_grad(|| {
        if scale != 1.0 {
            for g in &grads {
                let _ = g.shallow_clone().g_mul_scalar_(1.0 / scale);
            }
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        if let Some(max) = max_norm {
            let coef = max / (total + 1e-6);
            if coef < 1.0 && total.is_finite() {
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_scalar_(coef);
                }
            }
        }
        total
    })
}

/// The optimizer's groups: frozen parameters left out (and without gradients), then by
/// rule, each split into decayed and not decayed (biases, LayerNorm).
fn groups(vs: &nn::VarStore, config: &TrainConfig) -> Result<Vec<Group>> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut by_key: BTreeMap<(usize, bool), Group> = BTreeMap::new();
    let mut trained = 0;
    for (name, var) in variables {
        if config.freeze.iter().any(|p| name.starts_with(p.as_str())) {
            let _ = var.set_requires_grad(false);
            continue;
        }
        let rule = config.groups.iter().position(|r| name.starts_with(r.prefix.as_str()));
        let (label, lr, wd) = match rule {
            Some(i) => (config.groups[i].prefix.clone(), config.groups[i].lr, config.groups[i].weight_decay),
            None => ("default".to_string(), config.lr, config.weight_decay),
        };
        let exempt = no_decay(&name);
        let key = (rule.map_or(0, |i| i + 1), exempt);
        let group = by_key.entry(key).or_insert_with(|| Group {
            name: if exempt { format!("{label}/no_decay") } else { label },
            lr,
            weight_decay: if exempt { 0.0 } else { wd },
            params: Vec::new(),
        });
        group.params.push((name, var));
        trained += 1;
    }
    if trained == 0 {
        return Err(Error::config("train.freeze leaves no parameter to train"));
    }
    Ok(by_key.into_values().collect())
}

/// Writes `metrics.jsonl` and the TensorBoard event file of a run into the output.
pub async fn write_metrics(out: &mut Output, history: &[serde_json::Value]) -> Result<()> {
    let mut lines = Vec::new();
    let mut scalars = Vec::new();
    for record in history {
        serde_json::to_writer(&mut lines, record)?;
        lines.push(b'\n');
        let kind = record["kind"].as_str().unwrap_or("train");
        let step = record["step"].as_i64().unwrap_or(0);
        let wall_time = record["time"].as_f64().unwrap_or(0.0);
        if let Some(map) = record.as_object() {
            for (k, v) in map {
                if matches!(k.as_str(), "kind" | "step" | "time") {
                    continue;
                }
                if let Some(value) = v.as_f64() {
                    scalars.push(crate::eval::events::Scalar {
                        tag: format!("{kind}/{k}"),
                        step,
                        wall_time,
                        value: value as f32,
                    });
                }
            }
        }
    }
    out.put("metrics.jsonl", Bytes::from(lines)).await?;
    out.put(
        &format!("tensorboard/{}", crate::eval::events::EVENTS_FILE),
        Bytes::from(crate::eval::events::event_file(&scalars)),
    )
    .await?;
    Ok(())
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::train::{Best, GroupRule};
    use std::cell::Cell;

    /// y = w·x + b on fixed data; evaluation reports a scripted metric sequence when given.
    struct Toy {
        w: Tensor,
        b: Tensor,
        x: Tensor,
        y: Tensor,
        script: Vec<f64>,
        evals: Cell<usize>,
        /// The weights at each evaluation.
        seen: std::cell::RefCell<Vec<Vec<f64>>>,
        /// Fail (as a killed run would stop) at this call of `loss`.
        fail_at: Option<usize>,
        calls: Cell<usize>,
        /// How many parts `loss` hands its batch's loss in.
        parts: usize,
    }

    impl Toy {
        fn new(vs: &nn::VarStore, script: Vec<f64>) -> Toy {
            let lin = vs.root() / "lin";
            let w = lin.var("weight", &[3], nn::Init::Const(0.5));
            let b = lin.var("bias", &[1], nn::Init::Const(0.0));
            let x = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([8, 3]) / 10.0;
            let y = x.matmul(&Tensor::from_slice(&[1.0f32, -2.0, 3.0])) + 0.5;
            Toy {
                w,
                b,
                x,
                y,
                script,
                evals: Cell::new(0),
                seen: Default::default(),
                fail_at: None,
                calls: Cell::new(0),
                parts: 1,
            }
        }
    }

    impl Toy {
        fn weights(&self) -> Vec<f64> {
            let mut w = Vec::<f64>::try_from(&self.w.to_kind(Kind::Double)).unwrap();
            w.push(self.b.double_value(&[0]));
            w
        }
    }

    impl Objective for Toy {
        fn sampler(&self) -> Box<dyn Sampler + '_> {
            Box::new(crate::train::Shuffle(8))
        }
        fn loss(&self, batch: &[usize], _seed: u64, backward: &mut dyn FnMut(Tensor) -> Result<()>) -> Result<()> {
            self.calls.set(self.calls.get() + 1);
            if self.fail_at == Some(self.calls.get()) {
                return Err(Error::Other("stopped".into()));
            }
            // The mean squared error, as sums over consecutive slices of the batch.
            for part in batch.chunks(batch.len().div_ceil(self.parts)) {
                let idx = Tensor::from_slice(&part.iter().map(|&i| i as i64).collect::<Vec<_>>());
                let pred = self.x.index_select(0, &idx).matmul(&self.w) + &self.b;
                backward((pred - self.y.index_select(0, &idx)).square().sum(Kind::Float) / batch.len() as f64)?;
            }
            Ok(())
        }
        fn evaluate(&self) -> Result<Metrics> {
            let i = self.evals.get();
            self.evals.set(i + 1);
            self.seen.borrow_mut().push(self.weights());
            let value = self.script.get(i).copied().unwrap_or(0.0);
            Ok(Metrics::from([("score".to_string(), value)]))
        }
    }

    fn config() -> TrainConfig {
        let raw = crate::config::RawConfig::empty("test")
            .with_defaults(
                "{epochs: 3, batch_size: 4, grad_accum: 1, lr: 0.05, weight_decay: 0.01, warmup_steps: 0, \
                 eval_each_epoch: true, checkpoint_every: 0, log_every: 1, precision: fp32, device: cpu, seed: 7}",
            )
            .unwrap();
        let config: TrainConfig = raw.resolve().unwrap();
        config.validate().unwrap();
        config
    }

    fn train(config: &TrainConfig, script: Vec<f64>, out: &str) -> (Fit, Vec<f64>) {
        let (fit, w, _) = train_seen(config, script, out);
        (fit, w)
    }

    fn train_seen(config: &TrainConfig, script: Vec<f64>, out: &str) -> (Fit, Vec<f64>, Vec<Vec<f64>>) {
        train_in_parts(config, script, out, 1)
    }

    fn train_in_parts(
        config: &TrainConfig,
        script: Vec<f64>,
        out: &str,
        parts: usize,
    ) -> (Fit, Vec<f64>, Vec<Vec<f64>>) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let toy = Toy { parts, ..Toy::new(&vs, script) };
        let work = WorkDir::new(Store::create(out).unwrap(), "fp", rt.handle().clone()).unwrap();
        let fit = fit(config, &vs, &toy, &work).unwrap();
        let weights = toy.weights();
        (fit, weights, toy.seen.take())
    }

    #[test]
    fn accumulating_two_half_batches_equals_one_batch() {
        let whole = config();
        let mut halves = config();
        halves.batch_size = 2;
        halves.grad_accum = 2;
        let (a, wa) = train(&whole, vec![], "memory://trainer/accum-a");
        let (b, wb) = train(&halves, vec![], "memory://trainer/accum-b");
        assert_eq!((a.steps, b.steps), (6, 6));
        for (x, y) in wa.iter().zip(&wb) {
            assert!((x - y).abs() < 1e-6, "{wa:?} vs {wb:?}");
        }
        let losses: Vec<f64> =
            a.history.iter().filter(|r| r["kind"] == "train").map(|r| r["loss"].as_f64().unwrap()).collect();
        assert!(losses.last() < losses.first(), "the loss goes down: {losses:?}");
    }

    #[test]
    fn a_loss_handed_in_parts_trains_as_its_sum() {
        // Each part's backward pass runs before the next part is computed (finetune: one part
        // per task); the gradients add up, so the run is the one-part run's.
        let (a, wa, _) = train_in_parts(&config(), vec![], "memory://trainer/parts-1", 1);
        let (b, wb, _) = train_in_parts(&config(), vec![], "memory://trainer/parts-2", 2);
        assert_eq!((a.steps, b.steps), (6, 6));
        for (x, y) in wa.iter().zip(&wb) {
            assert!((x - y).abs() < 1e-6, "{wa:?} vs {wb:?}");
        }
        let loss = |f: &Fit| -> Vec<f64> {
            f.history.iter().filter(|r| r["kind"] == "train").map(|r| r["loss"].as_f64().unwrap()).collect()
        };
        for (x, y) in loss(&a).iter().zip(&loss(&b)) {
            assert!((x - y).abs() < 1e-6, "{:?} vs {:?}", loss(&a), loss(&b));
        }
        assert!(wa != Toy::new(&nn::VarStore::new(Device::Cpu), vec![]).weights(), "the weights moved");
    }

    #[test]
    fn frozen_parameters_stay_and_groups_follow_rules() {
        let mut c = config();
        c.freeze = vec!["lin.bias".into()];
        let (_, w) = train(&c, vec![], "memory://trainer/freeze");
        assert_eq!(w[3], 0.0, "the frozen bias did not move");
        assert_ne!(w[0], 0.5);

        let vs = nn::VarStore::new(Device::Cpu);
        let _toy = Toy::new(&vs, vec![]);
        let mut c = config();
        c.groups = vec![GroupRule { prefix: "lin.".into(), lr: 1e-3, weight_decay: 0.5 }];
        let groups = groups(&vs, &c).unwrap();
        let summary: Vec<(String, f64, f64)> = groups.iter().map(|g| (g.name.clone(), g.lr, g.weight_decay)).collect();
        assert_eq!(summary, [("lin.".to_string(), 1e-3, 0.5), ("lin./no_decay".to_string(), 1e-3, 0.0)]);
        c.freeze = vec!["lin".into()];
        assert!(groups_err(&vs, &c).contains("no parameter to train"));
    }

    fn groups_err(vs: &nn::VarStore, c: &TrainConfig) -> String {
        groups(vs, c).unwrap_err().to_string()
    }

    #[test]
    fn keeps_the_best_evaluation_and_stops_early() {
        let mut c = config();
        c.epochs = 10;
        c.best = Some(Best { metric: "score".into(), mode: Mode::Max, patience: Some(2) });
        let (fit, w, seen) = train_seen(&c, vec![0.1, 0.9, 0.5, 0.4, 0.95], "memory://trainer/best");
        assert!(fit.stopped_early);
        assert_eq!(fit.best, Some((4, 0.9)), "the second evaluation, after epoch 2 (2 steps each)");
        assert_eq!(fit.steps, 8, "two evaluations without improvement after the best");
        // The output holds the weights of the best evaluation, not the last.
        assert_eq!(seen.len(), 4);
        assert_eq!(w, seen[1]);
        assert_ne!(w, seen[3]);
        // A metric the evaluation does not report is a config error.
        c.best = Some(Best { metric: "f1".into(), mode: Mode::Max, patience: None });
        let rt = tokio::runtime::Runtime::new().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let toy = Toy::new(&vs, vec![]);
        let work =
            WorkDir::new(Store::create("memory://trainer/best-bad").unwrap(), "fp", rt.handle().clone()).unwrap();
        let err = super::fit(&c, &vs, &toy, &work).unwrap_err().to_string();
        assert!(err.contains("train.best.metric `f1`") && err.contains("score"), "{err}");
    }

    #[test]
    fn nan_evaluations_are_never_the_best_and_a_resumed_run_ends_the_same() {
        let mut c = config();
        c.epochs = 6;
        c.checkpoint_every = 1;
        c.best = Some(Best { metric: "score".into(), mode: Mode::Max, patience: None });
        let script = vec![f64::NAN, 0.5, f64::NAN, 0.7, f64::INFINITY, 0.6];
        let (whole, w, seen) = train_seen(&c, script.clone(), "memory://trainer/nan-whole");
        assert_eq!(whole.best, Some((8, 0.7)), "the fourth evaluation (2 steps an epoch); NaN and inf never win");
        assert_eq!(w, seen[3]);

        // The same run stopped at its 7th batch (after the third evaluation), then resumed.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = Store::create("memory://trainer/nan-resumed").unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let mut toy = Toy::new(&vs, script.clone());
        toy.fail_at = Some(7);
        let work = WorkDir::new(store.clone(), "fp", rt.handle().clone()).unwrap();
        assert!(super::fit(&c, &vs, &toy, &work).is_err());
        let done = toy.evals.get();
        assert_eq!(done, 3);
        let vs = nn::VarStore::new(Device::Cpu);
        let toy = Toy::new(&vs, script[done..].to_vec());
        let work = WorkDir::new(store, "fp", rt.handle().clone()).unwrap();
        let resumed = super::fit(&c, &vs, &toy, &work).unwrap();
        assert_eq!(resumed.resumed_from, Some(6));
        let strip = |h: &[serde_json::Value]| -> Vec<serde_json::Value> {
            h.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.as_object_mut().unwrap().remove("time");
                    r
                })
                .collect()
        };
        assert_eq!(strip(&resumed.history), strip(&whole.history));
        assert_eq!(resumed.best, whole.best);
        assert_eq!(toy.weights(), w);
    }

    #[test]
    fn clipping_scales_the_global_norm() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let opt = AdamW::new(
            vec![Group { name: "g".into(), lr: 0.1, weight_decay: 0.0, params: vec![("p".into(), p.shallow_clone())] }],
            (0.9, 0.999),
            1e-8,
        );
        (&p * &p).sum(Kind::Float).backward(); // grad = 2p = [6, 8], norm 10
        let norm = unscale_and_clip(&opt, 2.0, Some(1.0)); // unscaled: [3, 4], norm 5
        assert!((norm - 5.0).abs() < 1e-6);
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn bad_train_configs_name_the_key() {
        let mut c = config();
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("train.epochs, batch_size"));
        let mut c = config();
        c.eval_each_epoch = false;
        c.best = Some(Best { metric: "loss".into(), mode: Mode::Min, patience: None });
        assert!(c.validate().unwrap_err().to_string().contains("best needs evaluations"));
        let mut c = config();
        for (precision, name) in [(Precision::Fp16, "fp16"), (Precision::Bf16, "bf16")] {
            c.precision = precision;
            assert!(c.device().unwrap_err().to_string().contains(&format!("{name} needs a CUDA device")));
        }
        let mut c = config();
        c.lr = f64::NAN;
        assert!(c.validate().is_err());
    }
}
