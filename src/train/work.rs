//! Checkpoints of a running step under `<out>/_work/`: the variables, the optimizer's
//! moments, and `state.json` (step, loss scale, best metric, metric history), written last
//! so that a checkpoint is used only once complete. A restart with the same fingerprint
//! resumes from it; the commit of the output removes `_work/`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};
use tokio::runtime::Handle;

use super::optim::AdamW;
use crate::error::{Error, Result};
use crate::model::checkpoint;
use crate::store::Store;

const STATE: &str = "_work/state.json";
const BEST: &str = "_work/best.safetensors";
const STEP_PREFIX: &str = "_work/step-";
/// Records of finished parts of a step (folds), checked against the step's fingerprint.
const PARTS: &str = "_work/parts/";

/// Where a training run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub fingerprint: String,
    /// Optimizer steps done (skipped fp16 steps included).
    pub step: u64,
    /// Updates the optimizer applied.
    #[serde(default)]
    pub optimizer_steps: u64,
    pub scale: f64,
    pub good_steps: u64,
    pub skipped_steps: u64,
    pub best_value: Option<f64>,
    pub best_step: Option<u64>,
    pub stale_evals: u64,
    pub stopped: bool,
    pub history: Vec<serde_json::Value>,
    /// The folder of the latest complete checkpoint.
    #[serde(default)]
    pub checkpoint: String,
}

impl TrainState {
    pub fn new(fingerprint: &str, scale: f64) -> Self {
        TrainState {
            fingerprint: fingerprint.to_string(),
            step: 0,
            optimizer_steps: 0,
            scale,
            good_steps: 0,
            skipped_steps: 0,
            best_value: None,
            best_step: None,
            stale_evals: 0,
            stopped: false,
            history: Vec::new(),
            checkpoint: String::new(),
        }
    }
}

/// The `_work/` folder of an output.
pub struct WorkDir {
    store: Store,
    fingerprint: String,
    handle: Handle,
    tmp: tempfile::TempDir,
    /// Start over: ignore (and clear) any checkpoint (`--force`).
    fresh: bool,
}

impl WorkDir {
    /// `handle` runs the store calls; the trainer itself runs on a blocking thread.
    pub fn new(store: Store, fingerprint: &str, handle: Handle) -> Result<Self> {
        Ok(WorkDir { store, fingerprint: fingerprint.to_string(), handle, tmp: tempfile::tempdir()?, fresh: false })
    }

