//! Bound listeners (TCP and Unix sockets) for [`ListenAddr`]s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

pub use crate::addr::ListenAddr;

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed at shutdown.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds an address. A stale socket file left by a crashed run is
    /// replaced; any other file at that path is an error. A Unix socket gets
    /// the permission bits `unix_mode` (e.g. 0o660).
    pub async fn bind(addr: &ListenAddr, unix_mode: u32) -> std::io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(TcpListener::bind(a.as_str()).await?)),
            ListenAddr::Unix(path) => {
                // File system calls: off the async workers.
                let (path, p) = (path.clone(), path.clone());
                let std = tokio::task::spawn_blocking(move || bind_unix(&p, unix_mode))
                    .await
                    .map_err(std::io::Error::other)??;
                Ok(Listener::Unix(UnixListener::from_std(std)?, path))
            }
        }
    }

    /// The address actually bound (with the real port for `:0`).
    pub fn local_addr(&self) -> ListenAddr {
        match self {
            Listener::Tcp(l) => ListenAddr::Tcp(
                l.local_addr()
                    .map(|a: SocketAddr| a.to_string())
                    .unwrap_or_default(),
            ),
            Listener::Unix(_, p) => ListenAddr::Unix(p.clone()),
        }
    }
}

/// Binds a Unix socket at `path` (blocking), replacing a stale socket file.
fn bind_unix(path: &Path, unix_mode: u32) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        // Refuse to steal the socket of a meterd that is running.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix_mode))?;
    Ok(listener)
}
