//! The socket between a process stage's worker thread and its worker process: an address
//! only this run makes, bound by the parent and connected to by the child.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};

/// Binds a listener at a fresh address, and returns the address in the form [`connect`]
/// takes: `@name` for a Linux abstract socket, a path otherwise (a socket file in a new
/// directory that only this user may enter).
pub(super) fn listen(unique: &str) -> io::Result<(UnixListener, OsString)> {
    let name = format!("pyper-{}-{unique}", std::process::id());
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&address)?;
        Ok((listener, format!("@{name}").into()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::os::unix::fs::DirBuilderExt;
        let directory = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&directory)?;
        let path = directory.join("socket");
        let listener = UnixListener::bind(&path)?;
        Ok((listener, path.into_os_string()))
    }
}

/// Removes what [`listen`] left in the file system, if anything.
pub(super) fn unlisten(_address: &OsStr) {
    #[cfg(not(target_os = "linux"))]
    {
        let path = std::path::Path::new(_address);
        let _ = std::fs::remove_file(path);
        if let Some(directory) = path.parent() {
            let _ = std::fs::remove_dir(directory);
        }
    }
}

/// Connects to an address made by [`listen`].
pub(super) fn connect(address: &OsStr) -> io::Result<UnixStream> {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        if let Some(name) = address.as_bytes().strip_prefix(b"@") {
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            return UnixStream::connect_addr(&address);
        }
    }
    UnixStream::connect(address)
}
