//! Training metrics as TensorBoard event files: TFRecord framing (length, masked CRC-32C,
//! payload, masked CRC-32C) around `Event` protocol buffers carrying scalar summaries, the
//! subset of `tensorflow/core/util/event.proto` and `summary.proto` that scalars need.

/// The file name TensorBoard looks for (`*tfevents*`).
pub const EVENTS_FILE: &str = "events.out.tfevents.0.taft";

/// One scalar at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub wall_time: f64,
    pub value: f32,
}

/// The bytes of an event file holding `scalars` (one event per scalar), after the
/// `brain.Event:2` version record.
pub fn event_file(scalars: &[Scalar]) -> Vec<u8> {
    let first_time = scalars.first().map_or(0.0, |s| s.wall_time);
    let mut out = Vec::new();
    let mut version = Vec::new();
    put_double(&mut version, 1, first_time);
    put_bytes(&mut version, 3, b"brain.Event:2");
    record(&mut out, &version);
    for s in scalars {
        let mut value = Vec::new();
        put_bytes(&mut value, 1, s.tag.as_bytes());
        put_key(&mut value, 2, 5);
        value.extend_from_slice(&s.value.to_le_bytes());
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &value);
        let mut event = Vec::new();
        put_double(&mut event, 1, s.wall_time);
        put_key(&mut event, 2, 0);
        put_varint(&mut event, s.step as u64);
        put_bytes(&mut event, 5, &summary);
        record(&mut out, &event);
    }
    out
}

fn record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// TFRecord's CRC: CRC-32C rotated and offset.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_framed_with_checksums() {
        let bytes = event_file(&[Scalar { tag: "train/loss".into(), step: 300, wall_time: 1.5, value: 0.25 }]);
        // Two records; each: u64 length, masked crc of the length, payload, masked crc.
        let len0 = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), masked_crc(&bytes[..8]));
        let payload = &bytes[12..12 + len0];
        assert!(payload.windows(13).any(|w| w == b"brain.Event:2"));
        let second = 12 + len0 + 4;
        let len1 = u64::from_le_bytes(bytes[second..second + 8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), second + 12 + len1 + 4);
        let event = &bytes[second + 12..second + 12 + len1];
        // step 300 as a varint after key 0x10
        assert!(event.windows(3).any(|w| w == [0x10, 0xac, 0x02]));
        // The well-known CRC-32C check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }
}
