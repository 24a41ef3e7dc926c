//! What went wrong, and the exit code that says so to scripts.

use std::fmt;

/// Exit codes (also in `walletctl --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A check found something that does not hold (`audit`, `replay`).
    CheckFailed = 1,
    /// The command line or an argument is wrong (clap also exits with 2).
    Usage = 2,
    /// etcd, a node or the coordinator did not answer in time.
    Unreachable = 3,
    /// A node, partition, account or transfer that does not exist.
    NotFound = 4,
    /// The cluster is not in a state that allows it (a map exists, a node
    /// still owns partitions, the map changed underneath, a move is running).
    Conflict = 5,
    /// Anything else: a refusal or an answer that makes no sense.
    Failed = 6,
}

#[derive(Debug)]
pub struct CtlError {
    pub exit: Exit,
    pub message: String,
}

impl CtlError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        CtlError {
            exit,
            message: message.into(),
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

impl From<wallet_shared::map::MapError> for CtlError {
    fn from(e: wallet_shared::map::MapError) -> Self {
        use wallet_shared::map::MapError::*;
        let exit = match &e {
            Etcd(_) | Timeout(_) => Exit::Unreachable,
            Missing(_) => Exit::NotFound,
            AlreadyExists(_) | Changed(_) => Exit::Conflict,
            Invalid { .. } => Exit::Failed,
        };
        CtlError::new(exit, e.to_string())
    }
}

pub type CtlResult<T> = Result<T, CtlError>;

/// Shorthands for the common failures.
pub fn not_found(what: impl Into<String>) -> CtlError {
    CtlError::new(Exit::NotFound, what)
}

pub fn usage(what: impl Into<String>) -> CtlError {
    CtlError::new(Exit::Usage, what)
}

pub fn conflict(what: impl Into<String>) -> CtlError {
    CtlError::new(Exit::Conflict, what)
}
