//! Encoder forward throughput of taft (tch) on a Hugging Face model directory, for
//! `bench/encoder.py`. Prints one JSON line: the median seconds per batch and tokens/s.
//!
//! Usage: encoder_bench MODEL_DIR BATCH SEQ REPEAT THREADS

use std::time::Instant;

use taft::model::checkpoint::load_encoder;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, batch, seq, repeat, threads] = args.as_slice() else {
        eprintln!("usage: encoder_bench MODEL_DIR BATCH SEQ REPEAT THREADS");
        std::process::exit(2);
    };
    let (batch, seq, repeat): (i64, i64, usize) =
        (batch.parse().unwrap(), seq.parse().unwrap(), repeat.parse().unwrap());
    tch::set_num_threads(threads.parse().unwrap());
    tch::manual_seed(0);
    let model = load_encoder(std::path::Path::new(dir), Device::Cpu).expect("model directory");
    let ids = Tensor::randint_low(5, model.config.vocab_size, [batch, seq], (Kind::Int64, Device::Cpu));
    let mask = Tensor::ones([batch, seq], (Kind::Int64, Device::Cpu));
    let mut times = Vec::with_capacity(repeat);
    tch::no_grad(|| {
        for i in 0..repeat + 2 {
            let start = Instant::now();
            let out = model.encoder.forward_t(&ids, Some(&mask), None, false);
            let _ = out.sum(Kind::Float).double_value(&[]);
            if i >= 2 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
    });
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("{}", serde_json::json!({"median_s": median, "tokens_per_s": (batch * seq) as f64 / median}));
}
