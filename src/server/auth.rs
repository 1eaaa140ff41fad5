//! Bearer-token authentication: `authorization: Bearer <token>` metadata,
//! checked in constant time against the tokens of a file (one per line,
//! blank lines and `#` comments ignored), re-read on SIGHUP.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::metrics::{code_name, metrics, RpcLabels};

/// The token check; with no token file every call passes. Clones share the
/// same tokens. Safe for concurrent use.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Option<Arc<Tokens>>,
}

struct Tokens {
    path: PathBuf,
    current: RwLock<Vec<Vec<u8>>>,
}

impl Auth {
    /// No authentication.
    pub fn none() -> Auth {
        Auth::default()
    }

    /// Reads the token file; it must hold at least one token.
    pub fn from_file(path: PathBuf) -> Result<Auth, String> {
        let tokens = read(&path)?;
        Ok(Auth {
            tokens: Some(Arc::new(Tokens {
                path,
                current: RwLock::new(tokens),
            })),
        })
    }

    /// Re-reads the token file; on error the previous tokens stay.
    pub fn reload(&self) -> Result<(), String> {
        if let Some(t) = &self.tokens {
            let fresh = read(&t.path)?;
            *t.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// Passes the request when its bearer token is one of the tokens.
    /// The token itself never reaches logs or error messages.
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(req);
        };
        let presented = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let Some(presented) = presented else {
            return Err(refuse(
                &req,
                "missing bearer token (authorization: Bearer <token>)",
            ));
        };
        let known = tokens.current.read().unwrap_or_else(|e| e.into_inner());
        // Compare against every token, without stopping early.
        let mut ok = subtle::Choice::from(0);
        for t in known.iter() {
            ok |= t.as_slice().ct_eq(presented.trim().as_bytes());
        }
        if bool::from(ok) {
            Ok(req)
        } else {
            Err(refuse(&req, "invalid bearer token"))
        }
    }
}

fn refuse(req: &Request<()>, why: &str) -> Status {
    let rpc = req
        .extensions()
        .get::<tonic::GrpcMethod>()
        .map_or("unknown", |m| m.method());
    metrics()
        .requests
        .get_or_create(&RpcLabels {
            rpc: static_rpc(rpc),
            code: code_name(tonic::Code::Unauthenticated),
        })
        .inc();
    // Once per episode, with counts: a client looping on a bad token must
    // not fill the log.
    static REFUSED: super::quiet::Quiet = super::quiet::Quiet::new("bad or missing token");
    REFUSED.refused(&format_args!("{rpc}: {why}"));
    super::status::unauthenticated(why)
}

/// Label values must be static: known methods map to themselves.
fn static_rpc(name: &str) -> &'static str {
    match name {
        "Emit" => "Emit",
        "EmitBatch" => "EmitBatch",
        "SubmitBatch" => "SubmitBatch",
        "Check" => "Check",
        "Watch" => "Watch",
        "ServerReflectionInfo" => "ServerReflectionInfo",
        _ => "other",
    }
}

fn read(path: &PathBuf) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--auth-token-file {}: {e}", path.display()))?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        return Err(format!(
            "--auth-token-file {}: holds no token",
            path.display()
        ));
    }
    Ok(tokens)
}
