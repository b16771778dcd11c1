//! The wire protocol between a process stage and its worker processes.
//!
//! Every message is a frame: a little-endian `u32` length, then that many bytes, the first
//! of which is the message's tag. The exchange over one connection is:
//!
//! 1. worker → parent: [`HELLO`] with the token the parent put in the worker's environment
//!    (so a stray process that finds the socket cannot pose as the worker);
//! 2. parent → worker: [`SETUP`] with a postcard-encoded [`Setup`]: which function to serve;
//! 3. worker → parent: [`READY`], or [`REFUSED`] with the reason;
//! 4. then any number of times: parent → worker: a [`BATCH`] of postcard-encoded items,
//!    each with its own length; worker → parent: one reply per item, in order, as each
//!    completes: [`DONE`] with the postcard-encoded output, [`FAILED`] with the error's
//!    chain of messages, or [`PANICKED`] with the panic message.
//!
//! The parent closes the connection to stop a worker; a worker that reads the end of the
//! stream exits.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::entry::Code;

pub(crate) const HELLO: u8 = 1;
pub(crate) const SETUP: u8 = 2;
pub(crate) const READY: u8 = 3;
pub(crate) const REFUSED: u8 = 4;
pub(crate) const BATCH: u8 = 5;
pub(crate) const DONE: u8 = 6;
pub(crate) const FAILED: u8 = 7;
pub(crate) const PANICKED: u8 = 8;

/// The environment variable that makes a process a worker: the socket to connect to.
pub(crate) const ADDRESS_ENV: &str = "PYPER_PROCESS_WORKER";
/// The token the worker proves itself with.
pub(crate) const TOKEN_ENV: &str = "PYPER_PROCESS_TOKEN";

/// Which function a worker serves.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The executable's fingerprint in the parent.
    pub(crate) fingerprint: i64,
    /// The monomorphised serving loop, a `fn(Serve) -> Result<(), String>`.
    pub(crate) entry: Code,
    /// The user's function.
    pub(crate) user: Code,
}

/// Writes one frame: `tag`, then `parts` back to back, with one `write` call.
pub(crate) fn write_frame(
    out: &mut impl Write,
    scratch: &mut Vec<u8>,
    tag: u8,
    parts: &[&[u8]],
) -> io::Result<()> {
    let length = 1 + parts.iter().map(|part| part.len()).sum::<usize>();
    let length = u32::try_from(length)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 4 GiB"))?;
    scratch.clear();
    scratch.extend_from_slice(&length.to_le_bytes());
    scratch.push(tag);
    for part in parts {
        scratch.extend_from_slice(part);
    }
    out.write_all(scratch)?;
    out.flush()
}

/// Reads one frame into `buffer` (without its tag) and returns the tag, or `None` at a
/// clean end of the stream.
pub(crate) fn read_frame(input: &mut impl Read, buffer: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut length = [0; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty frame"));
    }
    let mut tag = [0];
    input.read_exact(&mut tag)?;
    buffer.clear();
    buffer.resize(length - 1, 0);
    input.read_exact(buffer)?;
    Ok(Some(tag[0]))
}

/// Appends one item of a batch: its length, then its bytes.
pub(crate) fn put_item(batch: &mut Vec<u8>, item: &[u8]) {
    batch.extend_from_slice(&(item.len() as u32).to_le_bytes());
    batch.extend_from_slice(item);
}

/// Splits a batch's payload into its items.
pub(crate) fn items(mut batch: &[u8]) -> impl Iterator<Item = io::Result<&[u8]>> {
    std::iter::from_fn(move || {
        if batch.is_empty() {
            return None;
        }
        let Some((length, rest)) = batch.split_first_chunk::<4>() else {
            batch = &[];
            return Some(Err(truncated()));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            batch = &[];
            return Some(Err(truncated()));
        }
        let (item, rest) = rest.split_at(length);
        batch = rest;
        Some(Ok(item))
    })
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "truncated batch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_batches_round_trip() {
        let mut wire = Vec::new();
        let mut scratch = Vec::new();
        let mut batch = Vec::new();
        put_item(&mut batch, b"one");
        put_item(&mut batch, b"");
        put_item(&mut batch, b"three");
        write_frame(&mut wire, &mut scratch, BATCH, &[&batch]).unwrap();
        write_frame(&mut wire, &mut scratch, DONE, &[b"x", b"y"]).unwrap();
        let mut input = &wire[..];
        let mut buffer = Vec::new();
        assert_eq!(read_frame(&mut input, &mut buffer).unwrap(), Some(BATCH));
        let got: Vec<&[u8]> = items(&buffer).map(Result::unwrap).collect();
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
        assert_eq!(read_frame(&mut input, &mut buffer).unwrap(), Some(DONE));
        assert_eq!(buffer, b"xy");
        assert_eq!(read_frame(&mut input, &mut buffer).unwrap(), None);
    }
}