    /// Never resume: the first [`WorkDir::load`] clears `_work/` (what `--force` asks).
    pub fn start_over(mut self, fresh: bool) -> Self {
        self.fresh = fresh;
        self
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The work folder of one run among several of a step (a fold): checkpoints of its own
    /// fingerprint, so that a resumed step resumes the run it was killed in.
    pub fn part(&self, name: &str) -> Result<WorkDir> {
        let fingerprint = format!("{}#{name}", self.fingerprint);
        Ok(WorkDir::new(self.store.clone(), &fingerprint, self.handle.clone())?.start_over(self.fresh))
    }

    /// A finished part's record (`_work/parts/NAME.json`), when it was written by this step's
    /// config (and the step does not start over).
    pub fn finished(&self, name: &str) -> Result<Option<serde_json::Value>> {
        if self.fresh {
            return Ok(None);
        }
        let Some(bytes) = self.handle.block_on(self.store.get(&format!("{PARTS}{name}.json")))? else {
            return Ok(None);
        };
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((record["fingerprint"] == self.fingerprint.as_str()).then(|| record["value"].clone()))
    }

    /// Records a finished part, kept across the parts' own checkpoints until the commit.
    pub fn finish(&self, name: &str, value: &serde_json::Value) -> Result<()> {
        let record = serde_json::json!({"fingerprint": self.fingerprint, "value": value});
        let bytes = Bytes::from(serde_json::to_vec(&record)?);
        self.handle.block_on(self.store.put(&format!("{PARTS}{name}.json"), bytes))
    }

    /// Restores the latest checkpoint of a run with this fingerprint into `vs` and
    /// `optimizer`; `None` (and `_work/` cleared) when there is none or it is another run's.
    pub fn load(&self, vs: &nn::VarStore, optimizer: &mut AdamW) -> Result<Option<TrainState>> {
        if self.fresh {
            self.clear(None)?;
            return Ok(None);
        }
        let Some(bytes) = self.handle.block_on(self.store.get(STATE))? else {
            self.clear(None)?;
            return Ok(None);
        };
        let state: TrainState = match serde_json::from_slice(&bytes) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable _work/state.json: starting over");
                self.clear(None)?;
                return Ok(None);
            }
        };
        if state.fingerprint != self.fingerprint {
            tracing::info!("the checkpoint under _work/ belongs to another config: starting over");
            self.clear(None)?;
            return Ok(None);
        }
        let restored = (|| {
            let model = self.read_tensors(&format!("{}/model.safetensors", state.checkpoint))?;
            checkpoint::load_tensors(vs, model, &[], &self.store.url_of(&state.checkpoint))?;
            let moments = self.read_tensors(&format!("{}/optimizer.safetensors", state.checkpoint))?;
            optimizer.load_state(moments, state.optimizer_steps)
        })();
        if let Err(e) = restored {
            return Err(Error::input(format!(
                "the checkpoint under {} cannot be resumed: {e}; rerun with --force to start over",
                self.store.url_of("_work")
            )));
        }
        self.clear(Some(&state.checkpoint))?;
        Ok(Some(state))
    }

    /// Writes a checkpoint: tensors first, `state.json` last, then drops older ones.
    pub fn save(&self, vs: &nn::VarStore, optimizer: &AdamW, state: &TrainState) -> Result<()> {
        let dir = format!("{STEP_PREFIX}{:08}", state.step);
        self.write_tensors(&format!("{dir}/model.safetensors"), &variables(vs))?;
        self.write_tensors(&format!("{dir}/optimizer.safetensors"), &optimizer.state())?;
        let mut state = state.clone();
        state.checkpoint = dir.clone();
        state.optimizer_steps = optimizer.step;
        self.handle.block_on(self.store.put(STATE, Bytes::from(serde_json::to_vec(&state)?)))?;
        self.clear(Some(&dir))?;
        tracing::debug!(step = state.step, "checkpoint written");
        Ok(())
    }

    /// Keeps the current variables as the best so far.
    pub fn save_best(&self, vs: &nn::VarStore) -> Result<()> {
        self.write_tensors(BEST, &variables(vs))
    }

    /// Loads the variables kept by [`WorkDir::save_best`].
    pub fn load_best(&self, vs: &nn::VarStore) -> Result<()> {
        let tensors = self.read_tensors(BEST)?;
        checkpoint::load_tensors(vs, tensors, &[], &self.store.url_of(BEST))
    }

    /// Removes checkpoint folders other than `keep` (with no `keep`: all of `_work/`).
    fn clear(&self, keep: Option<&str>) -> Result<()> {
        self.handle.block_on(async {
            for (name, _) in self.store.list().await? {
                let stale = match keep {
                    Some(keep) => name.starts_with(STEP_PREFIX) && !name.starts_with(&format!("{keep}/")),
                    None => name.starts_with("_work/") && !name.starts_with(PARTS),
                };
                if stale {
                    self.store.delete(&name).await?;
                }
            }
            Ok(())
        })
    }

    fn write_tensors(&self, name: &str, tensors: &[(String, Tensor)]) -> Result<()> {
        let path = self.tmp.path().join("write.safetensors");
        Tensor::write_safetensors(tensors, &path).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
        let bytes = std::fs::read(&path)?;
        self.handle.block_on(self.store.put(name, Bytes::from(bytes)))
    }

    fn read_tensors(&self, name: &str) -> Result<Vec<(String, Tensor)>> {
        let bytes = self
            .handle
            .block_on(self.store.get(name))?
            .ok_or_else(|| Error::input(format!("{}: checkpoint file missing", self.store.url_of(name))))?;
        let path = self.tmp.path().join("read.safetensors");
        std::fs::write(&path, &bytes)?;
        Tensor::read_safetensors(&path).map_err(|e| Error::input(format!("{}: {e}", self.store.url_of(name))))
    }
}

fn variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut list: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(name, t)| (name, t.to_device(tch::Device::Cpu).contiguous())).collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
}
