//! `grpc=` targets as users write them: `HOST:PORT`, `http://HOST:PORT`,
//! `https://HOST:PORT` and `unix:/path` (also `unix:///path`). Anything that
//! cannot work is refused when the configuration is checked, with the
//! reason, rather than failing on every delivery attempt later.

use std::path::PathBuf;
use std::str::FromStr;

/// Where a `grpc` sink connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Plaintext HTTP/2 to `HOST:PORT`.
    Tcp(String),
    /// TLS to `HOST:PORT`; the certificate must name `host`.
    Tls { authority: String, host: String },
    /// A Unix socket.
    Unix(PathBuf),
}

const FORMS: &str = "use HOST:PORT, http://HOST:PORT, https://HOST:PORT or unix:/path";

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("unix:") {
            // unix:///path is the gRPC URI form of unix:/path.
            let path = match rest.strip_prefix("//") {
                Some(p) if p.starts_with('/') => p,
                Some(_) => return Err(format!("{s:?}: unix:// must be followed by an absolute path, e.g. unix:///run/meterd.sock")),
                None => rest,
            };
            if path.is_empty() {
                return Err(format!(
                    "{s:?}: unix: needs a socket path, e.g. unix:/run/meterd.sock"
                ));
            }
            return Ok(Target::Unix(path.into()));
        }
        let (tls, authority) = match s.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => return Err(format!("{s:?}: unknown scheme {scheme:?}; {FORMS}")),
            None => (false, s),
        };
        // A trailing slash is harmless; a path, query or user is not
        // something a gRPC channel can use.
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{s:?}: a gRPC target has only a host and a port; {FORMS}"
            ));
        }
        let host = host_of(authority).map_err(|e| format!("{s:?}: {e}; {FORMS}"))?;
        Ok(if tls {
            Target::Tls {
                authority: authority.to_owned(),
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            }
        } else {
            Target::Tcp(authority.to_owned())
        })
    }
}

/// The host of `HOST:PORT`, checked.
fn host_of(authority: &str) -> Result<&str, String> {
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err("missing port".into());
    };
    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(format!("{port:?} is not a port"));
    }
    if host.is_empty() {
        return Err("missing host".into());
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err("an IPv6 address needs brackets, e.g. [::1]:50051".into());
    }
    if !bracketed
        && host.contains(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok(host)
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => f.write_str(a),
            Target::Tls { authority, .. } => write!(f, "https://{authority}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_users_write() {
        let tcp = |a: &str| Some(Target::Tcp(a.into()));
        let tls = |a: &str, h: &str| {
            Some(Target::Tls {
                authority: a.into(),
                host: h.into(),
            })
        };
        let unix = |p: &str| Some(Target::Unix(p.into()));
        // None: refused, with a message that quotes the target.
        let table: &[(&str, Option<Target>)] = &[
            ("127.0.0.1:50052", tcp("127.0.0.1:50052")),
            ("http://127.0.0.1:50052", tcp("127.0.0.1:50052")),
            ("http://agg.internal:50052/", tcp("agg.internal:50052")),
            ("[::1]:50052", tcp("[::1]:50052")),
            (
                "https://agg.example:443",
                tls("agg.example:443", "agg.example"),
            ),
            ("https://[::1]:8443", tls("[::1]:8443", "::1")),
            ("unix:/run/meterd.sock", unix("/run/meterd.sock")),
            ("unix:///run/meterd.sock", unix("/run/meterd.sock")),
            ("unix:meterd.sock", unix("meterd.sock")),
            ("unix:", None),
            ("unix://", None),
            ("unix://host/path", None),
            ("ftp://127.0.0.1:21", None),
            ("tcp://127.0.0.1:50052", None),
            ("grpc://127.0.0.1:50052", None),
            ("127.0.0.1", None),
            ("http://127.0.0.1", None),
            ("https://agg.example", None),
            ("http://127.0.0.1:0", None),
            ("http://127.0.0.1:99999", None),
            ("http://:50052", None),
            ("http://127.0.0.1:50052/metering", None),
            ("http://user@127.0.0.1:50052", None),
            ("::1:50052", None),
            ("host name:50052", None),
        ];
        for (input, want) in table {
            let got = input.parse::<Target>();
            match (want, &got) {
                (Some(t), Ok(g)) => assert_eq!(t, g, "{input}"),
                (None, Err(e)) => assert!(e.contains(input), "{input}: {e}"),
                _ => panic!("{input}: got {got:?}"),
            }
        }
    }
}
