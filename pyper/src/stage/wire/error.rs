//! [`RemoteError`]: a worker's error, as its messages, once it crossed to this process.

use std::fmt;

/// An error returned by a [`try_process_task!`](crate::try_process_task!)'s function in the worker process: its
/// message, and its source's, down the chain. The error value itself stays behind, since
/// its type cannot cross the process boundary.
///
/// ```
/// use std::error::Error;
/// use pyper::RemoteError;
///
/// let remote = RemoteError::new(["cannot open config", "permission denied"]);
/// assert_eq!(remote.to_string(), "cannot open config");
/// assert_eq!(remote.source().unwrap().to_string(), "permission denied");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteError {
    message: String,
    source: Option<Box<RemoteError>>,
}

impl RemoteError {
    /// An error with the messages of an error chain, outermost first. Pyper makes these
    /// itself; this constructor is for tests and for wrappers that mimic a process task.
    ///
    /// # Panics
    ///
    /// If `chain` is empty.
    pub fn new<S: Into<String>>(chain: impl IntoIterator<Item = S>) -> Self {
        let mut messages: Vec<String> = chain.into_iter().map(Into::into).collect();
        assert!(!messages.is_empty(), "an error has at least one message");
        let mut error = RemoteError {
            message: messages.pop().expect("checked above"),
            source: None,
        };
        while let Some(message) = messages.pop() {
            error = RemoteError {
                message,
                source: Some(Box::new(error)),
            };
        }
        error
    }

    /// The error a worker reported as `chain`, which a hostile or broken worker may send
    /// empty: then one that says so.
    pub(crate) fn from_worker(chain: Vec<String>) -> Self {
        match chain.is_empty() {
            true => RemoteError::new(["the worker reported an error without a message"]),
            false => RemoteError::new(chain),
        }
    }

    /// The error's own message (its `Display` in the worker).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}
