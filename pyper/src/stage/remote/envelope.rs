//! What travels through a run's streams: items and outcomes in versioned envelopes,
//! postcard-encoded. An envelope's first byte is its version (postcard writes an enum's
//! variant as a varint), so a build that meets a version it does not know says so instead
//! of misreading it.

use serde::{Deserialize, Serialize};

/// Items on their way to a worker: many in one message, as many as fit.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ItemEnvelope {
    /// Version 1 carried one item per message; no build reads it any more.
    Retired,
    V2 {
        /// The items, in the order of their indices.
        items: Vec<Item>,
    },
}

/// One item of an [`ItemEnvelope`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Item {
    /// The item's index in the stage's input: its identity in dedup ids and errors.
    pub(super) seq: u64,
    /// The item, postcard-encoded.
    pub(super) bytes: Vec<u8>,
}

/// What a worker made of the items of one message.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum OutcomeEnvelope {
    /// Version 1 carried one outcome per message; no build reads it any more.
    Retired,
    V2 {
        /// Which worker: its host name and process id, for the metrics.
        host: String,
        pid: u32,
        /// How many times the server had delivered the message (more than 1: a
        /// redelivery).
        delivered: u64,
        /// How long the calls took, all told, in nanoseconds: what the coordinator sizes
        /// its batches by, and the stage's busy time.
        busy_nanos: u64,
        /// The CPU time of the calls (the worker thread's), in nanoseconds: with
        /// `busy_nanos`, what tells the stage's verdict.
        cpu_nanos: u64,
        /// Each item's outcome, by its index.
        outcomes: Vec<(u64, Outcome)>,
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
    /// The function raised an exception (Python's): its message and traceback, and the
    /// exception, pickled.
    Raised {
        chain: Vec<String>,
        exception: Vec<u8>,
    },
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
            super::setup::VERSION
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_starts_with_its_version() {
        let bytes = encode(&ItemEnvelope::V2 {
            items: vec![Item {
                seq: 7,
                bytes: vec![1, 2],
            }],
        });
        assert_eq!(bytes[0], 1, "V2 is variant 1");
        let ItemEnvelope::V2 { items } = decode(&bytes, "an item").unwrap() else {
            panic!("not V2");
        };
        assert_eq!((items[0].seq, &items[0].bytes[..]), (7, &[1, 2][..]));
        let mut future = bytes.clone();
        future[0] = 2;
        let error = decode::<ItemEnvelope>(&future, "an item").unwrap_err();
        assert!(error.contains("version 3"), "{error}");
    }
}
