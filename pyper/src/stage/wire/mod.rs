//! What crosses to a worker in another process or on another host, shared by the process
//! and remote kinds: which function a message may name ([`registry`]), items and outputs
//! as bytes ([`codec`]), and a call of a registered function on one item ([`call`]).
//!
//! Nothing that arrives from a socket or the network is trusted to choose code: a message
//! names a function only as an index into the program's own table of registered functions,
//! checked against the function's name, and a worker calls only what it finds there.

pub(crate) mod codec;
mod error;
pub(crate) mod registry;

pub use error::RemoteError;

use std::any::Any;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;

/// What one call of a registered function made of one item.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The postcard-encoded output.
    Done(Vec<u8>),
    /// The chain of messages of the error the function returned, outermost first.
    Failed(Vec<String>),
    /// The panic's message.
    Panicked(String),
    /// An exception of another language (Python's): its message and traceback, and the
    /// exception itself as that language encodes it (a pickle), for the coordinator to
    /// raise again.
    Raised {
        chain: Vec<String>,
        exception: Vec<u8>,
    },
}

/// Calls `f` on the postcard-encoded `item` and encodes what it gives: what a registered
/// process or remote task runs in a worker, for one item.
#[doc(hidden)]
pub fn call_each<I, O>(item: &[u8], f: fn(I) -> O) -> Reply
where
    I: DeserializeOwned,
    O: Serialize,
{
    call(item, |input| Ok::<O, BoxError>(f(input)))
}

/// [`call_each`] for a fallible function.
#[doc(hidden)]
pub fn call_try<I, O, E>(item: &[u8], f: fn(I) -> Result<O, E>) -> Reply
where
    I: DeserializeOwned,
    O: Serialize,
    E: Into<BoxError>,
{
    call(item, f)
}

fn call<I, O, E>(item: &[u8], f: impl FnOnce(I) -> Result<O, E>) -> Reply
where
    I: DeserializeOwned,
    O: Serialize,
    E: Into<BoxError>,
{
    // The item's `Deserialize` and the output's `Serialize` are user code too.
    let result = catch_unwind(AssertUnwindSafe(|| {
        let input: I = match postcard::from_bytes(item) {
            Ok(input) => input,
            Err(error) => return Reply::Failed(vec![format!("cannot decode the item: {error}")]),
        };
        match f(input) {
            Ok(output) => match codec::encode(&output, "the output") {
                Ok(bytes) => Reply::Done(bytes),
                Err(why) => Reply::Failed(vec![why]),
            },
            Err(error) => {
                let error: BoxError = error.into();
                let mut chain = Vec::new();
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
                while let Some(error) = cause {
                    chain.push(error.to_string());
                    cause = error.source();
                }
                Reply::Failed(chain)
            }
        }
    }));
    // Anything printed so far reaches the terminal before the reply does.
    let _ = std::io::stdout().flush();
    result.unwrap_or_else(|payload| Reply::Panicked(panic_message(payload)))
}

/// A panic's message, when it has one.
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "Box<dyn Any>".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    fn parse(text: String) -> Result<u32, std::num::ParseIntError> {
        text.parse()
    }

    #[test]
    fn a_call_decodes_the_item_and_encodes_the_output() {
        let item = postcard::to_stdvec(&21u32).unwrap();
        let output = postcard::to_stdvec(&42u32).unwrap();
        assert_eq!(call_each(&item, double), Reply::Done(output));
    }

    #[test]
    fn errors_panics_and_bad_bytes_become_replies() {
        let item = postcard::to_stdvec("x").unwrap();
        assert_eq!(
            call_try(&item, parse),
            Reply::Failed(vec!["invalid digit found in string".into()])
        );
        let panics: fn(u32) -> u32 = |_| panic!("no");
        assert_eq!(
            call_each(&postcard::to_stdvec(&1u32).unwrap(), panics),
            Reply::Panicked("no".into())
        );
        let Reply::Failed(chain) = call_each(&[], double) else {
            panic!("an empty item decoded");
        };
        assert!(chain[0].starts_with("cannot decode the item"), "{chain:?}");
    }
}
