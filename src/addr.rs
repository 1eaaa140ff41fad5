//! Addresses users write for a gRPC endpoint: `HOST:PORT` or `unix:/path`.
//! Used by the server's listeners and by the client commands, so it lives
//! below both.

use std::path::PathBuf;
use std::str::FromStr;

/// Where to listen: `HOST:PORT` or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a socket path, e.g. unix:/run/meterd.sock".into()),
            Some(path) => Ok(ListenAddr::Unix(path.into())),
            None if s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Ok(ListenAddr::Tcp(s.into()))
            }
            None => Err(format!("{s:?} is neither HOST:PORT nor unix:/path")),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
