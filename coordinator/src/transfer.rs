//! The transfer protocol, as the coordinator runs it.
//!
//! ```text
//! begin (decision partition) -> prepare legs (their nodes, in parallel)
//!   -> decide (CAS at the decision partition) -> commit|abort legs -> complete
//! ```
//!
//! The decision is written before any leg is committed, and it is the only
//! truth: whatever happens after it, recovery drives every leg to it. Before
//! it, any failure leaves the transfer undecided, which recovery turns into
//! an abort once the lease runs out (presumed abort). An unclear answer is
//! never read as a success: the client gets `pending`.

use std::time::Duration;

use tracing::Instrument;
use wallet_shared::protocol::*;
use wallet_shared::{ErrorCode, Rejection};

use crate::batch::{Batcher, Batches, Kind, Limits};
use crate::client::{CallError, Participants};

/// What a transfer request comes to.
#[derive(Debug)]
pub enum TransferOutcome {
    /// Decided; for an aborted one, the record says why.
    Decided(TransferRecord),
    /// The outcome is not known yet; recovery will settle it.
    Pending(String),
    /// Another coordinator is running this transaction id right now.
    InProgress,
    /// This transaction id was used with another body.
    Reused,
    /// Refused before anything was recorded.
    Refused(Rejection),
}

#[derive(Clone)]
pub struct Coordinator {
    pub participants: Participants,
    /// Every protocol message goes through these, batched per node.
    pub batches: Batches,
    pub lease: Duration,
    /// Test hook: where to kill this process (see `CoordinatorConfig::crash_at`).
    pub crash_at: Option<String>,
}

impl Coordinator {
    pub fn new(
        participants: Participants,
        lease: Duration,
        limits: Limits,
        crash_at: Option<String>,
    ) -> Self {
        Coordinator {
            batches: Batches::new(&participants, limits),
            participants,
            lease,
            crash_at,
        }
    }

    pub async fn transfer(&self, spec: TransferSpec) -> TransferOutcome {
        let span = tracing::info_span!("transfer", transaction_id = %spec.transaction_id);
        self.run(spec).instrument(span).await
    }

    async fn run(&self, spec: TransferSpec) -> TransferOutcome {
        let map = self.participants.map.current();
        let touched = [
            map.decision_partition(spec.transaction_id),
            map.account_partition(&spec.from),
            map.account_partition(&spec.to),
        ];
        if let Err(r) = self.participants.await_moves(&touched).await {
            return TransferOutcome::Refused(r);
        }
        let map = self.participants.map.current();
        let home = map.decision_partition(spec.transaction_id);
        let legs = Leg::both(
            &spec,
            map.account_partition(&spec.from),
            map.account_partition(&spec.to),
            home,
        );
        let begin = Begin {
            spec,
            partition: home,
            lease_ms: self.lease.as_millis() as u64,
            attempt: uuid::Uuid::new_v4(),
            kind: RecordKind::Transfer,
        };
        let owners: Vec<_> = [home, legs[0].partition, legs[1].partition]
            .iter()
            .map(|&p| map.owner(p))
            .collect();
        if owners.iter().all(|o| *o == owners[0]) {
            // Decision and both accounts on one node: one local transaction.
            let req = ExecuteRequest { begin, legs };
            return match self.batches.execute.submit(req).await {
                Ok(result) => started(result).unwrap_or_else(|| {
                    TransferOutcome::Pending("unexpected answer to execute".into())
                }),
                Err(e) => not_begun(e),
            };
        }

        let transaction_id = begin.spec.transaction_id;
        match self.batches.begin.submit(begin).await {
            Ok(BeginResult::Proceed) => {}
            Ok(other) => return started(other).unwrap_or(TransferOutcome::InProgress),
            Err(e) => return not_begun(e),
        }

        let votes = on_legs(&self.batches.prepare, &legs).await;
        crash_point(&self.crash_at, "after_prepare");
        let decision = decide_from(&votes);
        tracing::info!(?decision, "votes counted");

        let record = match self.decide(transaction_id, home, decision).await {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, "decision not confirmed; recovery will settle it");
                return TransferOutcome::Pending(format!(
                    "the decision could not be confirmed: {e}"
                ));
            }
        };
        crash_point(&self.crash_at, "after_decision");
        self.finish(record.clone(), &legs).await;
        TransferOutcome::Decided(record)
    }

    /// Compare-and-set of the decision at the decision partition; returns the
    /// winning record, which may hold the other decision.
    pub async fn decide(
        &self,
        transaction_id: wallet_shared::TransactionId,
        partition: wallet_shared::PartitionId,
        decision: Decision,
    ) -> Result<TransferRecord, CallError> {
        let decide = Decide {
            transaction_id,
            partition,
            decision,
        };
        self.batches
            .decide
            .submit(decide)
            .await?
            .ok_or_else(|| CallError::Unknown(format!("no decision record for {transaction_id}")))
    }

    /// Drives both legs to the recorded decision, then marks the record
    /// complete. Used by live transfers and by recovery alike.
    pub async fn finish(&self, record: TransferRecord, legs: &[Leg; 2]) -> bool {
        let (states, wanted) = match record.state {
            TransferState::Committed => (
                on_legs(&self.batches.commit, legs).await,
                LegState::Committed,
            ),
            TransferState::Aborted => (on_legs(&self.batches.abort, legs).await, LegState::Aborted),
            TransferState::Preparing => return false,
        };
        let done = states
            .iter()
            .all(|s| matches!(s, Ok(state) if *state == wanted));
        if !done {
            tracing::warn!(
                ?states,
                "not every leg applied the decision yet; recovery will retry"
            );
            return false;
        }
        let complete = TransferRef {
            transaction_id: record.spec.transaction_id,
            partition: legs[0].decision_partition,
        };
        // Best effort: if this is lost, recovery re-applies the (idempotent)
        // decision and completes it later.
        let batcher = self.batches.complete.clone();
        tokio::spawn(
            async move {
                if let Err(e) = batcher.submit(complete).await {
                    tracing::debug!(error = %e, "complete not confirmed");
                }
            }
            .in_current_span(),
        );
        true
    }
}

