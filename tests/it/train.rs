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
    let grads: Vec<(Tensor, Tensor)> =
        (0..5).map(|_| (Tensor::randn([4, 3], (Kind::Float, Device::Cpu)), Tensor::randn([5], (Kind::Float, Device::Cpu)))).collect();
    let mut inputs: Vec<(String, Tensor)> = vec![("a".into(), a0.copy()), ("b".into(), b0.copy()), ("factors".into(), Tensor::from_slice(&factors))];
    for (k, (ga, gb)) in grads.iter().enumerate() {
        inputs.push((format!("grad_a_{k}"), ga.copy()));
        inputs.push((format!("grad_b_{k}"), gb.copy()));
    }
    let inputs_path = dir.path().join("inputs.safetensors");
    Tensor::write_safetensors(&inputs, &inputs_path).unwrap();
    let out = dir.path().join("ref.safetensors");
    run(python().args([s(&root().join("tests/parity/adamw_ref.py")), s(&inputs_path), s(&out)])).ok();
    let reference: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();

    let a = a0.copy().set_requires_grad(true);
    let b = b0.copy().set_requires_grad(true);
    let mut opt = AdamW::new(
        vec![
            Group { name: "decay".into(), lr: 1e-2, weight_decay: 0.1, params: vec![("a".into(), a.shallow_clone())] },
            Group { name: "no_decay".into(), lr: 5e-3, weight_decay: 0.0, params: vec![("b".into(), b.shallow_clone())] },
        ],
        (0.9, 0.999),
        1e-8,
    );
    for (k, (ga, gb)) in grads.iter().enumerate() {
        opt.zero_grad();
        // d/dx sum(x * g) = g: the gradients PyTorch was given.
        ((&a * ga).sum(Kind::Float) + (&b * gb).sum(Kind::Float)).backward();
        opt.step(factors[k]);
    }
    for (name, mine) in [("a", &a), ("b", &b)] {
        let diff = (mine.detach() - &reference[name]).abs().max().double_value(&[]);
        eprintln!("parity adamw {name}: max abs diff {diff:.2e}");
        assert!(diff <= 1e-6, "{name}: max abs diff {diff}");
    }
    assert!((a.detach() - a0).abs().max().double_value(&[]) > 1e-3, "the parameters moved");
}
