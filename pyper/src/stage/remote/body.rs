//! The coordinator's side of a remote task's function: the cluster it runs on, the
//! registered function workers call, and how its items and outputs cross.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::cluster::Cluster;
use crate::engine::batch::{Emit, Fault};
use crate::engine::sync::Arc;
use crate::error::BoxError;
use crate::stage::func::EachFn;
use crate::stage::wire::codec;
use crate::stage::wire::registry::{FunctionRef, Registered};

/// The coordinator's side of a remote task's function: where workers find it, the
/// cluster it runs on, and how its items and outputs cross.
pub(crate) struct RemoteFn<I, O> {
    pub(super) cluster: Cluster,
    pub(super) function: FunctionRef,
    pub(super) encode: fn(&I) -> Result<Vec<u8>, BoxError>,
    /// Decodes one output and hands it on, through `branch` and the like.
    pub(crate) decode: EachFn<Vec<u8>, O>,
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
        function: function.reference()?,
        encode: |item| codec::encode(item, "the item").map_err(BoxError::from),
        decode: Arc::new(|bytes: Vec<u8>, out: &mut dyn Emit<O>| {
            let output: O = postcard::from_bytes(&bytes).map_err(|error| {
                Fault::Failed(format!("cannot decode the worker's output: {error}").into())
            })?;
            out.emit(output).map_err(Fault::from)
        }),
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
        }
    }
}
