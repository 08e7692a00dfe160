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
    /// Update through libtorch's fused kernel rather than element-wise tensor operations:
    /// the same update to rounding, faster (on by default; off after the kernel refuses).
    pub fused: bool,
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
        AdamW { groups, betas, eps, step: 0, fused: true, moments }
    }

    /// One update with each group's learning rate scaled by `lr_factor` (the schedule).
    /// Parameters without a gradient are left alone.
    pub fn step(&mut self, lr_factor: f64) -> Result<()> {
        self.step += 1;
        tch::no_grad(|| {
            for group in &self.groups {
                if self.fused {
                    match self.fused_update(group, lr_factor) {
                        Ok(()) => continue,
                        // The kernel checks its inputs before it changes anything.
                        Err(e) => {
                            tracing::warn!(error = %e, "the fused AdamW kernel refused: updating element-wise from now on");
                            self.fused = false;
                        }
                    }
                }
                self.elementwise_update(group, lr_factor);
            }
        });
        Ok(())
    }

    /// A group's update in element-wise tensor operations.
    fn elementwise_update(&self, group: &Group, lr_factor: f64) {
        let (b1, b2) = self.betas;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let lr = group.lr * lr_factor;
        for (name, p) in &group.params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let (m, v) = self.moments.get(name).expect("a moment per parameter");
            let (mut p, mut m, mut v) = (p.shallow_clone(), m.shallow_clone(), v.shallow_clone());
            if group.weight_decay != 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * group.weight_decay);
            }
            let _ = m.g_mul_scalar_(b1);
            let _ = m.g_add_(&(&g * (1.0 - b1)));
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
            let denom = v.sqrt() / bc2.sqrt() + self.eps;
            let _ = p.g_sub_(&(&m / denom * (lr / bc1)));
        }
    }

    /// A group's update by libtorch's fused AdamW kernel (`torch.optim.AdamW(fused=True)`):
    /// one pass over each tensor on the CPU, a few launches for the group on CUDA.
    fn fused_update(&self, group: &Group, lr_factor: f64) -> Result<()> {
        let (b1, b2) = self.betas;
        // The group's tensors, kept alive while libtorch reads them through pointers.
        let mut grads = Vec::with_capacity(group.params.len());
        let mut device = None;
        let mut pointers: [Vec<*const torch_sys::C_tensor>; 3] = Default::default();
        for (name, p) in &group.params {
            let g = p.grad();
            if g.defined() {
                let (m, v) = self.moments.get(name).expect("a moment per parameter");
                for (list, t) in pointers.iter_mut().zip([p, m, v]) {
                    list.push(t.as_ptr());
                }
                grads.push(g.contiguous());
                device = Some(p.device());
            }
        }
        let Some(device) = device else { return Ok(()) };
        let step = Tensor::from(self.step as f32).to_device(device);
        let grad_pointers: Vec<_> = grads.iter().map(|g| g.as_ptr()).collect();
        let [params, exp_avgs, exp_avg_sqs] = &pointers;
        let mut err = [0 as std::ffi::c_char; 512];
        // SAFETY: every pointer is a live tensor (the group's, `grads`, `step`) for the call's
        // duration; the lists have `grads.len()` entries; `err` has `err.len()` bytes.
        let failed = unsafe {
            super::taft_fused_adamw(
                params.as_ptr(),
                grad_pointers.as_ptr(),
                exp_avgs.as_ptr(),
                exp_avg_sqs.as_ptr(),
                step.as_ptr(),
                grads.len(),
                group.lr * lr_factor,
                b1,
                b2,
                group.weight_decay,
                self.eps,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if failed != 0 {
            // SAFETY: the C++ side wrote a NUL-terminated message into `err`.
            let why = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            return Err(Error::Other(format!("AdamW update of parameter group {}: {why}", group.name)));
        }
        Ok(())
    }

    /// Drops every parameter's gradient (`zero_grad(set_to_none=True)`, PyTorch's default):
    /// the next backward writes the gradients rather than adding them to zeros, and a
    /// parameter that gets none is left alone by the next step.
    pub fn zero_grad(&self) {
        let params: Vec<_> = self.groups.iter().flat_map(|g| &g.params).map(|(_, p)| p.as_ptr()).collect();
        // SAFETY: the pointers are the groups' live tensors, `params.len()` of them.
        let failed = unsafe { super::taft_clear_grads(params.as_ptr(), params.len()) };
        if failed != 0 {
            // Releasing a reference does not fail; were it to, zeros do the same work slower.
            for (_, p) in self.groups.iter().flat_map(|g| &g.params) {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
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

    /// The fused kernel and the element-wise form make the same updates (weight decay, the
    /// schedule, a parameter without a gradient left alone).
    #[test]
    fn the_fused_update_is_the_element_wise_one() {
        let run = |fused: bool| {
            let a = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0]).set_requires_grad(true);
            let b = Tensor::from_slice(&[0.25f32, -0.75]).set_requires_grad(true);
            let idle = Tensor::from_slice(&[7.0f32]).set_requires_grad(true);
            let group = |name: &str, weight_decay, params: Vec<(&str, &Tensor)>| Group {
                name: name.into(),
                lr: 0.05,
                weight_decay,
                params: params.into_iter().map(|(n, t)| (n.to_string(), t.shallow_clone())).collect(),
            };
            let mut opt = AdamW::new(
                vec![group("decay", 0.1, vec![("a", &a), ("idle", &idle)]), group("none", 0.0, vec![("b", &b)])],
                (0.9, 0.999),
                1e-8,
            );
            opt.fused = fused;
            for k in 0..4 {
                opt.zero_grad();
                ((&a * &a).sum(Kind::Float) * (k + 1) as f64 + (&b * &a.narrow(0, 0, 2)).sum(Kind::Float)).backward();
                opt.step(1.0 - 0.2 * k as f64).unwrap();
            }
            assert!(opt.fused == fused, "the kernel refused");
            assert!(!idle.grad().defined());
            (a.detach(), b.detach(), idle.detach())
        };
        let (fused, plain) = (run(true), run(false));
        for (x, y) in [(&fused.0, &plain.0), (&fused.1, &plain.1), (&fused.2, &plain.2)] {
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(diff <= 1e-6, "max abs diff {diff}");
        }
        assert!((&fused.0 - Tensor::from_slice(&[1.0f32, -2.0, 0.5, 3.0])).abs().min().double_value(&[]) > 1e-3);
        assert_eq!(fused.2.double_value(&[0]), 7.0, "a parameter without a gradient is left alone");
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
        opt.step(1.0).unwrap();
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
