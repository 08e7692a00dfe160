//! Training building blocks against PyTorch: AdamW with groups and a schedule.

use taft::train::optim::{AdamW, Group};
use taft::train::schedule::LinearSchedule;
use tch::{Device, Kind, Tensor};

use crate::common::*;

#[test]
fn adamw_with_groups_and_schedule_matches_torch() {
    tch::manual_seed(5);
    let dir = tempdir();
    let a0 = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    let b0 = Tensor::randn([5], (Kind::Float, Device::Cpu));
    let schedule = LinearSchedule { total_steps: 6, warmup_steps: 2 };
    let factors: Vec<f64> = (0..5).map(|i| schedule.factor(i)).collect();
    let grads: Vec<(Tensor, Tensor)> = (0..5)
        .map(|_| (Tensor::randn([4, 3], (Kind::Float, Device::Cpu)), Tensor::randn([5], (Kind::Float, Device::Cpu))))
        .collect();
    let mut inputs: Vec<(String, Tensor)> =
        vec![("a".into(), a0.copy()), ("b".into(), b0.copy()), ("factors".into(), Tensor::from_slice(&factors))];
    for (k, (ga, gb)) in grads.iter().enumerate() {
        inputs.push((format!("grad_a_{k}"), ga.copy()));
        inputs.push((format!("grad_b_{k}"), gb.copy()));
    }
    let inputs_path = dir.path().join("inputs.safetensors");
    Tensor::write_safetensors(&inputs, &inputs_path).unwrap();
    let out = dir.path().join("ref.safetensors");
    run(python().args([s(&root().join("tests/parity/adamw_ref.py")), s(&inputs_path), s(&out)])).ok();
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&out).unwrap().into_iter().collect();

    let a = a0.copy().set_requires_grad(true);
    let b = b0.copy().set_requires_grad(true);
    let mut opt = AdamW::new(
        vec![
            Group { name: "decay".into(), lr: 1e-2, weight_decay: 0.1, params: vec![("a".into(), a.shallow_clone())] },
            Group {
                name: "no_decay".into(),
                lr: 5e-3,
                weight_decay: 0.0,
                params: vec![("b".into(), b.shallow_clone())],
            },
        ],
        (0.9, 0.999),
        1e-8,
    );
    for (k, (ga, gb)) in grads.iter().enumerate() {
        opt.zero_grad();
        // d/dx sum(x * g) = g: the gradients PyTorch was given.
        ((&a * ga).sum(Kind::Float) + (&b * gb).sum(Kind::Float)).backward();
        opt.step(factors[k]).unwrap();
    }
    for (name, mine) in [("a", &a), ("b", &b)] {
        let diff = (mine.detach() - &reference[name]).abs().max().double_value(&[]);
        eprintln!("parity adamw {name}: max abs diff {diff:.2e}");
        assert!(diff <= 1e-6, "{name}: max abs diff {diff}");
    }
    assert!((a.detach() - a0).abs().max().double_value(&[]) > 1e-3, "the parameters moved");
}

#[test]
fn spec_losses_match_torch() {
    use taft::train::loss::{task_shares, validation_loss, weighted_loss};
    tch::manual_seed(11);
    let dir = tempdir();
    // 4 and 7 classes (weighted cross-entropy, one class absent in "satis"), 2 (weighted BCE).
    let cases = [
        ("status", 4i64, vec![0i64, 1, 1, 3, 3, 3, 2, 0]),
        ("satis", 7, vec![6, 0, 0, 2, 5, 5, 5, 1, 3]),
        ("pc", 2, vec![0, 1, 1, 1, 0, 1]),
    ];
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for (name, classes, labels) in &cases {
        inputs.push((
            format!("logits_{name}"),
            Tensor::randn([labels.len() as i64, *classes], (Kind::Float, Device::Cpu)) * 2.0,
        ));
        inputs.push((format!("labels_{name}"), Tensor::from_slice(labels)));
    }
    let inputs_path = dir.path().join("inputs.safetensors");
    Tensor::write_safetensors(&inputs, &inputs_path).unwrap();
    let out = dir.path().join("ref.safetensors");
    run(python().args([s(&root().join("tests/parity/loss_ref.py")), s(&inputs_path), s(&out)])).ok();
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let given: std::collections::HashMap<String, Tensor> = inputs.into_iter().collect();
    let mut losses = Vec::new();
    for (name, _, _) in &cases {
        let logits = given[&format!("logits_{name}")].copy().set_requires_grad(true);
        let labels = &given[&format!("labels_{name}")];
        let task = weighted_loss(&logits, labels);
        assert!(!task.single_class);
        task.loss.backward();
        let dl = (task.loss.double_value(&[]) - reference[&format!("loss_{name}")].double_value(&[0])).abs();
        let dg = (logits.grad() - &reference[&format!("grad_{name}")]).abs().max().double_value(&[]);
        let dv = (validation_loss(&logits, labels).double_value(&[])
            - reference[&format!("val_{name}")].double_value(&[0]))
        .abs();
        eprintln!("parity loss {name}: |Δloss| {dl:.2e}, grad max abs diff {dg:.2e}, |Δval| {dv:.2e}");
        assert!(dl <= 1e-6 && dg <= 1e-6 && dv <= 1e-6, "{name}: {dl} {dg} {dv}");
        losses.push(task.loss.detach());
    }
    let shares = task_shares(&[0.8, 0.2]);
    let total = (&losses[0] * shares[0] + &losses[1] * shares[1]).double_value(&[]);
    let expected = 0.8 * reference["loss_status"].double_value(&[0]) + 0.2 * reference["loss_satis"].double_value(&[0]);
    assert!((total - expected).abs() <= 1e-6, "{total} vs {expected}");
}
