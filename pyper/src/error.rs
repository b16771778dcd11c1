//! The one error type a run reports: which stage, which item, and the original cause.

use std::any::Any;
use std::fmt;

/// A boxed error from user code, as a fallible task may return it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, without the details. New kinds may be added.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A fallible task returned an error; [`std::error::Error::source`] gives it back.
    Failed,
    /// User code panicked; [`Error::panic_message`] gives the message.
    Panicked,
    /// The pipeline was configured wrongly. Found before any worker starts.
    Config,
}

/// Why a run failed: the stage, the item where known, and the original error or panic.
///
/// The first failure *in time* anywhere in the pipeline is the one reported, and the
/// run stops everywhere before it reaches you.
///
/// Following the Rust error-handling guidelines, `Display` names the stage and the item
/// but leaves the cause to [`source()`](std::error::Error::source), so a reporter that walks
/// the chain (`anyhow`'s `{:#}`, for one) prints each part once. The alternate form, `{:#}`,
/// appends the whole chain itself, for a one-line report. A panic has no error value, so
/// its message is part of `Display`.
///
/// ```
/// use pyper::{try_task, ErrorKind};
///
/// let parse = try_task(|s: &'static str| s.parse::<u32>()).name("parse");
/// let err = parse.run("forty-two").next().unwrap().unwrap_err();
///
/// assert_eq!(err.kind(), ErrorKind::Failed);
/// assert_eq!(err.stage(), Some("parse"));
/// assert_eq!(err.item(), Some(0));
/// assert_eq!(err.to_string(), "stage `parse` failed on item 0");
/// assert_eq!(format!("{err:#}"), "stage `parse` failed on item 0: invalid digit found in string");
/// assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
/// ```
#[derive(Debug)]
pub struct Error {
    stage: Option<String>,
    item: Option<u64>,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Failed(BoxError),
    Panicked(String),
    Config(String),
}

impl Error {
    pub(crate) fn failed(stage: &str, item: Option<u64>, error: BoxError) -> Self {
        Error {
            stage: Some(stage.to_owned()),
            item,
            cause: Cause::Failed(error),
        }
    }

    pub(crate) fn panicked(stage: &str, item: Option<u64>, payload: Box<dyn Any + Send>) -> Self {
        Error {
            stage: Some(stage.to_owned()),
            item,
            cause: Cause::Panicked(panic_message(payload.as_ref())),
        }
    }

    pub(crate) fn config(stage: Option<&str>, message: impl Into<String>) -> Self {
        Error {
            stage: stage.map(str::to_owned),
            item: None,
            cause: Cause::Config(message.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self.cause {
            Cause::Failed(_) => ErrorKind::Failed,
            Cause::Panicked(_) => ErrorKind::Panicked,
            Cause::Config(_) => ErrorKind::Config,
        }
    }

    /// The name of the stage that failed, if the failure belongs to one.
    pub fn stage(&self) -> Option<&str> {
        self.stage.as_deref()
    }

    /// The position of the failing item in the failing stage's input stream, counting
    /// from 0, where it is known.
    ///
    /// It is known for items a task was called with, and for a panic of the input
    /// iterator, where it is the position of the input being produced. It is not known for
    /// a `join` task, which receives the whole stream at once.
    pub fn item(&self) -> Option<u64> {
        self.item
    }

    /// The panic message, when user code panicked.
    ///
    /// ```
    /// use pyper::task;
    ///
    /// let boom = task(|x: u32| if x == 3 { panic!("bad item {x}") } else { x });
    /// let err = boom.feed(0..10).find_map(Result::err).unwrap();
    /// assert_eq!(err.panic_message(), Some("bad item 3"));
    /// ```
    pub fn panic_message(&self) -> Option<&str> {
        match &self.cause {
            Cause::Panicked(message) => Some(message),
            _ => None,
        }
    }

    /// The user's error, if a fallible task returned one and it is of type `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match &self.cause {
            Cause::Failed(error) => error.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Takes the user's error out, if a fallible task returned one.
    pub fn into_source(self) -> Option<BoxError> {
        match self.cause {
            Cause::Failed(error) => Some(error),
            _ => None,
        }
    }
}

/// The message a panic carried: its `&str` or `String`, else `Box<dyn Any>`.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Cause::Config(message) = &self.cause {
            f.write_str("invalid pipeline configuration")?;
            if let Some(stage) = &self.stage {
                write!(f, " in stage `{stage}`")?;
            }
            return write!(f, ": {message}");
        }
        let stage = self.stage.as_deref().unwrap_or("?");
        match &self.cause {
            Cause::Panicked(_) => write!(f, "stage `{stage}` panicked")?,
            _ => write!(f, "stage `{stage}` failed")?,
        }
        if let Some(item) = self.item {
            write!(f, " on item {item}")?;
        }
        match &self.cause {
            Cause::Panicked(message) => write!(f, ": {message}")?,
            // `{:#}` adds the causes, for a one-line report without walking `source()`.
            Cause::Failed(error) if f.alternate() => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
                while let Some(error) = cause {
                    write!(f, ": {error}")?;
                    cause = error.source();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Failed(error) => Some(&**error),
            _ => None,
        }
    }
}
