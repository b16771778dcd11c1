//! The coordinator's side of a remote task's function: the cluster it runs on, the
//! registered function workers call, and how its items and outputs cross.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cluster::Cluster;
use super::setup::Callee;
use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::func::EachFn;
use crate::stage::wire::codec;
use crate::stage::wire::registry::Registered;
use crate::stage::wire::RemoteError;

/// The coordinator's side of a remote task's function: where workers find it, the
/// cluster it runs on, and how its items and outputs cross.
pub(crate) struct RemoteFn<I, O> {
    pub(super) cluster: Cluster,
    pub(super) function: Callee,
    pub(super) encode: fn(&I) -> Result<Vec<u8>, BoxError>,
    /// Decodes one output and hands it on, through `branch` and the like.
    pub(crate) decode: EachFn<Vec<u8>, O>,
    /// The error an exception raised in a worker stands for here (Python's, unpickled),
    /// from its messages and its encoding.
    pub(super) raised: fn(Vec<String>, Vec<u8>) -> BoxError,
}

/// A raised exception as a Rust program sees it: its messages (it cannot be decoded).
pub(super) fn raised_messages(chain: Vec<String>, _exception: Vec<u8>) -> BoxError {
    Box::new(RemoteError::from_worker(chain))
}

/// The body of a remote task calling the registered `function` on the cluster's workers,
/// or why it cannot (an entry made outside the table).
pub(crate) fn body<I, O>(
    cluster: &Cluster,
    function: &'static Registered,
) -> Result<RemoteFn<I, O>, String>
where
    I: Serialize + Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    Ok(RemoteFn {
        cluster: cluster.clone(),
        function: Callee::Registered(function.reference()?),
        encode: |item| codec::encode(item, "the item").map_err(BoxError::from),
        decode: Arc::new(|bytes: Vec<u8>, out: &mut dyn Emit<O>| {
            let output: O = postcard::from_bytes(&bytes).map_err(|error| {
                Fault::Failed(format!("cannot decode the worker's output: {error}").into())
            })?;
            out.emit(output).map_err(Fault::from)
        }),
        raised: raised_messages,
    })
}

impl<I, O> RemoteFn<I, O> {
    /// The same function with another output decoder.
    pub(crate) fn with_decode<P>(self, decode: EachFn<Vec<u8>, P>) -> RemoteFn<I, P> {
        RemoteFn {
            cluster: self.cluster,
            function: self.function,
            encode: self.encode,
            decode,
            raised: self.raised,
        }
    }
}

impl<I, O> Clone for RemoteFn<I, O> {
    fn clone(&self) -> Self {
        RemoteFn {
            cluster: self.cluster.clone(),
            function: self.function.clone(),
            encode: self.encode,
            decode: Arc::clone(&self.decode),
            raised: self.raised,
        }
    }
}
