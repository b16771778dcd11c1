//! The functions a worker process may call: those the program registered, and no others.
//!
//! `process_task!`, `remote_task!` and their `try_` forms each put one [`Registered`]
//! entry, where they are written, into [`FUNCTIONS`], a table the linker gathers from the
//! whole program (a `linkme` distributed slice: no code runs to fill it, so a worker that
//! never reaches the line that built the task has the same table). An entry is the
//! function's name and a call of it on one encoded item, monomorphised for its types.
//!
//! A message from the parent or the network names a function as a [`FunctionRef`]: its
//! index in the table and its name. A worker calls the entry at that index only if the
//! index is in range and the name is the one there ([`lookup`]); anything else is refused
//! with a message that says why. No address or offset ever crosses, so no message can make
//! a worker jump anywhere but to the start of a function the program registered, called
//! with bytes that its own `Deserialize` checks. The table is the same in two processes
//! only if they run the same build, which a remote run checks first (`remote/build.rs`);
//! a process stage's workers run the parent's own executable.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Reply;

/// A function that a process or remote task may run in a worker: an entry of
/// [`FUNCTIONS`]. Made by the task macros; not for direct use.
#[doc(hidden)]
pub struct Registered {
    name: &'static str,
    call: fn(&[u8]) -> Reply,
}

impl Registered {
    /// An entry for the function called `name`, run on one encoded item by `call`.
    pub const fn new(name: &'static str, call: fn(&[u8]) -> Reply) -> Self {
        Registered { name, call }
    }

    /// Runs the function on one encoded item.
    pub(crate) fn call(&self, item: &[u8]) -> Reply {
        (self.call)(item)
    }

    /// How a message names this entry, or why it cannot: an entry made outside the table.
    pub(crate) fn reference(&'static self) -> Result<FunctionRef, String> {
        let index = FUNCTIONS
            .iter()
            .position(|entry| std::ptr::eq(entry, self))
            .ok_or_else(|| {
                format!(
                    "the function `{}` is not registered: build process and remote tasks \
                     with the `process_task!` and `remote_task!` macros",
                    self.name
                )
            })?;
        Ok(FunctionRef {
            index: index as u32,
            name: self.name.to_owned(),
        })
    }
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("name", &self.name)
            .finish()
    }
}

/// Every function the program registered for process or remote use.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static FUNCTIONS: [Registered];

/// A registered function as a message names it: its place in [`FUNCTIONS`] and its name,
/// which must agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FunctionRef {
    pub(crate) index: u32,
    pub(crate) name: String,
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "function #{} `{}`", self.index, self.name)
    }
}

/// The registered function `reference` names, or why there is none: an index out of the
/// table, or a name that is not the one at that index.
pub(crate) fn lookup(reference: &FunctionRef) -> Result<&'static Registered, String> {
    let entry = usize::try_from(reference.index)
        .ok()
        .and_then(|index| FUNCTIONS.get(index))
        .ok_or_else(|| {
            format!(
                "refused {reference}: this program registered {} functions",
                FUNCTIONS.len()
            )
        })?;
    if entry.name != reference.name {
        return Err(format!(
            "refused {reference}: the function registered there is `{}`",
            entry.name
        ));
    }
    Ok(entry)
}

/// Registers `$function` (a path to a function, or a closure that captures nothing) with
/// `$call` as its call on an item, and gives the `&'static Registered` entry.
#[doc(hidden)]
#[macro_export]
macro_rules! __register {
    // One body for both forms: whatever was matched, it is forwarded as one token tree.
    (@entry $call:path, $function:tt) => {{
        #[$crate::__private::linkme::distributed_slice($crate::__private::FUNCTIONS)]
        #[linkme(crate = $crate::__private::linkme)]
        // linkme puts the entry in a link section, which the lint counts as unsafe code.
        #[allow(unsafe_code)]
        static FUNCTION: $crate::__private::Registered = $crate::__private::Registered::new(
            concat!(module_path!(), "::", stringify!($function)),
            |item| $call(item, $function),
        );
        &FUNCTION
    }};
    // A path forwarded from another macro is opaque: it matches `path`, never `expr`.
    (@path $call:path, $function:path) => {
        $crate::__register!(@entry $call, $function)
    };
    ($call:path, $function:expr) => {
        $crate::__register!(@entry $call, $function)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple(x: u64) -> u64 {
        x * 3
    }

    #[test]
    fn a_registered_function_is_found_by_its_reference() {
        #[linkme::distributed_slice(FUNCTIONS)]
        #[allow(unsafe_code)] // linkme's link section, as in `__register!`
        static TRIPLE: Registered = Registered::new("tests::triple", |item| {
            super::super::call_each(item, triple)
        });
        let entry: &'static Registered = &TRIPLE;
        let reference = entry.reference().unwrap();
        assert!(reference.name.ends_with("::triple"), "{reference}");
        let found = lookup(&reference).unwrap();
        assert!(std::ptr::eq(found, entry));
        let item = postcard::to_stdvec(&5u64).unwrap();
        assert_eq!(
            found.call(&item),
            Reply::Done(postcard::to_stdvec(&15u64).unwrap())
        );
    }

    #[test]
    fn a_wrong_index_or_name_is_refused() {
        #[linkme::distributed_slice(FUNCTIONS)]
        #[allow(unsafe_code)] // linkme's link section, as in `__register!`
        static SAME: Registered = Registered::new("tests::same", |item| {
            super::super::call_each(item, |x: u8| x)
        });
        let entry: &'static Registered = &SAME;
        let mut reference = entry.reference().unwrap();
        reference.index = u32::MAX;
        let error = lookup(&reference).unwrap_err();
        assert!(error.contains("registered"), "{error}");
        reference = entry.reference().unwrap();
        reference.name = "std::process::exit".into();
        let error = lookup(&reference).unwrap_err();
        assert!(
            error.contains("the function registered there is"),
            "{error}"
        );
    }

    #[test]
    fn an_entry_outside_the_table_has_no_reference() {
        static LOOSE: Registered = Registered::new("loose", |_| Reply::Panicked(String::new()));
        let error = LOOSE.reference().unwrap_err();
        assert!(error.contains("not registered"), "{error}");
    }
}
