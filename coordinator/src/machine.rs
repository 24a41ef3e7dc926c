//! The transfer as a state machine: a state plus what came back gives the
//! next state and the messages to send. No I/O here: `Coordinator::drive`
//! (in `transfer`) sends the messages and feeds the replies back, and the
//! request path, recovery and the simulation all run transfers through it.
//!
//! ```text
//!             +--> Executing --(one node: execute)------------------------------+
//!  new(plan) -|                                                                  |
//!             +--> Beginning --proceed--> Preparing --votes--> Deciding --record--> Finishing --> done
//!                      |                                           ^                    (commit|abort legs,
//!                      +--(reused, in progress, decided, refused)--|--> done              then complete)
//!  recover(record) ----(preparing: decide abort)-------------------+
//!                  ----(decided)----------------------------------------> Finishing
//! ```
//!
//! The decision is written before any leg is committed, and it is the only
//! truth: whatever happens after it, recovery drives every leg to it. Before
//! it, any failure leaves the transfer undecided, which recovery turns into
//! an abort once the lease runs out (presumed abort). An unclear answer is
//! never read as a success.

use wallet_shared::protocol::{
    Begin, Begun, Decide, Decision, ExecuteRequest, Leg, LegState, TransferRecord, TransferRef,
    TransferState,
};
use wallet_shared::{ErrorCode, PartitionId, Rejection, TransactionId};

use crate::client::CallError;

/// What a transfer request comes to, as the client hears it.
#[derive(Debug)]
pub enum TransferOutcome {
    /// Decided; for an aborted one, the record says why.
    Decided(TransferRecord),
    /// The outcome is not known yet; recovery will settle it.
    Pending(String),
    /// Refused before anything was recorded: the request itself, or its
    /// id (used with another body, or run by another coordinator now).
    Refused(Rejection),
}

/// A message for the participants. Both legs travel in one message, so
/// legs bound for one node share a request.
#[derive(Debug, Clone)]
pub enum Message {
    Begin(Begin),
    Execute(ExecuteRequest),
    Prepare([Leg; 2]),
    Decide(Decide),
    Commit([Leg; 2]),
    Abort([Leg; 2]),
    /// Best effort, answer not awaited: if it is lost, recovery re-applies
    /// the (idempotent) decision and completes the record later.
    Complete(TransferRef),
}

impl Message {
    /// The protocol phase it belongs to, as metrics name it.
    pub fn phase(&self) -> &'static str {
        match self {
            Message::Begin(_) => "begin",
            Message::Execute(_) => "execute",
            Message::Prepare(_) => "prepare",
            Message::Decide(_) => "decide",
            Message::Commit(_) => "commit",
            Message::Abort(_) => "abort",
            Message::Complete(_) => "complete",
        }
    }
}

/// What came back for a [`Message`] (nothing comes back for `Complete`).
/// A refusal, of the request or of one item in it, is
/// `CallError::Rejected` ([`crate::client::judged`]).
#[derive(Debug)]
pub enum Reply {
    Begun(Result<Begun, CallError>),
    Executed(Result<Begun, CallError>),
    /// One per leg: `Ok(())` is a yes vote.
    Voted(Vec<Result<(), CallError>>),
    Decided(Result<TransferRecord, CallError>),
    Applied(Vec<Result<LegState, CallError>>),
}

