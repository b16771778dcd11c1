//! What travels through a run's streams: items and outcomes in versioned envelopes,
//! postcard-encoded. An envelope's first byte is its version (postcard writes an enum's
//! variant as a varint), so a build that meets a version it does not know says so instead
//! of misreading it.

use serde::{Deserialize, Serialize};

/// An item on its way to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ItemEnvelope {
    V1 {
        /// The item's index in the stage's input: its identity in dedup ids and errors.
        seq: u64,
        /// The item, postcard-encoded.
        item: Vec<u8>,
    },
}

/// What a worker made of an item.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum OutcomeEnvelope {
    V1 {
        seq: u64,
        /// Which worker: its host name and process id, for the metrics.
        host: String,
        pid: u32,
        /// How many times the server had delivered the item (more than 1: a redelivery).
        delivered: u64,
        outcome: Outcome,
    },
}

/// The outcome of an item, after the retries the stage allows.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Outcome {
    /// The postcard-encoded output.
    Done(Vec<u8>),
    /// The messages of the error's chain, outermost first.
    Failed(Vec<String>),
    /// The panic's message.
    Panicked(String),
    /// The call overran the stage's timeout, in nanoseconds.
    TimedOut(u64),
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Envelopes hold bytes, strings and integers: encoding them into a `Vec` cannot fail.
    postcard::to_stdvec(value).expect("an envelope always encodes")
}

pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| {
        format!(
            "cannot read {what} (version {} of the envelope; this build reads version {}): \
             {error}",
            bytes.first().copied().unwrap_or(0) + 1,
            super::VERSION
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_starts_with_its_version() {
        let bytes = encode(&ItemEnvelope::V1 {
            seq: 7,
            item: vec![1, 2],
        });
        assert_eq!(bytes[0], 0, "V1 is variant 0");
        let ItemEnvelope::V1 { seq, item } = decode(&bytes, "an item").unwrap();
        assert_eq!((seq, item), (7, vec![1, 2]));
        let mut future = bytes.clone();
        future[0] = 1;
        let error = decode::<ItemEnvelope>(&future, "an item").unwrap_err();
        assert!(error.contains("version 2"), "{error}");
    }
}
