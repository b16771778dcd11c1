//! The wire protocol between a process stage and its worker processes.
//!
//! Every message is a frame: a little-endian `u32` length (at most [`MAX_FRAME`], 256 MiB),
//! then that many bytes, the first of which is the message's tag. The exchange over one
//! connection is:
//!
//! 1. worker → parent: [`HELLO`] with its process id (the parent has already checked, with
//!    the socket's peer credentials, that the process on the other end is the one it
//!    started: see `worker.rs`);
//! 2. parent → worker: [`SETUP`] with a postcard-encoded [`Setup`]: which registered
//!    function to serve (see `stage/wire/registry.rs`);
//! 3. worker → parent: [`READY`], or [`REFUSED`] with the reason;
//! 4. then any number of times: parent → worker: a [`BATCH`] of postcard-encoded items,
//!    each with its own length; worker → parent: one reply per item, in order, as each
//!    completes: [`DONE`] with the postcard-encoded output, [`FAILED`] with the error's
//!    chain of messages, or [`PANICKED`] with the panic message.
//!
//! The parent closes the connection to stop a worker; a worker that reads the end of the
//! stream, or finds it broken, exits.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::stage::wire::codec;
use crate::stage::wire::registry::FunctionRef;
use crate::stage::wire::Reply;

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
/// Which function a worker serves.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// The registered function, by its place in the table and its name.
    pub(crate) function: FunctionRef,
}

/// The most bytes one frame may carry (its length field: the tag and the payload), 256 MiB.
/// A length above it is refused before anything is allocated, so a corrupt stream cannot
/// make either side allocate gigabytes; an item or output that big fails with an error
/// that names the limit.
pub(crate) const MAX_FRAME: usize = 256 << 20;

// An encoded item fits in a batch's frame with its tag and length.
const _: () = assert!(codec::MAX_BYTES + 5 == MAX_FRAME);

/// Builds one frame in `scratch`: the length, `tag`, then `parts` back to back.
pub(crate) fn frame(scratch: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) -> io::Result<()> {
    let length = 1 + parts.iter().map(|part| part.len()).sum::<usize>();
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            codec::too_big("a message", length),
        ));
    }
    scratch.clear();
    scratch.extend_from_slice(&(length as u32).to_le_bytes());
    scratch.push(tag);
    for part in parts {
        scratch.extend_from_slice(part);
    }
    Ok(())
}

/// Writes one frame: `tag`, then `parts` back to back, with one `write` call.
pub(crate) fn write_frame(
    out: &mut impl Write,
    scratch: &mut Vec<u8>,
    tag: u8,
    parts: &[&[u8]],
) -> io::Result<()> {
    frame(scratch, tag, parts)?;
    out.write_all(scratch)?;
    out.flush()
}

/// How many payload bytes a [`FrameReader`] makes room for at once: a corrupt length
/// allocates no more than the bytes that really arrive.
const CHUNK: usize = 64 << 10;

/// Reads frames one at a time. A read that fails with a timeout (`WouldBlock` or
/// `TimedOut`) keeps its place: the next call goes on where it stopped, so a reader can
/// wake up now and then while it waits for a frame.
#[derive(Default)]
pub(crate) struct FrameReader {
    length: [u8; 4],
    /// How many bytes of `length` have arrived.
    length_read: usize,
    tag: Option<u8>,
    /// Payload bytes still to come.
    left: usize,
    /// The payload of the frame being read, then of the frame last read.
    pub(crate) payload: Vec<u8>,
}

