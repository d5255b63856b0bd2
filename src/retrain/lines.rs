//! Trained rows as refit stores them with their consumption (`refit_consumed_actuals.line`), so
//! a retrain reads its window of recent trained actuals from refit's own table, without joining
//! the upstream tables or parsing their JSON again.
//!
//! A line is, little-endian: the fingerprint of the feature order it was laid out in (u64), the
//! label (f32), then one f32 per feature (NaN for missing) — exactly the matrix row it trained
//! as. A window is taken from lines only when every line is present and in the model's current
//! order; otherwise the caller reads it from the upstream tables as before, so the rows a model
//! sees never depend on which path read them.

use super::features::Batch;

const HEADER: usize = 8 + 4;

/// FNV-1a over the feature names, each ended by a 0 byte: stable across builds and platforms.
pub(crate) fn fingerprint(names: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in names.iter().flat_map(|n| n.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One line per usable row of `batch`, in row order.
pub(crate) fn encode(batch: &Batch) -> Vec<Vec<u8>> {
    let width = batch.feature_names.len();
    let order = fingerprint(&batch.feature_names).to_le_bytes();
    batch
        .labels
        .iter()
        .enumerate()
        .map(|(row, label)| {
            let mut line = Vec::with_capacity(HEADER + 4 * width);
            line.extend_from_slice(&order);
            line.extend_from_slice(&label.to_le_bytes());
            for value in &batch.values[row * width..(row + 1) * width] {
                line.extend_from_slice(&value.to_le_bytes());
            }
            line
        })
        .collect()
}

/// The window from stored lines, oldest first (`stored` comes newest first, as read), laid out
/// in `order`; `None` when a line is missing or was laid out in another order.
pub(crate) fn decode(stored: &[(i64, Option<Vec<u8>>)], order: &[String]) -> Option<Batch> {
    let width = order.len();
    let expected = fingerprint(order).to_le_bytes();
    let mut batch = Batch {
        feature_names: order.to_vec(),
        ..Batch::default()
    };
    batch.values.reserve(stored.len() * width);
    for (actual_id, line) in stored.iter().rev() {
        let line = line.as_deref()?;
        if line.len() != HEADER + 4 * width || line[..8] != expected {
            return None;
        }
        let mut floats = line[8..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        batch.labels.extend(floats.next());
        batch.values.extend(floats);
        batch.used.push(*actual_id);
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrain::features::{prepare, ActualRow};

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn rows() -> Vec<ActualRow> {
        [
            r#"{"hr": 8, "temp": 20.5}"#,
            r#"{"hr": 9}"#,
            r#"{"temp": -3.25, "hr": 23}"#,
        ]
        .iter()
        .enumerate()
        .map(|(i, f)| ActualRow {
            actual_id: 10 + i as i64,
            actual_value: 100.0 + i as f64,
            features: f.to_string(),
        })
        .collect()
    }

    #[test]
    fn a_window_read_from_lines_is_the_window_read_from_the_rows() {
        let order = names(&["hr", "temp"]);
        let batch = prepare(&rows(), Some(&order));
        // Stored per actual, read back newest first.
        let stored: Vec<_> = batch
            .used
            .iter()
            .zip(encode(&batch))
            .rev()
            .map(|(id, line)| (*id, Some(line)))
            .collect();
        let read = decode(&stored, &order).expect("every line present, same order");
        assert_eq!(read.used, batch.used);
        assert_eq!(read.labels, batch.labels);
        let bits = |b: &Batch| b.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&read),
            bits(&batch),
            "NaN for the missing temp included"
        );
    }

    #[test]
    fn a_missing_line_or_another_feature_order_falls_back() {
        let order = names(&["hr", "temp"]);
        let batch = prepare(&rows(), Some(&order));
        let mut stored: Vec<_> = batch
            .used
            .iter()
            .zip(encode(&batch))
            .map(|(id, line)| (*id, Some(line)))
            .collect();
        assert!(decode(&stored, &names(&["temp", "hr"])).is_none());
        assert!(decode(&stored, &names(&["hr", "temp", "hum"])).is_none());
        stored[1].1 = None;
        assert!(decode(&stored, &order).is_none());
        assert_ne!(
            fingerprint(&names(&["ab", "c"])),
            fingerprint(&names(&["a", "bc"]))
        );
    }
}
