//! The model on tch: BERT and RoBERTa/CamemBERT encoders, the adaptive layer, heads, and
//! Hugging Face model directories (load and save).

pub mod adaptive;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod heads;

use tch::Device;

use crate::error::{Error, Result};

/// Parses `auto | cpu | cuda | cuda:N`; `auto` is the first GPU when there is one.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(Error::config(format!("device `{other}`: expected auto, cpu, cuda or cuda:N"))),
        },
    }
}

fn cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count() as usize;
    if i < n {
        Ok(Device::Cuda(i))
    } else {
        Err(Error::config(format!("device cuda:{i}: this machine has {n} CUDA device(s)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("0 CUDA device"));
        }
    }
}
