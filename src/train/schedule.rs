//! The learning-rate schedule: linear warm-up, then linear decay to 0 over all steps
//! (transformers' `get_linear_schedule_with_warmup`; SPEC §5 uses no warm-up).

/// The factor applied to each group's base learning rate at a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    pub total_steps: u64,
    pub warmup_steps: u64,
}

impl LinearSchedule {
    /// The factor for optimizer step `step` (0 for the first step).
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let left = self.total_steps.saturating_sub(step) as f64;
        (left / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = LinearSchedule { total_steps: 10, warmup_steps: 2 };
        let f: Vec<f64> = (0..=10).map(|i| s.factor(i)).collect();
        assert_eq!(f[0], 0.0);
        assert_eq!(f[1], 0.5);
        assert_eq!(f[2], 1.0);
        assert_eq!(f[6], 0.5);
        assert_eq!(f[10], 0.0);
        let plain = LinearSchedule { total_steps: 4, warmup_steps: 0 };
        assert_eq!((0..4).map(|i| plain.factor(i)).collect::<Vec<_>>(), [1.0, 0.75, 0.5, 0.25]);
    }
}
