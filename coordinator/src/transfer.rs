//! The transfer protocol, as the coordinator runs it: works out where the
//! messages go, then drives the [`Machine`] (the protocol itself, in
//! `machine`) by sending what it asks for and feeding the replies back.
//! Recovery (`resolver`) and the simulation drive the same machine.

use std::time::Duration;

use tracing::Instrument;
use wallet_shared::protocol::*;

use crate::batch::{Batches, Limits};
use crate::client::{judged, CallError, Participants};
use crate::machine::{Effect, Ending, Machine, Message, Plan, Reply, TransferOutcome};

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
        // The request's span (telemetry::request_span) names it too, so its
        // own lines (the closing "request finished") carry it.
        tracing::Span::current().record(
            "transaction_id",
            tracing::field::display(spec.transaction_id),
        );
        let span = tracing::info_span!("transfer", transaction_id = %spec.transaction_id);
        let started = std::time::Instant::now();
        let outcome = self.run(spec).instrument(span.clone()).await;
        let (label, code) = outcome_labels(&outcome);
        span.in_scope(|| tracing::debug!(outcome = label, code, "transfer finished"));
        metrics::counter!("wallet_transfers_total", "outcome" => label, "code" => code)
            .increment(1);
        metrics::histogram!("wallet_transfer_duration_seconds", "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        outcome
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
        let (machine, first) = Machine::new(self.plan(spec));
        self.drive(machine, first).await.outcome()
    }

    /// Where a transfer's messages go, by the current map.
    fn plan(&self, spec: TransferSpec) -> Plan {
        let map = self.participants.map.current();
        let home = map.decision_partition(spec.transaction_id);
        let legs = Leg::both(
            &spec,
            map.account_partition(&spec.from),
            map.account_partition(&spec.to),
            home,
        );
        let owners: Vec<_> = [home, legs[0].partition, legs[1].partition]
            .iter()
            .map(|&p| map.owner(p))
            .collect();
        let one_node = owners.iter().all(|o| *o == owners[0]);
        Plan {
            one_node,
            along: (0..2).find(|&i| !one_node && owners[0].is_some() && owners[i + 1] == owners[0]),
            begin: Begin {
                spec,
                partition: home,
                lease_ms: self.lease.as_millis() as u64,
                attempt: new_attempt(),
                kind: RecordKind::Transfer,
                prepare: None,
            },
            legs,
        }
    }

    /// Runs `machine` to its end: sends what it asks for, one message at a
    /// time, and feeds each reply back.
    pub async fn drive(&self, mut machine: Machine, first: Effect) -> Ending {
        let mut effects = vec![first];
        loop {
            let mut reply = None;
            for effect in effects {
                match effect {
                    Effect::Send(message) => reply = self.send(message).await,
                    Effect::CrashPoint(point) => crash_point(&self.crash_at, point),
                    Effect::Done(ending) => return ending,
                }
            }
            let Some(reply) = reply else {
                return Ending::Undecided(CallError::Unknown(
                    "internal: the transfer stopped without an end".into(),
                ));
            };
            effects = machine.on(reply);
        }
    }

    /// Sends one message through its batcher; `None` for `Complete`, whose
    /// answer nobody waits for. Each phase's latency (the wait for its batch
    /// included) goes to `wallet_transfer_phase_duration_seconds`.
    async fn send(&self, message: Message) -> Option<Reply> {
        let phase = message.phase();
        let started = std::time::Instant::now();
        let reply = self.send_now(message).await;
        if reply.is_some() {
            metrics::histogram!("wallet_transfer_phase_duration_seconds", "phase" => phase)
                .record(started.elapsed().as_secs_f64());
        }
        reply
    }

    async fn send_now(&self, message: Message) -> Option<Reply> {
        let b = &self.batches;
        Some(match message {
            Message::Begin(begin) => {
                let begun = judged(b.begin.submit(begin).await);
                if let Ok(Begun::Prepared { .. }) = begun {
                    metrics::counter!("wallet_legs_along_total", "with" => "begin").increment(1);
                }
                Reply::Begun(begun)
            }
            Message::Execute(req) => Reply::Executed(judged(b.execute.submit(*req).await)),
            Message::Prepare(legs) => Reply::Voted(
                b.prepare
                    .submit_all(legs.to_vec())
                    .await
                    .into_iter()
                    .map(judged)
                    .collect(),
            ),
            Message::Decide(decide) => match self.submit_decide(decide).await {
                Ok((record, applied)) => {
                    if applied.is_some() {
                        metrics::counter!("wallet_legs_along_total", "with" => "decide")
                            .increment(1);
                    }
                    Reply::Decided(Ok(record), applied)
                }
                Err(e) => Reply::Decided(Err(e), None),
            },
            Message::Commit(legs) => Reply::Applied(b.commit.submit_all(legs.to_vec()).await),
            Message::Abort(legs) => Reply::Applied(b.abort.submit_all(legs.to_vec()).await),
            Message::Complete(complete) => {
                let batcher = b.complete.clone();
                tokio::spawn(
                    async move {
                        if let Err(e) = batcher.submit(complete).await {
                            tracing::debug!(error = %e, "complete not confirmed");
                        }
                    }
                    .in_current_span(),
                );
                return None;
            }
        })
    }

    /// Compare-and-set of the decision at the decision partition; returns the
    /// winning record, which may hold the other decision.
    pub async fn decide(
        &self,
        transaction_id: wallet_shared::TransactionId,
        partition: wallet_shared::PartitionId,
        decision: Decision,
    ) -> Result<TransferRecord, CallError> {
        self.submit_decide(Decide {
            transaction_id,
            partition,
            decision,
            apply: None,
        })
        .await
        .map(|(record, _)| record)
    }

    /// The winning record, and the state of the leg that went with the
    /// decision (`None`: none went, or it was not applied there).
    async fn submit_decide(
        &self,
        decide: Decide,
    ) -> Result<(TransferRecord, Option<LegState>), CallError> {
        let id = decide.transaction_id;
        match self.batches.decide.submit(decide).await? {
            (Some(record), applied) => Ok((record, applied)),
            (None, _) => Err(CallError::Unknown(format!("no decision record for {id}"))),
        }
    }
}

