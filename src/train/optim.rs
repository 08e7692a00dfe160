//! AdamW (decoupled weight decay, PyTorch's `torch.optim.AdamW` update) with parameter
//! groups. The moments are plain tensors this struct owns, so they go into checkpoints and
//! a resumed run continues exactly (tch's own optimizers cannot save their state).

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Parameters that share a learning rate and weight decay.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub lr: f64,
    pub weight_decay: f64,
    pub params: Vec<(String, Tensor)>,
}

/// AdamW over groups of parameters.
#[derive(Debug)]
pub struct AdamW {
    pub groups: Vec<Group>,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Optimizer steps taken.
    pub step: u64,
    /// First and second moments by parameter name.
    moments: BTreeMap<String, (Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(groups: Vec<Group>, betas: (f64, f64), eps: f64) -> Self {
        let moments = groups
            .iter()
            .flat_map(|g| &g.params)
            .map(|(name, p)| (name.clone(), (p.zeros_like(), p.zeros_like())))
            .collect();
        AdamW { groups, betas, eps, step: 0, moments }
    }

    /// One update with each group's learning rate scaled by `lr_factor` (the schedule).
    /// Parameters without a gradient are left alone.
    pub fn step(&mut self, lr_factor: f64) {
        self.step += 1;
        let (b1, b2) = self.betas;
        let t = self.step as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        tch::no_grad(|| {
            for group in &self.groups {
                let lr = group.lr * lr_factor;
                for (name, p) in &group.params {
                    let g = p.grad();
                    if !g.defined() {
                        continue;
                    }
                    let (m, v) = self.moments.get_mut(name).expect("a moment per parameter");
                    let mut p = p.shallow_clone();
                    if group.weight_decay != 0.0 {
                        let _ = p.g_mul_scalar_(1.0 - lr * group.weight_decay);
                    }
                    let _ = m.g_mul_scalar_(b1);
                    let _ = m.g_add_(&(&g * (1.0 - b1)));
                    let _ = v.g_mul_scalar_(b2);
                    let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
                    let denom = v.sqrt() / bc2.sqrt() + self.eps;
                    let _ = p.g_sub_(&(&*m / denom * (lr / bc1)));
                }
            }
        });
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&self) {
        for (_, p) in self.groups.iter().flat_map(|g| &g.params) {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`) on the CPU, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.moments
            .iter()
            .flat_map(|(name, (m, v))| {
                [(format!("m.{name}"), m.to_device(Device::Cpu)), (format!("v.{name}"), v.to_device(Device::Cpu))]
            })
            .collect()
    }

    /// Restores moments saved by [`AdamW::state`] and the step count.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, step: u64) -> Result<()> {
        let mut by_name: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        tch::no_grad(|| -> Result<()> {
            for (name, (m, v)) in self.moments.iter_mut() {
                for (prefix, target) in [("m", m), ("v", v)] {
                    let key = format!("{prefix}.{name}");
                    let saved =
                        by_name.remove(&key).ok_or_else(|| Error::input(format!("optimizer state lacks {key}")))?;
                    if saved.size() != target.size() {
                        return Err(Error::input(format!(
                            "optimizer state {key}: shape {:?}, expected {:?}",
                            saved.size(),
                            target.size()
                        )));
                    }
                    target.copy_(&saved.to_kind(Kind::Float));
                }
            }
            Ok(())
        })?;
        if let Some(extra) = by_name.keys().next() {
            return Err(Error::input(format!("optimizer state has an unknown tensor {extra}")));
        }
        self.step = step;
        Ok(())
    }
}

/// Whether a parameter is exempt from weight decay by default: biases and LayerNorm.
pub fn no_decay(name: &str) -> bool {
    name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm") || name.contains(".norm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_exemptions() {
        assert!(no_decay("encoder.layer.0.output.LayerNorm.weight"));
        assert!(no_decay("adaptive.norm1.weight"));
        assert!(no_decay("pooler.dense.bias"));
        assert!(!no_decay("encoder.layer.0.output.dense.weight"));
    }

    #[test]
    fn state_round_trips() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![Group {
                name: "all".into(),
                lr: 0.1,
                weight_decay: 0.0,
                params: vec![("p".into(), p.shallow_clone())],
            }],
            (0.9, 0.999),
            1e-8,
        );
        (&p * &p).sum(Kind::Float).backward();
        opt.step(1.0);
        let saved = opt.state();
        let q = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut other = AdamW::new(
            vec![Group { name: "all".into(), lr: 0.1, weight_decay: 0.0, params: vec![("p".into(), q)] }],
            (0.9, 0.999),
            1e-8,
        );
        other.load_state(saved, opt.step).unwrap();
        assert_eq!(other.step, 1);
        assert!(other.state()[0].1.equal(&opt.state()[0].1));
        assert!(other.load_state(vec![], 1).unwrap_err().to_string().contains("lacks m.p"));
    }
}