/// Sends both legs at once (legs on one node in one request) and returns
/// one answer per leg, in order.
async fn on_legs<K: Kind<Item = Leg>>(
    batcher: &std::sync::Arc<Batcher<K>>,
    legs: &[Leg; 2],
) -> Vec<Result<K::Answer, CallError>> {
    batcher.submit_all(legs.to_vec()).await
}

/// Commit only on two known yes votes; a refusal aborts with its reason; a
/// vote we never heard aborts too (nothing is committed without a yes).
fn decide_from(votes: &[Result<Vote, CallError>]) -> Decision {
    let mut unknown = None;
    for v in votes {
        match v {
            Ok(Vote::Yes) => {}
            // Refused for where it was sent, not for what it asked: the
            // transfer itself was never judged, as if no answer had come.
            Err(CallError::Rejected(r)) if routing(r.code) => unknown = Some(r.to_string()),
            Ok(Vote::No { reason }) | Err(CallError::Rejected(reason)) => {
                return Decision::Abort {
                    reason: reason.clone(),
                }
            }
            Err(CallError::Unknown(why)) => unknown = Some(why.clone()),
        }
    }
    match unknown {
        None => Decision::Commit,
        Some(why) => Decision::Abort {
            reason: Rejection::new(
                ErrorCode::TransferAborted,
                format!("a node did not answer the prepare ({why}); nothing was applied, use a new transaction_id to try again"),
            ),
        },
    }
}

/// Refusals about routing (a stale map, a partition being moved): they say
/// nothing about the transfer.
pub fn routing(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::WrongPartitionOwner | ErrorCode::PartitionMoving
    )
}

fn started(result: BeginResult) -> Option<TransferOutcome> {
    match result {
        BeginResult::Proceed => None,
        BeginResult::InProgress => Some(TransferOutcome::InProgress),
        BeginResult::Reused => Some(TransferOutcome::Reused),
        BeginResult::Decided { record } => Some(TransferOutcome::Decided(record)),
    }
}

/// A failure of the first call: a refusal means nothing was recorded; no
/// answer means it may have been, and recovery will settle it.
fn not_begun(e: CallError) -> TransferOutcome {
    match e {
        CallError::Rejected(r) => TransferOutcome::Refused(r),
        CallError::Unknown(why) => TransferOutcome::Pending(why),
    }
}

/// Test hook: dies exactly like `kill -9` at the named point.
pub fn crash_point(configured: &Option<String>, point: &str) {
    if configured.as_deref() == Some(point) {
        tracing::warn!(point, "crash point reached: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(votes: &[Result<Vote, CallError>]) -> Option<ErrorCode> {
        match decide_from(votes) {
            Decision::Commit => None,
            Decision::Abort { reason } => Some(reason.code),
        }
    }

    #[test]
    fn only_two_yes_votes_commit_and_a_routing_refusal_is_no_verdict() {
        let refused = |c| Err(CallError::Rejected(Rejection::new(c, "x")));
        assert_eq!(code(&[Ok(Vote::Yes), Ok(Vote::Yes)]), None);
        assert_eq!(
            code(&[Ok(Vote::Yes), refused(ErrorCode::InsufficientFunds)]),
            Some(ErrorCode::InsufficientFunds)
        );
        for routing in [ErrorCode::WrongPartitionOwner, ErrorCode::PartitionMoving] {
            assert_eq!(
                code(&[Ok(Vote::Yes), refused(routing)]),
                Some(ErrorCode::TransferAborted)
            );
        }
        assert_eq!(
            code(&[Err(CallError::Unknown("lost".into())), Ok(Vote::Yes)]),
            Some(ErrorCode::TransferAborted)
        );
    }
}
