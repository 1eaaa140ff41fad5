//! Bearer-token authentication: `authorization: Bearer <token>` metadata,
//! checked in constant time against the tokens of a file (one per line,
//! blank lines and `#` comments ignored), re-read on SIGHUP.
//!
//! Writers (`--auth-token-file`, for `MeteringService`) and readers
//! (`--reader-token-file`, for `LedgerService`) hold different tokens, so
//! that a hypervisor's credential cannot read the ledger (batch credentials
//! included) and a billing job's cannot write to it. [`Access`] decides,
//! per service, which tokens open it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::metrics::{code_name, metrics, RpcLabels};

/// One token file; with no file every call passes. Clones share the same
/// tokens. Safe for concurrent use.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Option<Arc<Tokens>>,
}

struct Tokens {
    path: PathBuf,
    /// The flag that named the file, for messages.
    flag: &'static str,
    current: RwLock<Vec<Vec<u8>>>,
}

impl Auth {
    /// No authentication.
    pub fn none() -> Auth {
        Auth::default()
    }

    /// Reads the writers' token file (`--auth-token-file`); it must hold at
    /// least one token.
    pub fn from_file(path: PathBuf) -> Result<Auth, String> {
        Auth::from_file_of("--auth-token-file", path)
    }

    /// Reads the token file given with `flag`; it must hold at least one token.
    pub fn from_file_of(flag: &'static str, path: PathBuf) -> Result<Auth, String> {
        let tokens = read(flag, &path)?;
        Ok(Auth {
            tokens: Some(Arc::new(Tokens {
                path,
                flag,
                current: RwLock::new(tokens),
            })),
        })
    }

    /// Re-reads the token file; on error the previous tokens stay.
    pub fn reload(&self) -> Result<(), String> {
        if let Some(t) = &self.tokens {
            let fresh = read(t.flag, &t.path)?;
            *t.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// Whether `presented` is one of the tokens, compared against every one
    /// of them in constant time.
    fn knows(&self, presented: &str) -> bool {
        let Some(tokens) = &self.tokens else {
            return false;
        };
        let known = tokens.current.read().unwrap_or_else(|e| e.into_inner());
        let mut ok = subtle::Choice::from(0);
        for t in known.iter() {
            ok |= t.as_slice().ct_eq(presented.trim().as_bytes());
        }
        bool::from(ok)
    }
}

/// Who a service is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `MeteringService`: writer tokens only.
    Writer,
    /// `LedgerService`: reader tokens only.
    Reader,
    /// Health and reflection under `--auth-all-services`: either kind.
    Any,
}

/// Writer and reader tokens, and who may call what. Clones share the tokens.
#[derive(Clone, Default)]
pub struct Access {
    pub writers: Auth,
    pub readers: Auth,
}

impl Access {
    /// Whether any token is required anywhere.
    pub fn enabled(&self) -> bool {
        self.writers.enabled() || self.readers.enabled()
    }

    /// Passes the request when its bearer token opens a service for `role`:
    /// - with no tokens configured at all, every call passes;
    /// - `Writer`: open while no writer tokens are configured; otherwise a
    ///   writer token, and a reader token is refused;
    /// - `Reader`: once any tokens are configured, only a reader token (with
    ///   writer tokens alone, the ledger stays closed: it holds credentials);
    /// - `Any`: a token of either kind.
    ///
    /// No token or an unknown one is `UNAUTHENTICATED`; a known token of the
    /// wrong kind is `PERMISSION_DENIED`. The token itself never reaches logs
    /// or error messages.
    pub fn check(&self, req: Request<()>, role: Role) -> Result<Request<()>, Status> {
        if !self.enabled() || (role == Role::Writer && !self.writers.enabled()) {
            return Ok(req);
        }
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        let Some(presented) = presented else {
            return Err(refuse(
                &req,
                tonic::Code::Unauthenticated,
                "missing bearer token (authorization: Bearer <token>)",
            ));
        };
        let (writer, reader) = (self.writers.knows(presented), self.readers.knows(presented));
        match (role, writer, reader) {
            (Role::Writer, true, _) | (Role::Reader, _, true) | (Role::Any, true, _) => Ok(req),
            (Role::Any, _, true) => Ok(req),
            (Role::Writer, false, true) => Err(refuse(
                &req,
                tonic::Code::PermissionDenied,
                "a reader token does not open metering.v1.MeteringService; use a token of --auth-token-file",
            )),
            (Role::Reader, true, false) => Err(refuse(
                &req,
                tonic::Code::PermissionDenied,
                if self.readers.enabled() {
                    "a writer token does not open metering.v1.LedgerService; use a token of --reader-token-file"
                } else {
                    "a writer token does not open metering.v1.LedgerService, and this server has no reader tokens (--reader-token-file)"
                },
            )),
            _ => Err(refuse(
                &req,
                tonic::Code::Unauthenticated,
                "invalid bearer token",
            )),
        }
    }
}

fn refuse(req: &Request<()>, code: tonic::Code, why: &str) -> Status {
    let rpc = req
        .extensions()
        .get::<tonic::GrpcMethod>()
        .map_or("unknown", |m| m.method());
    metrics()
        .requests
        .get_or_create(&RpcLabels {
            rpc: static_rpc(rpc),
            code: code_name(code),
        })
        .inc();
    // Once per episode, with counts: a client looping on a bad token must
    // not fill the log.
    static REFUSED: super::quiet::Quiet = super::quiet::Quiet::new("bad or missing token");
    REFUSED.refused(&format_args!("{rpc}: {why}"));
    super::status::refused(code, why)
}

/// Label values must be static: known methods map to themselves.
fn static_rpc(name: &str) -> &'static str {
    match name {
        "Emit" => "Emit",
        "EmitBatch" => "EmitBatch",
        "SubmitBatch" => "SubmitBatch",
        "Tail" => "Tail",
        "Usage" => "Usage",
        "Check" => "Check",
        "Watch" => "Watch",
        "ServerReflectionInfo" => "ServerReflectionInfo",
        _ => "other",
    }
}

fn read(flag: &str, path: &PathBuf) -> Result<Vec<Vec<u8>>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        return Err(format!("{flag} {}: holds no token", path.display()));
    }
    Ok(tokens)
}

/// The token of an `authorization` value `Bearer <token>`. The scheme is
/// case-insensitive and may be followed by several spaces (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
