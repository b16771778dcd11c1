//! Async tasks.
