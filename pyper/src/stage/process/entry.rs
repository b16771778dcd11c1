//! Finding a function again in a worker process: the crate's only `unsafe` code.
//!
//! A function pointer cannot be sent to another process, but the worker is the same
//! executable, so each function sits at the same distance from any other one. The parent
//! sends a function's [`Code`]: its offset from [`anchor`], and the identity of its type
//! (a hash of its [`TypeId`]). The worker adds the offset to its own address of `anchor`
//! ([`resolve`]), after checking that the distance between `anchor` and [`landmark`] is the
//! same on both sides (the same executable) and that the type asked for is the one that was
//! sent.

use std::any::TypeId;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

/// Where a function is, relative to [`anchor`], and the identity of its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Code {
    offset: i64,
    signature: u64,
}

impl Code {
    /// The code of `f`, a function of type `fn(A) -> R`.
    pub(crate) fn of<A: 'static, R: 'static>(f: fn(A) -> R) -> Code {
        Code {
            offset: (f as usize).wrapping_sub(anchor_address()) as i64,
            signature: signature::<A, R>(),
        }
    }
}

/// The distance from [`anchor`] to [`landmark`]: the same in two processes only if they
/// run the same executable.
pub(crate) fn fingerprint() -> i64 {
    (landmark as fn() -> u64 as usize).wrapping_sub(anchor_address()) as i64
}

/// The identity of the type `fn(A) -> R`: a hash of its [`TypeId`], which differs between
/// any two types (unlike `type_name`: two types defined in two blocks of one function share
/// a name). A `TypeId` has no portable bytes to send, but it is fixed when the executable
/// is compiled, and it is only ever compared within one executable, so hashing it with
/// `DefaultHasher::new`'s fixed keys gives the same number in both processes.
fn signature<A: 'static, R: 'static>() -> u64 {
    let mut hasher = DefaultHasher::new();
    TypeId::of::<fn(A) -> R>().hash(&mut hasher);
    hasher.finish()
}

fn anchor_address() -> usize {
    anchor as fn() -> u64 as usize
}

/// The point every offset is measured from. Never called; its body only differs from
/// [`landmark`]'s so the two cannot be merged into one function.
#[inline(never)]
fn anchor() -> u64 {
    std::hint::black_box(0x5059_5045_5241)
}

/// The second point of the executable's [`fingerprint`].
#[inline(never)]
fn landmark() -> u64 {
    std::hint::black_box(0x4c41_4e44_4d41)
}

/// Turns `code`, sent by the parent process, back into a function pointer of type
/// `fn(A) -> R`, or says why it cannot.
#[allow(unsafe_code)]
pub(crate) fn resolve<A: 'static, R: 'static>(
    code: Code,
    parent_fingerprint: i64,
) -> Result<fn(A) -> R, String> {
    if parent_fingerprint != fingerprint() {
        return Err("the worker process is not running the parent's executable \
                    (was the file replaced while the program ran?)"
            .into());
    }
    if code.signature != signature::<A, R>() {
        return Err(format!(
            "the function sent by the parent is not a `{}`",
            std::any::type_name::<fn(A) -> R>()
        ));
    }
    let address = anchor_address().wrapping_add(code.offset as usize);
    if address == 0 {
        return Err("the function sent by the parent has a null address".into());
    }
    // SAFETY: `address` is the address of a function of type `fn(A) -> R` in this process:
    //
    // * The parent computed `code` with `Code::of` from a valid `fn(A) -> R` (a function
    //   pointer, so a function that exists for the whole run of the program), as its
    //   address minus the parent's address of `anchor`.
    // * This process runs the same executable file: the parent starts it from
    //   `/proc/self/exe` (the very inode the parent runs, even if the path was replaced
    //   since), or from `current_exe()` where there is no `/proc`; and the fingerprint
    //   check above confirms the layout is the same (the distance between two of this
    //   crate's functions). The code of one executable is mapped as one block, moved as a
    //   whole by address-space randomisation, so the distance from `anchor` to the
    //   function is the same in both processes, and adding it to our `anchor` gives the
    //   function's address here. This holds when the function and pyper are linked into
    //   the executable, which is how Rust links crates (pyper built as a `dylib` is not
    //   supported, and the module docs say so).
    // * The signature check above confirms that the parent's function has exactly the type
    //   `fn(A) -> R` asked for here: `Code::of::<A, R>` can only be given a `fn(A) -> R`,
    //   and it records the hash of that type's `TypeId`, which equals the hash of our own
    //   `TypeId::of::<fn(A) -> R>()` only for the same type (the same executable computes
    //   the same `TypeId`s and the same hashes; two distinct types of one program agreeing
    //   in all 64 bits is as unlikely as a `TypeId` collision itself). So the pointer is
    //   called with the arguments and ABI its function was compiled for.
    // * A function pointer and a `usize` have the same size on every target Rust supports
    //   (`transmute` would not compile otherwise), and the address is not null.
    Ok(unsafe { std::mem::transmute::<usize, fn(A) -> R>(address) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn a_code_resolves_to_the_same_function() {
        let code = Code::of(double as fn(u32) -> u32);
        let f = resolve::<u32, u32>(code, fingerprint()).unwrap();
        assert_eq!(f(21), 42);
    }

    #[test]
    fn a_wrong_signature_or_executable_is_refused() {
        let code = Code::of(double as fn(u32) -> u32);
        let err = resolve::<u64, u32>(code, fingerprint()).unwrap_err();
        assert!(err.contains("fn(u64) -> u32"), "{err}");
        let err = resolve::<u32, u32>(code, fingerprint() + 16).unwrap_err();
        assert!(err.contains("executable"), "{err}");
    }

    #[test]
    fn a_type_of_the_same_name_is_another_type() {
        // Two types whose `type_name` is the same: `...::tests::...::Same`.
        let (code, name) = {
            struct Same(u32);
            let read: fn(Same) -> u32 = |same| same.0;
            (Code::of(read), std::any::type_name::<fn(Same) -> u32>())
        };
        struct Same(#[allow(dead_code)] u64);
        assert_eq!(name, std::any::type_name::<fn(Same) -> u32>());
        let err = resolve::<Same, u32>(code, fingerprint()).unwrap_err();
        assert!(err.contains("is not a"), "{err}");
    }
}