/// What the driver does next.
#[derive(Debug)]
pub enum Effect {
    Send(Message),
    /// Test hook: the process dies here if configured to (`crash_at`).
    CrashPoint(&'static str),
    Done(Ending),
}

/// How a run of the machine ended.
#[derive(Debug)]
pub enum Ending {
    /// Answered before any decision of this run: refused, reused, in
    /// progress, decided earlier, or unknown.
    Early(TransferOutcome),
    /// The decision could not be confirmed: recovery will settle it.
    Undecided(CallError),
    /// Decided; `finished` once both legs applied the decision.
    Decided {
        record: TransferRecord,
        finished: bool,
    },
}

impl Ending {
    /// The client's answer.
    pub fn outcome(self) -> TransferOutcome {
        match self {
            Ending::Early(outcome) => outcome,
            Ending::Undecided(e) => {
                TransferOutcome::Pending(format!("the decision could not be confirmed: {e}"))
            }
            Ending::Decided { record, .. } => TransferOutcome::Decided(record),
        }
    }
}

/// Where one transfer's messages go: worked out from the partition map once.
#[derive(Debug, Clone)]
pub struct Plan {
    pub begin: Begin,
    pub legs: [Leg; 2],
    /// The decision partition and both accounts live on one node.
    pub one_node: bool,
}

#[derive(Debug)]
enum State {
    Beginning,
    Executing,
    Preparing,
    Deciding,
    Finishing(TransferRecord),
    Done,
}

/// One transfer's protocol, between messages.
#[derive(Debug)]
pub struct Machine {
    id: TransactionId,
    home: PartitionId,
    legs: [Leg; 2],
    state: State,
}

impl Machine {
    /// A transfer as a client asked for it: its first message.
    pub fn new(plan: Plan) -> (Machine, Effect) {
        let id = plan.begin.spec.transaction_id;
        let home = plan.begin.partition;
        let (state, first) = if plan.one_node {
            let req = ExecuteRequest {
                begin: plan.begin,
                legs: plan.legs.clone(),
            };
            (State::Executing, Message::Execute(req))
        } else {
            (State::Beginning, Message::Begin(plan.begin))
        };
        let machine = Machine {
            id,
            home,
            legs: plan.legs,
            state,
        };
        (machine, Effect::Send(first))
    }

    /// Recovery of a transfer from its record: an undecided one is decided
    /// abort (a compare-and-set, which loses to a decision that got there
    /// first: that one is then applied); a decided one is applied to both
    /// legs.
    pub fn recover(record: TransferRecord, legs: [Leg; 2]) -> (Machine, Effect) {
        let mut machine = Machine {
            id: record.spec.transaction_id,
            home: legs[0].decision_partition,
            legs,
            state: State::Deciding,
        };
        let first = if record.state == TransferState::Preparing {
            let reason = Rejection::new(
                ErrorCode::TransferAborted,
                "its coordinator stopped before deciding; recovery aborted it and nothing was applied",
            );
            machine.decide(Decision::Abort { reason })
        } else {
            machine.finish(record)
        };
        (machine, first)
    }

    /// The next steps, given what came back for the last message.
    pub fn on(&mut self, reply: Reply) -> Vec<Effect> {
        let state = std::mem::replace(&mut self.state, State::Done);
        match (state, reply) {
            (State::Executing, Reply::Executed(result)) => {
                let outcome = match result {
                    Ok(Begun::Decided { record }) => TransferOutcome::Decided(record),
                    Ok(Begun::Proceed) => {
                        TransferOutcome::Pending("unexpected answer to execute".into())
                    }
                    Err(e) => not_begun(e),
                };
                vec![Effect::Done(Ending::Early(outcome))]
            }
            (State::Beginning, Reply::Begun(result)) => match result {
                Ok(Begun::Proceed) => {
                    self.state = State::Preparing;
                    vec![Effect::Send(Message::Prepare(self.legs.clone()))]
                }
                Ok(Begun::Decided { record }) => {
                    vec![Effect::Done(Ending::Early(TransferOutcome::Decided(
                        record,
                    )))]
                }
                Err(e) => vec![Effect::Done(Ending::Early(not_begun(e)))],
            },
            (State::Preparing, Reply::Voted(votes)) => {
                let decision = decide_from(&votes);
                tracing::info!(?decision, "votes counted");
                vec![Effect::CrashPoint("after_prepare"), self.decide(decision)]
            }
            (State::Deciding, Reply::Decided(Ok(record))) => {
                vec![Effect::CrashPoint("after_decision"), self.finish(record)]
            }
            (State::Deciding, Reply::Decided(Err(e))) => {
                tracing::warn!(error = %e, "decision not confirmed; recovery will settle it");
                vec![Effect::Done(Ending::Undecided(e))]
            }
            (State::Finishing(record), Reply::Applied(states)) => {
                let wanted = match record.state {
                    TransferState::Committed => LegState::Committed,
                    _ => LegState::Aborted,
                };
                let finished = states
                    .iter()
                    .all(|s| matches!(s, Ok(state) if *state == wanted));
                let mut effects = Vec::new();
                if finished {
                    effects.push(Effect::Send(Message::Complete(TransferRef {
                        transaction_id: self.id,
                        partition: self.home,
                    })));
                } else {
                    tracing::warn!(
                        ?states,
                        "not every leg applied the decision yet; recovery will retry"
                    );
                }
                effects.push(Effect::Done(Ending::Decided { record, finished }));
                effects
            }
            (state, reply) => {
                // A reply that does not belong to the state: a bug in the
                // driver. Undecided is the one safe answer.
                tracing::error!(?state, ?reply, "reply out of turn");
                vec![Effect::Done(Ending::Undecided(CallError::Unknown(
                    "internal: reply out of turn".into(),
                )))]
            }
        }
    }