impl FrameReader {
    /// Reads (the rest of) one frame into [`payload`](FrameReader::payload) and returns its
    /// tag, or `None` at a clean end of the stream.
    pub(crate) fn read(&mut self, input: &mut impl Read) -> io::Result<Option<u8>> {
        while self.length_read < 4 {
            let read = read_some(input, &mut self.length[self.length_read..])?;
            if read == 0 {
                return match self.length_read {
                    0 => Ok(None),
                    _ => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
            self.length_read += read;
            if self.length_read == 4 {
                let length = u32::from_le_bytes(self.length) as usize;
                if length == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "empty frame"));
                }
                if length > MAX_FRAME {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        codec::too_big("a message announced", length),
                    ));
                }
                self.tag = None;
                self.left = length - 1;
                self.payload.clear();
            }
        }
        if self.tag.is_none() {
            let mut tag = [0];
            if read_some(input, &mut tag)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.tag = Some(tag[0]);
        }
        while self.left > 0 {
            let start = self.payload.len();
            self.payload.resize(start + self.left.min(CHUNK), 0);
            let read = read_some(input, &mut self.payload[start..]);
            self.payload.truncate(start + *read.as_ref().unwrap_or(&0));
            match read? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                read => self.left -= read,
            }
        }
        self.length_read = 0;
        Ok(self.tag.take())
    }
}

/// One `read`, retried if a signal interrupted it.
fn read_some(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buffer) {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

impl Reply {
    /// Writes the reply as one frame.
    pub(crate) fn write(&self, out: &mut impl Write, scratch: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Reply::Done(output) => write_frame(out, scratch, DONE, &[output]),
            // Only a Python worker on a remote stage raises; over a socket it is a failure.
            Reply::Failed(chain) | Reply::Raised { chain, .. } => {
                let chain = postcard::to_stdvec(chain)
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
                write_frame(out, scratch, FAILED, &[&chain])
            }
            Reply::Panicked(message) => write_frame(out, scratch, PANICKED, &[message.as_bytes()]),
        }
    }

    /// The reply in a frame with `tag` and `payload`, which it takes.
    pub(crate) fn read(tag: u8, payload: &mut Vec<u8>) -> io::Result<Reply> {
        match tag {
            DONE => Ok(Reply::Done(std::mem::take(payload))),
            FAILED => postcard::from_bytes(payload)
                .map(Reply::Failed)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error)),
            PANICKED => Ok(Reply::Panicked(
                String::from_utf8_lossy(payload).into_owned(),
            )),
            tag => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected message {tag} from the worker process"),
            )),
        }
    }
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
        let mut reader = FrameReader::default();
        assert_eq!(reader.read(&mut input).unwrap(), Some(BATCH));
        let got: Vec<&[u8]> = items(&reader.payload).map(Result::unwrap).collect();
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
        assert_eq!(reader.read(&mut input).unwrap(), Some(DONE));
        assert_eq!(reader.payload, b"xy");
        assert_eq!(reader.read(&mut input).unwrap(), None);
    }

    /// Gives one byte per `read`, and a timeout between any two.
    struct Trickle<'a> {
        bytes: &'a [u8],
        timed_out: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.timed_out = !self.timed_out;
            if self.timed_out {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let Some((&first, rest)) = self.bytes.split_first() else {
                return Ok(0);
            };
            buffer[0] = first;
            self.bytes = rest;
            Ok(1)
        }
    }

    #[test]
    fn a_frame_read_in_pieces_between_timeouts_comes_whole() {
        let mut wire = Vec::new();
        let mut scratch = Vec::new();
        write_frame(&mut wire, &mut scratch, DONE, &[b"hello"]).unwrap();
        write_frame(&mut wire, &mut scratch, PANICKED, &[b"!"]).unwrap();
        let mut input = Trickle {
            bytes: &wire,
            timed_out: false,
        };
        let mut reader = FrameReader::default();
        let mut frames = Vec::new();
        loop {
            match reader.read(&mut input) {
                Ok(Some(tag)) => frames.push((tag, reader.payload.clone())),
                Ok(None) => break,
                Err(error) => assert_eq!(error.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(
            frames,
            [(DONE, b"hello".to_vec()), (PANICKED, b"!".to_vec())]
        );
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_allocating() {
        let mut wire = u32::MAX.to_le_bytes().to_vec();
        wire.push(DONE);
        let mut reader = FrameReader::default();
        let error = reader.read(&mut &wire[..]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("256 MiB"), "{error}");
        assert_eq!(reader.payload.capacity(), 0);
        let over = vec![0; MAX_FRAME];
        let error = write_frame(&mut Vec::new(), &mut Vec::new(), DONE, &[&over]).unwrap_err();
        assert!(error.to_string().contains("256 MiB"), "{error}");
    }
}
