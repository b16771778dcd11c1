//! Which build of the program a process runs: the fingerprint a remote run carries, so
//! that a worker of another build (an old worker beside a new coordinator in a rolling
//! deploy) ignores the run instead of taking its items.
//!
//! The fingerprint covers everything that was linked, not only pyper: the executable's
//! ELF build id (`.note.gnu.build-id`, a hash the linker computes over the whole output),
//! or, where the executable has none, a SHA-256 of the whole file, which is never weaker.
//! It is computed once per process, and only by processes that run or serve remote tasks.

use std::fs::File;
use std::io::{self, Seek};
use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// This process's build, as `build-id:<hex>` or `sha256:<hex>`, or why it cannot be told.
pub(crate) fn fingerprint() -> Result<&'static str, String> {
    static FINGERPRINT: OnceLock<Result<String, String>> = OnceLock::new();
    FINGERPRINT
        .get_or_init(|| {
            let path = executable();
            of_file(&path).map_err(|error| {
                format!(
                    "cannot read this program's executable {} to tell its build: {error}",
                    path.display()
                )
            })
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// The running executable: `/proc/self/exe` (the very file, even if its path was replaced
/// since), or `current_exe()` where there is no `/proc`.
fn executable() -> PathBuf {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe;
    }
    std::env::current_exe().unwrap_or(proc_exe)
}

/// The fingerprint of the executable at `path`.
fn of_file(path: &std::path::Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    if let Some(id) = build_id(&file) {
        return Ok(format!("build-id:{}", hex(&id)));
    }
    // Looking for the id moved the file's position.
    file.seek(io::SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// The ELF build id of `file`, if it is an ELF file that has one. Only the headers and
/// the note are read, not the whole file.
fn build_id(file: &File) -> Option<Vec<u8>> {
    use object::Object;
    let cache = object::ReadCache::new(file);
    let parsed = object::File::parse(&cache).ok()?;
    let id = parsed.build_id().ok().flatten()?;
    // An empty id would make every such build look the same.
    (!id.is_empty()).then(|| id.to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_executable_has_a_fingerprint_that_stays_the_same() {
        let first = fingerprint().unwrap();
        assert!(
            first.starts_with("build-id:") || first.starts_with("sha256:"),
            "{first}"
        );
        assert_eq!(fingerprint().unwrap(), first);
    }

    #[test]
    fn a_file_without_a_build_id_is_hashed_whole() {
        let path = std::env::temp_dir().join(format!("pyper-build-{}", std::process::id()));
        std::fs::write(&path, b"not an executable").unwrap();
        let fingerprint = of_file(&path);
        std::fs::write(&path, b"not an executable either").unwrap();
        let other = of_file(&path);
        std::fs::remove_file(&path).unwrap();
        let (fingerprint, other) = (fingerprint.unwrap(), other.unwrap());
        // `sha256sum` of the same bytes.
        assert_eq!(
            fingerprint,
            "sha256:110a2dfc6452c9ca98122f9eb2ff9db94b51b127f537432baf82f2744fbb90d6"
        );
        assert_ne!(
            fingerprint, other,
            "a different file, a different fingerprint"
        );
    }

    #[test]
    fn two_builds_differ_in_their_build_id() {
        // The same executable with one byte of its build id changed: what a rebuild of the
        // program with a change anywhere in it looks like to the check.
        let path = executable();
        let mut bytes = std::fs::read(&path).unwrap();
        let Some(id) = build_id(&File::open(&path).unwrap()) else {
            return; // no build id on this platform: the hash covers every byte anyway
        };
        let at = bytes
            .windows(id.len())
            .position(|window| window == id.as_slice())
            .unwrap();
        bytes[at] ^= 0xff;
        let copy = std::env::temp_dir().join(format!("pyper-rebuilt-{}", std::process::id()));
        std::fs::write(&copy, &bytes).unwrap();
        let rebuilt = of_file(&copy);
        std::fs::remove_file(&copy).unwrap();
        let rebuilt = rebuilt.unwrap();
        assert!(rebuilt.starts_with("build-id:"), "{rebuilt}");
        assert_ne!(rebuilt, fingerprint().unwrap());
    }
}