    fn decide(&mut self, decision: Decision) -> Effect {
        self.state = State::Deciding;
        Effect::Send(Message::Decide(Decide {
            transaction_id: self.id,
            partition: self.home,
            decision,
        }))
    }

    /// Drives both legs to the recorded decision.
    fn finish(&mut self, record: TransferRecord) -> Effect {
        let legs = self.legs.clone();
        let message = match record.state {
            TransferState::Committed => Message::Commit(legs),
            TransferState::Aborted => Message::Abort(legs),
            TransferState::Preparing => {
                return Effect::Done(Ending::Decided {
                    record,
                    finished: false,
                })
            }
        };
        self.state = State::Finishing(record);
        Effect::Send(message)
    }
}

/// Commit only on two known yes votes; a refusal aborts with its reason; a
/// vote we never heard aborts too (nothing is committed without a yes).
fn decide_from(votes: &[Result<(), CallError>]) -> Decision {
    let mut unknown = None;
    for v in votes {
        match v {
            Ok(()) => {}
            // Refused for where it was sent, not for what it asked: the
            // transfer itself was never judged, as if no answer had come.
            Err(CallError::Rejected(r)) if routing(r.code) => unknown = Some(r.to_string()),
            Err(CallError::Rejected(reason)) => {
                return Decision::Abort {
                    reason: reason.clone(),
                }
            }
            Err(CallError::Unknown(why)) => unknown = Some(why.clone()),
        }
    }
    match unknown {
        None if votes.len() == 2 => Decision::Commit,
        None => Decision::Abort {
            reason: Rejection::new(ErrorCode::TransferAborted, "a vote is missing"),
        },
        Some(why) => {
            // The reason is recorded and shown to the client: what went
            // wrong inside (an address, a driver's text) goes to the log.
            tracing::warn!(error = %why, "a prepare got no clear answer; aborting");
            Decision::Abort {
                reason: Rejection::new(
                    ErrorCode::TransferAborted,
                    "a node did not answer the prepare; nothing was applied, use a new transaction_id to try again",
                ),
            }
        }
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

/// A failure of the first call: a refusal means nothing was recorded; no
/// answer means it may have been, and recovery will settle it.
fn not_begun(e: CallError) -> TransferOutcome {
    match e {
        CallError::Rejected(r) => TransferOutcome::Refused(r),
        CallError::Unknown(why) => TransferOutcome::Pending(why),
    }
}

#[cfg(test)]
mod tests {
    use wallet_shared::protocol::{RecordKind, TransferSpec};
    use wallet_shared::{AccountId, Amount, Currency};

    use super::*;

    fn plan(one_node: bool) -> Plan {
        let spec = TransferSpec {
            transaction_id: TransactionId::new_random(),
            from: AccountId::parse("alice").unwrap(),
            to: AccountId::parse("bob").unwrap(),
            amount: Amount::from_minor(1_000).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            tenant: None,
        };
        Plan {
            legs: Leg::both(&spec, 1, 2, 3),
            begin: Begin {
                spec,
                partition: 3,
                lease_ms: 5_000,
                attempt: uuid::Uuid::new_v4(),
                kind: RecordKind::Transfer,
            },
            one_node,
        }
    }

    fn record(plan: &Plan, state: TransferState) -> TransferRecord {
        TransferRecord {
            kind: RecordKind::Transfer,
            spec: plan.begin.spec.clone(),
            state,
            reason: None,
            created_at: chrono::Utc::now(),
            decided_at: None,
            completed: false,
        }
    }

    fn refused(code: ErrorCode) -> Result<(), CallError> {
        Err(CallError::Rejected(Rejection::new(code, "x")))
    }

    /// The decision the machine asks for after these votes.
    fn decision_after(votes: Vec<Result<(), CallError>>) -> Decision {
        let (mut m, _) = Machine::new(plan(false));
        m.on(Reply::Begun(Ok(Begun::Proceed)));
        match m.on(Reply::Voted(votes)).as_slice() {
            [Effect::CrashPoint("after_prepare"), Effect::Send(Message::Decide(d))] => {
                d.decision.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    fn code(d: Decision) -> Option<ErrorCode> {
        match d {
            Decision::Commit => None,
            Decision::Abort { reason } => Some(reason.code),
        }
    }

    #[test]
    fn a_transfer_across_nodes_begins_prepares_decides_commits_and_completes() {
        let p = plan(false);
        let (mut m, first) = Machine::new(p.clone());
        assert!(matches!(first, Effect::Send(Message::Begin(ref b)) if b.spec == p.begin.spec));
        let e = m.on(Reply::Begun(Ok(Begun::Proceed)));
        assert!(matches!(e.as_slice(), [Effect::Send(Message::Prepare(legs))] if *legs == p.legs));
        let e = m.on(Reply::Voted(vec![Ok(()), Ok(())]));
        assert!(matches!(
            e.as_slice(),
            [
                Effect::CrashPoint("after_prepare"),
                Effect::Send(Message::Decide(Decide {
                    decision: Decision::Commit,
                    partition: 3,
                    ..
                }))
            ]
        ));
        let committed = record(&p, TransferState::Committed);
        let e = m.on(Reply::Decided(Ok(committed.clone())));
        assert!(matches!(
            e.as_slice(),
            [Effect::CrashPoint("after_decision"), Effect::Send(Message::Commit(legs))] if *legs == p.legs
        ));
        let e = m.on(Reply::Applied(vec![
            Ok(LegState::Committed),
            Ok(LegState::Committed),
        ]));
        match e.as_slice() {
            [Effect::Send(Message::Complete(r)), Effect::Done(Ending::Decided {
                record,
                finished: true,
            })] => {
                assert_eq!(r.partition, 3);
                assert_eq!(*record, committed);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_node_is_one_execute_and_its_answer() {
        let p = plan(true);
        let (mut m, first) = Machine::new(p.clone());
        assert!(matches!(first, Effect::Send(Message::Execute(_))));
        let r = record(&p, TransferState::Committed);
        let e = m.on(Reply::Executed(Ok(Begun::Decided { record: r.clone() })));
        assert!(
            matches!(e.as_slice(), [Effect::Done(Ending::Early(TransferOutcome::Decided(x)))] if *x == r)
        );
        let (mut m, _) = Machine::new(p);
        let e = m.on(Reply::Executed(Ok(Begun::Proceed)));
        assert!(matches!(
            e.as_slice(),
            [Effect::Done(Ending::Early(TransferOutcome::Pending(_)))]
        ));
    }

    #[test]
    fn every_answer_to_begin_but_proceed_ends_it_before_anything_is_held() {
        type Expected = fn(&TransferOutcome) -> bool;
        let id = || plan(false).begin.spec.transaction_id;
        let cases: Vec<(Result<Begun, CallError>, Expected)> = vec![
            (
                Err(CallError::Rejected(Rejection::idempotency_key_reused(id()))),
                |o| matches!(o, TransferOutcome::Refused(r) if r.code == ErrorCode::IdempotencyKeyReused),
            ),
            (
                Err(CallError::Rejected(Rejection::in_progress(id()))),
                |o| matches!(o, TransferOutcome::Refused(r) if r.code == ErrorCode::InProgress),
            ),
            (Err(CallError::Unknown("lost".into())), |o| {
                matches!(o, TransferOutcome::Pending(_))
            }),
            (
                Err(CallError::Rejected(Rejection::new(
                    ErrorCode::PartitionMoving,
                    "x",
                ))),
                |o| matches!(o, TransferOutcome::Refused(r) if r.code == ErrorCode::PartitionMoving),
            ),
        ];
        for (answer, expected) in cases {
            let (mut m, _) = Machine::new(plan(false));
            match m.on(Reply::Begun(answer)).as_slice() {
                [Effect::Done(Ending::Early(o))] => assert!(expected(o), "{o:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn only_two_yes_votes_commit_and_a_routing_refusal_is_no_verdict() {
        assert_eq!(code(decision_after(vec![Ok(()), Ok(())])), None);
        assert_eq!(
            code(decision_after(vec![
                Ok(()),
                refused(ErrorCode::InsufficientFunds)
            ])),
            Some(ErrorCode::InsufficientFunds)
        );
        assert_eq!(
            code(decision_after(vec![
                refused(ErrorCode::CurrencyMismatch),
                Ok(())
            ])),
            Some(ErrorCode::CurrencyMismatch)
        );
        for routing in [ErrorCode::WrongPartitionOwner, ErrorCode::PartitionMoving] {
            assert_eq!(
                code(decision_after(vec![Ok(()), refused(routing)])),
                Some(ErrorCode::TransferAborted)
            );
        }
        assert_eq!(
            code(decision_after(vec![
                Err(CallError::Unknown("lost".into())),
                Ok(())
            ])),
            Some(ErrorCode::TransferAborted)
        );
        assert_eq!(
            code(decision_after(vec![Ok(())])),
            Some(ErrorCode::TransferAborted)
        );
    }

    #[test]
    fn an_unconfirmed_decision_is_undecided_and_an_unfinished_leg_leaves_the_record_open() {
        let p = plan(false);
        let (mut m, _) = Machine::new(p.clone());
        m.on(Reply::Begun(Ok(Begun::Proceed)));
        m.on(Reply::Voted(vec![Ok(()), Ok(())]));
        let e = m.on(Reply::Decided(Err(CallError::Unknown("timeout".into()))));
        assert!(matches!(e.as_slice(), [Effect::Done(Ending::Undecided(_))]));
        assert!(matches!(
            Ending::Undecided(CallError::Unknown("t".into())).outcome(),
            TransferOutcome::Pending(_)
        ));

        let (mut m, _) = Machine::recover(record(&p, TransferState::Committed), p.legs.clone());
        let e = m.on(Reply::Applied(vec![
            Ok(LegState::Committed),
            Err(CallError::Unknown("down".into())),
        ]));
        // No `complete`: recovery must look at it again.
        assert!(matches!(
            e.as_slice(),
            [Effect::Done(Ending::Decided {
                finished: false,
                ..
            })]
        ));
    }

    #[test]
    fn recovery_aborts_an_undecided_transfer_unless_a_decision_got_there_first() {
        let p = plan(false);
        let (mut m, first) = Machine::recover(record(&p, TransferState::Preparing), p.legs.clone());
        match &first {
            Effect::Send(Message::Decide(d)) => {
                assert_eq!(code(d.decision.clone()), Some(ErrorCode::TransferAborted))
            }
            other => panic!("{other:?}"),
        }
        // The compare-and-set lost to a commit: the commit is applied.
        let e = m.on(Reply::Decided(Ok(record(&p, TransferState::Committed))));
        assert!(matches!(
            e.as_slice(),
            [_, Effect::Send(Message::Commit(_))]
        ));

        let (_, first) = Machine::recover(record(&p, TransferState::Aborted), p.legs.clone());
        assert!(matches!(first, Effect::Send(Message::Abort(legs)) if legs == p.legs));
    }

    #[test]
    fn a_reply_out_of_turn_is_never_read_as_success() {
        let (mut m, _) = Machine::new(plan(false));
        let e = m.on(Reply::Voted(vec![Ok(()), Ok(())]));
        assert!(matches!(e.as_slice(), [Effect::Done(Ending::Undecided(_))]));
    }
}
