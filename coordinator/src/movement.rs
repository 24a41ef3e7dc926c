//! Deposits and withdrawals, as the coordinator runs them.
//!
//! ```text
//! begin (claim the id at its decision partition)
//!   -> movements (apply once on the account's node) -> decide (copy the outcome)
//! ```
//!
//! The claim makes a `transaction_id` one idempotency key across the whole
//! cluster and across kinds: the same id sent to another account, or as a
//! transfer, is `idempotency_key_reused`, and nothing is applied. The
//! account's node holds the movement's truth (applied, or refused with its
//! reason, once); the claim's record copies it. When the decision partition
//! and the account live on one node, claim, movement and decision are one
//! local transaction. A claim whose coordinator stops before deciding is
//! completed by recovery (see `resolver`), with the movement its record holds.

use tracing::Instrument;
use wallet_shared::protocol::{
    AccountBalance, Begun, Decision, Movement, MovementRequest, TransferRecord, TransferState,
};
use wallet_shared::{routes, ErrorCode, Rejection};

use crate::client::{judged, CallError};
use crate::transfer::{crash_point, Coordinator};

impl Coordinator {
    /// Applies a deposit or withdrawal exactly once. `Ok` once it is
    /// applied; a refusal (the same on every retry); or `Unknown`, when the
    /// outcome is not known yet (a retry with the same id, or recovery after
    /// the lease, settles it).
    pub async fn movement(&self, m: Movement) -> Result<(), CallError> {
        let span = tracing::info_span!("movement", transaction_id = %m.transaction_id);
        let kind = match m.kind {
            wallet_shared::protocol::MovementKind::Deposit => "deposit",
            wallet_shared::protocol::MovementKind::Withdrawal => "withdrawal",
        };
        let result = self.run_movement(m).instrument(span).await;
        let (outcome, code) = match &result {
            Ok(()) => ("committed", ""),
            Err(CallError::Rejected(r)) => ("refused", r.code.as_str()),
            Err(CallError::Unknown(_)) => ("unknown", ""),
        };
        metrics::counter!("wallet_movements_total", "kind" => kind, "outcome" => outcome, "code" => code)
            .increment(1);
        result
    }

    async fn run_movement(&self, mut m: Movement) -> Result<(), CallError> {
        let id = m.transaction_id;
        let map = self.participants.map.current();
        let touched = [
            map.decision_partition(id),
            map.account_partition(&m.account_id),
        ];
        self.participants
            .await_moves(&touched)
            .await
            .map_err(CallError::Rejected)?;
        let map = self.participants.map.current();
        let home = map.decision_partition(id);
        m.partition = map.account_partition(&m.account_id);
        let claim = m.claim(
            home,
            self.lease.as_millis() as u64,
            crate::transfer::new_attempt(),
        );
        if map.owner(home) == map.owner(m.partition) {
            let partitions = [m.partition, home];
            let req = MovementRequest {
                movement: m,
                claim: Some(claim),
            };
            let _: AccountBalance = self
                .participants
                .post(&partitions, routes::MOVEMENTS.pattern(), &req)
                .await?;
            return Ok(());
        }

        match judged(self.batches.begin.submit(claim).await)? {
            // (A claim carries no leg: `Prepared` does not come back.)
            Begun::Proceed | Begun::Prepared { .. } => {}
            Begun::Decided { record } => return outcome_of(&record),
        }
        crash_point(&self.crash_at, "movement_after_claim");
        let outcome = self.apply_movement(m).await?;
        crash_point(&self.crash_at, "movement_after_apply");
        if let Err(e) = self.decide(id, home, Decision::of(&outcome)).await {
            tracing::info!(error = %e, "the outcome is not copied into the record yet; recovery will");
        }
        outcome.map_err(CallError::Rejected)
    }

    /// Applies a claimed movement on its account's node (idempotent there):
    /// `Ok(verdict)`, the movement's outcome to record; `Err`, no verdict
    /// now (a stale route, a move, overload, or no answer), so the claim
    /// stays undecided. The live path and recovery both use it.
    pub async fn apply_movement(&self, m: Movement) -> Result<Result<(), Rejection>, CallError> {
        let partition = m.partition;
        let req = MovementRequest {
            movement: m,
            claim: None,
        };
        match self
            .participants
            .post::<_, AccountBalance>(&[partition], routes::MOVEMENTS.pattern(), &req)
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(CallError::Rejected(r)) if r.code.is_verdict() => Ok(Err(r)),
            Err(e) => Err(e),
        }
    }
}

/// The answer a decided record gives (a retry of a movement already settled).
pub fn outcome_of(record: &TransferRecord) -> Result<(), CallError> {
    match (record.state, &record.reason) {
        (TransferState::Committed, _) => Ok(()),
        (TransferState::Aborted, Some(reason)) => Err(CallError::Rejected(reason.clone())),
        (TransferState::Aborted, None) => Err(CallError::Rejected(Rejection::new(
            ErrorCode::TransferAborted,
            "aborted",
        ))),
        (TransferState::Preparing, _) => Err(CallError::Unknown("not decided yet".into())),
    }
}