/// A new attempt's name ([`Begin::attempt`]): 128 bits from the thread's
/// generator, which the simulation seeds, so that a run's values follow
/// from its seed (a v4 UUID comes from the OS). It names an attempt to its
/// own retries; it guards nothing.
pub fn new_attempt() -> uuid::Uuid {
    uuid::Uuid::from_u128(fastrand::u128(..))
}

/// `wallet_transfers_total`'s labels: `outcome` (committed, aborted,
/// pending, in_progress, refused) and the error `code` ("" when committed
/// or pending).
fn outcome_labels(outcome: &TransferOutcome) -> (&'static str, &'static str) {
    match outcome {
        TransferOutcome::Decided(r) => match r.state {
            TransferState::Committed => ("committed", ""),
            TransferState::Aborted => (
                "aborted",
                r.reason
                    .as_ref()
                    .map_or("transfer_aborted", |r| r.code.as_str()),
            ),
            // A decided outcome is never `preparing`; counted as unknown if it were.
            TransferState::Preparing => ("pending", ""),
        },
        TransferOutcome::Pending(_) => ("pending", ""),
        TransferOutcome::Refused(r) if r.code == wallet_shared::ErrorCode::InProgress => {
            ("in_progress", "in_progress")
        }
        TransferOutcome::Refused(r) => ("refused", r.code.as_str()),
    }
}

/// Whether this build has the test hooks that kill the process
/// (`crash_at`): debug builds, which the tests run, and a release build
/// only with the `crash-hooks` feature.
pub const CRASH_HOOKS: bool = cfg!(any(debug_assertions, feature = "crash-hooks"));

/// Refuses a `crash_at` this build would ignore: a test that sets it must
/// not pass against a binary that never crashes.
pub fn check_crash_hook(crash_at: &Option<String>) -> anyhow::Result<()> {
    refuse_missing_hook(crash_at, CRASH_HOOKS)
}

fn refuse_missing_hook(crash_at: &Option<String>, built: bool) -> anyhow::Result<()> {
    match crash_at {
        Some(point) if !built => anyhow::bail!(
            "crash_at = {point:?} is a test hook, and this is a release build without it \
             (build with --features coordinator/crash-hooks, or unset crash_at / WALLET_CRASH_AT)"
        ),
        _ => Ok(()),
    }
}

/// Test hook: dies exactly like `kill -9` at the named point (only in a
/// build with [`CRASH_HOOKS`]).
pub fn crash_point(configured: &Option<String>, point: &str) {
    if CRASH_HOOKS && configured.as_deref() == Some(point) {
        tracing::warn!(point, "crash point reached: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_crash_hooks_refuses_crash_at() {
        let at = Some("after_prepare".to_string());
        let err = refuse_missing_hook(&at, false).unwrap_err().to_string();
        assert!(
            err.contains("crash_at") && err.contains("after_prepare"),
            "{err}"
        );
        assert!(refuse_missing_hook(&None, false).is_ok());
        assert!(refuse_missing_hook(&at, true).is_ok());
    }
}
