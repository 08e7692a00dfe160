//! The classification losses of SPEC §4: per-batch class weights, weighted cross-entropy
//! for more than two classes, weighted binary cross-entropy on one-hot targets for two,
//! the multi-task combination, and the unweighted validation loss.

use tch::{Kind, Reduction, Tensor};

/// Per-batch class weights: `1 − count_c / n` for the classes present in `labels`, 0 for
/// the absent ones.
pub fn batch_class_weights(labels: &[i64], classes: i64) -> Vec<f64> {
    let mut counts = vec![0usize; classes as usize];
    for &y in labels {
        counts[y as usize] += 1;
    }
    let n = labels.len().max(1) as f64;
    counts.iter().map(|&c| if c == 0 { 0.0 } else { 1.0 - c as f64 / n }).collect()
}

/// The loss of one task on a batch.
#[derive(Debug)]
pub struct TaskLoss {
    pub loss: Tensor,
    /// The batch held a single class: every weight is 0 and the loss is a zero that
    /// updates nothing (PyTorch would give 0/0 = NaN for more than two classes).
    pub single_class: bool,
}

/// SPEC §4 training loss of `logits` [batch, classes] against `labels` [batch] (int64):
/// weighted cross-entropy (PyTorch's weighted mean) for more than two classes; for two,
/// binary cross-entropy with logits on one-hot targets, each column weighted by its class
/// weight, averaged over all elements.
pub fn weighted_loss(logits: &Tensor, labels: &Tensor) -> TaskLoss {
    let classes = logits.size()[1];
    let ys = Vec::<i64>::try_from(&labels.to_device(tch::Device::Cpu)).expect("int64 labels");
    let weights = batch_class_weights(&ys, classes);
    let single_class = weights.iter().all(|&w| w == 0.0);
    if single_class {
        return TaskLoss { loss: logits.sum(Kind::Float) * 0.0, single_class };
    }
    let w = Tensor::from_slice(&weights).to_kind(Kind::Float).to_device(logits.device());
    let logits = logits.to_kind(Kind::Float);
    let loss = if classes == 2 {
        let onehot = labels.one_hot(2).to_kind(Kind::Float);
        logits.binary_cross_entropy_with_logits::<Tensor>(&onehot, Some(w), None, Reduction::Mean)
    } else {
        logits.cross_entropy_loss(labels, Some(w), Reduction::Mean, -100, 0.0)
    };
    TaskLoss { loss, single_class }
}

/// The share of a batch's [`weighted_loss`] that the rows `labels` of it (with `logits`)
/// make, where `batch` are the whole batch's labels: the batch's class weights and its
/// mean's denominator, so that the parts' losses, and their gradients, add up to the
/// batch's. A batch of one class gives a zero that updates nothing, as [`weighted_loss`].
pub fn weighted_loss_part(logits: &Tensor, labels: &Tensor, batch: &[i64]) -> TaskLoss {
    let classes = logits.size()[1];
    let weights = batch_class_weights(batch, classes);
    let single_class = weights.iter().all(|&w| w == 0.0);
    if single_class {
        return TaskLoss { loss: logits.sum(Kind::Float) * 0.0, single_class };
    }
    let ys = Vec::<i64>::try_from(&labels.to_device(tch::Device::Cpu)).expect("int64 labels");
    let w = Tensor::from_slice(&weights).to_kind(Kind::Float).to_device(logits.device());
    let logits = logits.to_kind(Kind::Float);
    let loss = if classes == 2 {
        // The mean over the part's elements, as a share of the batch's.
        let onehot = labels.one_hot(2).to_kind(Kind::Float);
        let part = logits.binary_cross_entropy_with_logits::<Tensor>(&onehot, Some(w), None, Reduction::Mean);
        part * (ys.len() as f64 / batch.len().max(1) as f64)
    } else {
        // PyTorch's weighted mean divides by the weights of the rows' classes.
        let of = |ys: &[i64]| ys.iter().map(|&y| weights[y as usize]).sum::<f64>();
        let part = logits.cross_entropy_loss(labels, Some(w), Reduction::Mean, -100, 0.0);
        part * (of(&ys) / of(batch))
    };
    TaskLoss { loss, single_class }
}

/// The unweighted cross-entropy used for model selection.
pub fn validation_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

/// Each task's share of the multi-task loss `Σ w_t · L_t / Σ w_t` (SPEC §4: 0.8 status, 0.2
/// satisfaction): `w_t / Σ w_t` over the tasks a batch holds.
pub fn task_shares(weights: &[f64]) -> Vec<f64> {
    let total = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    weights.iter().map(|w| w / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_a_batch_add_up_to_its_loss_and_gradient() {
        for (labels, classes) in [(vec![0i64, 1, 1, 0, 1, 1, 1], 2), (vec![2i64, 0, 1, 2, 2, 0, 1, 2], 3)] {
            let n = labels.len() as i64;
            let values: Vec<f32> = (0..n * classes).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
            let leaf = || Tensor::from_slice(&values).view([n, classes]).set_requires_grad(true);
            let ys = Tensor::from_slice(&labels);
            let whole = leaf();
            let loss = weighted_loss(&whole, &ys).loss;
            loss.backward();
            let parted = leaf();
            let mut total = 0.0;
            for (start, len) in [(0, 3), (3, 1), (4, n - 4)] {
                let part = weighted_loss_part(&parted.narrow(0, start, len), &ys.narrow(0, start, len), &labels);
                total += part.loss.double_value(&[]);
                part.loss.backward();
            }
            assert!((total - loss.double_value(&[])).abs() < 1e-6, "{classes} classes: {total} vs {loss}");
            let diff = (whole.grad() - parted.grad()).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{classes} classes: gradients differ by {diff}");
        }
        // One class in the whole batch: nothing to learn from any part.
        let part = weighted_loss_part(
            &Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)),
            &Tensor::from_slice(&[1i64, 1]),
            &[1, 1, 1],
        );
        assert!(part.single_class && part.loss.double_value(&[]) == 0.0);
    }

    #[test]
    fn weights_follow_the_batch() {
        assert_eq!(batch_class_weights(&[0, 0, 1, 3], 4), [0.5, 0.75, 0.0, 0.75]);
        let single =
            weighted_loss(&Tensor::ones([3, 4], (Kind::Float, tch::Device::Cpu)), &Tensor::from_slice(&[2i64, 2, 2]));
        assert!(single.single_class);
        assert_eq!(single.loss.double_value(&[]), 0.0);
        let binary =
            weighted_loss(&Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)), &Tensor::from_slice(&[1i64, 1]));
        assert!(binary.single_class && binary.loss.double_value(&[]) == 0.0);
    }
}
