//! What went wrong, by kind: one list for the simulation and the chaos
//! suite. Most kinds come from [`crate::check`] (the state at rest and the
//! history against it); a few only one side can see, and it reports them
//! itself (each says which).

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// What went wrong, by kind (reports count them by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    // ---- the state at rest --------------------------------------------------
    /// A read or a stored balance below zero (posted or available), or a
    /// negative hold or pending credit.
    NegativeBalance,
    /// A stored balance differs from the fold of its events.
    ReplayMismatch,
    /// An account's event sequence has a gap or a repeat.
    SeqGap,
    /// An account's event is stamped earlier than the one before it.
    EventTimeWentBack,
    /// A balance row or decision record stored on more than one node.
    DuplicateRow,
    /// Funds still held after settling.
    HeldLeft,
    /// A credit still pending after settling.
    PendingCreditLeft,
    /// A leg still prepared after settling.
    PreparedLeg,
    /// A decision record still `preparing` after settling.
    UndecidedTransfer,
    /// A decided record not marked complete after settling.
    UncompletedTransfer,
    /// Balances do not add up to deposits minus withdrawals.
    Conservation,
    /// A transfer's events are not "nothing" or "one debit and one matching
    /// credit", or a hold or pending credit was settled twice.
    LegMismatch,
    /// A deposit or withdrawal applied more than once, or beside other
    /// postings of its id.
    MovementMismatch,
    /// A decision record disagrees with the money its id moved.
    RecordMismatch,
    // ---- the history against the state -------------------------------------
    /// Acknowledged (200) but not applied exactly once, or its record does
    /// not hold it committed.
    AckedNotApplied,
    /// Acknowledged, and applied to other accounts, amounts or currencies
    /// than the client asked.
    NotAsAsked,
    /// Refused (or never sent) but applied, or its record committed.
    RefusedButApplied,
    /// A request refused as `idempotency_key_reused` whose own body is the
    /// one its id's record holds.
    FalseReuse,
    /// A transaction id sent again with another body, and that body
    /// acknowledged.
    ReuseAccepted,
    /// Unknown to the client and still not resolved after healing.
    UnknownUnresolved,
    /// The transfer's final status disagrees with the money it moved.
    ResolutionMismatch,
    /// Two definite answers for one transaction id differ.
    AnswerChanged,
    /// Money moved under a transaction id no client sent.
    PhantomTransaction,
    /// An account's balance differs from what the history adds up to.
    BalanceMismatch,
    /// The final read through the API differs from the state.
    FinalReadMismatch,
    /// A fresh operation after settling did not succeed.
    FreshOperationFailed,
    /// An answer the API does not document for that request.
    UnexpectedAnswer,
    /// Resolving and settling took longer than the limit after healing.
    SlowRecovery,
    // ---- one side only -------------------------------------------------------
    /// A transaction the participant's rules refused as breaking an
    /// invariant (the simulation sees every one).
    Invariant,
    /// The change feed does not carry every event once, in order, and every
    /// aborted transfer (the simulation).
    Feed,
    /// A balance snapshot that is not the fold of the events up to it (the
    /// simulation).
    Snapshot,
    /// The harness could not open and fund the accounts (the simulation).
    Setup,
    /// The run itself panicked (the simulation).
    Panic,
}

/// One thing that went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// What kind.
    pub kind: AnomalyKind,
    /// Which ids, accounts and values.
    pub detail: String,
}

impl Anomaly {
    /// An anomaly of `kind`.
    pub fn new(kind: AnomalyKind, detail: impl Into<String>) -> Anomaly {
        Anomaly {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The serde name, so the text and JSON reports say the same.
        match serde_json::to_value(self) {
            Ok(Value::String(s)) => f.write_str(&s),
            _ => write!(f, "{self:?}"),
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}
