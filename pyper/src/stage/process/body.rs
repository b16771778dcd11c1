//! [`ProcessFn`]: the parent side of a process task's function.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::protocol::Setup;
use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::func::EachFn;
use crate::stage::wire::codec;
use crate::stage::wire::registry::Registered;

/// The body of a process task calling the registered `function` in the worker processes,
/// or why it cannot (an entry made outside the table).
pub(crate) fn body<I, O>(function: &'static Registered) -> Result<ProcessFn<I, O>, String>
where
    I: Serialize + Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    Ok(ProcessFn {
        setup: Arc::new(Setup {
            function: function.reference()?,
        }),
        encode: encode::<I>,
        decode: Arc::new(|bytes: Vec<u8>, out: &mut dyn Emit<O>| {
            let output: O = postcard::from_bytes(&bytes).map_err(|error| {
                Fault::Failed(format!("cannot decode the worker's output: {error}").into())
            })?;
            out.emit(output).map_err(Fault::from)
        }),
    })
}

fn encode<I: Serialize>(item: &I) -> Result<Vec<u8>, BoxError> {
    codec::encode(item, "the item").map_err(BoxError::from)
}

/// The parent side of a process task's function: where the worker finds it, and how its
/// items and outputs cross.
pub(crate) struct ProcessFn<I, O> {
    pub(super) setup: Arc<Setup>,
    pub(super) encode: fn(&I) -> Result<Vec<u8>, BoxError>,
    /// Decodes one output and hands it on, through `branch` and the like.
    pub(crate) decode: EachFn<Vec<u8>, O>,
}

impl<I, O> ProcessFn<I, O> {
    /// The same function with another output decoder.
    pub(crate) fn with_decode<P>(self, decode: EachFn<Vec<u8>, P>) -> ProcessFn<I, P> {
        ProcessFn {
            setup: self.setup,
            encode: self.encode,
            decode,
        }
    }
}

impl<I, O> Clone for ProcessFn<I, O> {
    fn clone(&self) -> Self {
        ProcessFn {
            setup: Arc::clone(&self.setup),
            encode: self.encode,
            decode: Arc::clone(&self.decode),
        }
    }
}
