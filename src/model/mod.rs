//! The model: configs and model-directory file names (no tensor library needed), and on tch
//! the BERT and RoBERTa/CamemBERT encoders, the adaptive layer, heads, and Hugging Face
//! model directories (load and save).

#[cfg(feature = "train")]
pub mod adaptive;
#[cfg(feature = "train")]
pub mod bert;
#[cfg(feature = "train")]
pub mod checkpoint;
pub mod config;
pub mod dir;
#[cfg(feature = "train")]
pub mod dropout;
#[cfg(feature = "train")]
pub mod heads;

use crate::error::{Error, Result};

/// A device as a config names it: `auto | cpu | cuda | cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    /// The first GPU when there is one, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceName {
    /// Parses a device name (its availability is checked when a step runs).
    pub fn parse(name: &str) -> Result<DeviceName> {
        match name {
            "auto" => Ok(DeviceName::Auto),
            "cpu" => Ok(DeviceName::Cpu),
            "cuda" => Ok(DeviceName::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceName::Cuda(i)),
                _ => Err(Error::config(format!("device `{other}`: expected auto, cpu, cuda or cuda:N"))),
            },
        }
    }
}

/// Parses `auto | cpu | cuda | cuda:N` into a device of this machine; `auto` is the first
/// GPU when there is one.
#[cfg(feature = "train")]
pub fn parse_device(name: &str) -> Result<tch::Device> {
    match DeviceName::parse(name)? {
        DeviceName::Auto => Ok(tch::Device::cuda_if_available()),
        DeviceName::Cpu => Ok(tch::Device::Cpu),
        DeviceName::Cuda(i) => {
            let n = tch::Cuda::device_count() as usize;
            if i < n {
                Ok(tch::Device::Cuda(i))
            } else {
                Err(Error::config(format!("device cuda:{i}: this machine has {n} CUDA device(s)")))
            }
        }
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn devices() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(DeviceName::parse("cuda:3").unwrap(), DeviceName::Cuda(3));
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("0 CUDA device"));
        }
    }
}
