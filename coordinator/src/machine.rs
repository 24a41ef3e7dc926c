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
//! When a leg lives on the decision partition's node, it travels with the
//! record's messages: its prepare with `begin` (after the claim, in the same
//! local transaction) and the decision applied to it with `decide` (in the
//! decision's local transaction). The other leg goes alone. A node that no
//! longer owns that leg's partition leaves it out, and it is then sent on
//! its own, as every leg is otherwise.
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

use crate::client::{judged, CallError};

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

/// A message for the participants. The legs of a phase travel in one
/// message, so legs bound for one node share a request.
#[derive(Debug, Clone)]
pub enum Message {
    Begin(Begin),
    Execute(Box<ExecuteRequest>),
    Prepare(Vec<Leg>),
    Decide(Decide),
    Commit(Vec<Leg>),
    Abort(Vec<Leg>),
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
    /// The record as it stands, and the state of the leg that went with
    /// the decision (`None`: none went, or it was not applied there).
    Decided(Result<TransferRecord, CallError>, Option<LegState>),
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
    /// The leg (0 or 1) that lives on the decision partition's node, when
    /// one does and the other does not: it travels with `begin` and
    /// `decide`.
    pub along: Option<usize>,
}

#[derive(Debug)]
enum State {
    Beginning,
    Executing,
    /// The votes heard so far (the one that came with `begin`).
    Preparing(Vec<Result<(), CallError>>),
    Deciding,
    /// The states of the legs applied so far (the one that went with the
    /// decision).
    Finishing(TransferRecord, Vec<Result<LegState, CallError>>),
    Done,
}

/// One transfer's protocol, between messages.
#[derive(Debug)]
pub struct Machine {
    id: TransactionId,
    home: PartitionId,
    legs: [Leg; 2],
    /// See [`Plan::along`]; `None` in recovery, which sends each leg alone.
    along: Option<usize>,
    state: State,
}

impl Machine {
    /// A transfer as a client asked for it: its first message.
    pub fn new(plan: Plan) -> (Machine, Effect) {
        let id = plan.begin.spec.transaction_id;
        let home = plan.begin.partition;
        let along = plan.along.filter(|&i| i < 2 && !plan.one_node);
        let (state, first) = if plan.one_node {
            let req = ExecuteRequest {
                begin: plan.begin,
                legs: plan.legs.clone(),
            };
            (State::Executing, Message::Execute(Box::new(req)))
        } else {
            let begin = Begin {
                prepare: along.map(|i| plan.legs[i].clone()),
                ..plan.begin
            };
            (State::Beginning, Message::Begin(begin))
        };
        let machine = Machine {
            id,
            home,
            legs: plan.legs,
            along,
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
            along: None,
            state: State::Deciding,
        };
        let first = if record.state == TransferState::Preparing {
            let reason = Rejection::new(
                ErrorCode::TransferAborted,
                "its coordinator stopped before deciding; recovery aborted it and nothing was applied",
            );
            machine.decide(Decision::Abort { reason })
        } else {
            machine.finish(record, None)
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
                    Ok(Begun::Proceed | Begun::Prepared { .. }) => {
                        TransferOutcome::Pending("unexpected answer to execute".into())
                    }
                    Err(e) => not_begun(e),
                };
                vec![Effect::Done(Ending::Early(outcome))]
            }
            (State::Beginning, Reply::Begun(result)) => match result {
                Ok(Begun::Proceed) => {
                    // Nothing was prepared with the claim: every leg alone.
                    self.along = None;
                    self.state = State::Preparing(Vec::new());
                    vec![Effect::Send(Message::Prepare(self.legs.to_vec()))]
                }
                Ok(Begun::Prepared { vote }) => {
                    self.state = State::Preparing(vec![judged(Ok(vote))]);
                    vec![Effect::Send(Message::Prepare(self.others()))]
                }
                Ok(Begun::Decided { record }) => {
                    vec![Effect::Done(Ending::Early(TransferOutcome::Decided(
                        record,
                    )))]
                }
                Err(e) => vec![Effect::Done(Ending::Early(not_begun(e)))],
            },
            (State::Preparing(heard), Reply::Voted(more)) => {
                let votes = self.in_leg_order(heard, more);
                let decision = decide_from(&votes);
                tracing::info!(?decision, "votes counted");
                vec![Effect::CrashPoint("after_prepare"), self.decide(decision)]
            }
            (State::Deciding, Reply::Decided(Ok(record), applied)) => {
                vec![
                    Effect::CrashPoint("after_decision"),
                    self.finish(record, applied),
                ]
            }
            (State::Deciding, Reply::Decided(Err(e), _)) => {
                tracing::warn!(error = %e, "decision not confirmed; recovery will settle it");
                vec![Effect::Done(Ending::Undecided(e))]
            }
            (State::Finishing(record, mut states), Reply::Applied(more)) => {
                states.extend(more);
                let wanted = wanted(&record);
                let finished = states.len() == 2
                    && states
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
            apply: self.along.map(|i| self.legs[i].clone()),
        }))
    }

    /// The votes of both legs in the legs' order (debit, then credit),
    /// whichever came with the claim: when both refuse, the debit's reason
    /// is the one recorded, as when each leg goes alone.
    fn in_leg_order(
        &self,
        mut heard: Vec<Result<(), CallError>>,
        more: Vec<Result<(), CallError>>,
    ) -> Vec<Result<(), CallError>> {
        if heard.is_empty() {
            return more;
        }
        let mut more = more.into_iter();
        let mut votes: Vec<_> = (0..2)
            .filter_map(|i| {
                if Some(i) == self.along {
                    heard.pop()
                } else {
                    more.next()
                }
            })
            .collect();
        votes.extend(more);
        votes
    }

    /// The legs that do not travel with the record's messages.
    fn others(&self) -> Vec<Leg> {
        (0..2)
            .filter(|&i| Some(i) != self.along)
            .map(|i| self.legs[i].clone())
            .collect()
    }

    /// Drives both legs to the recorded decision: the one that went with
    /// the decision (`applied`) is done if it holds it, the rest are sent.
    fn finish(&mut self, record: TransferRecord, applied: Option<LegState>) -> Effect {
        if record.state == TransferState::Preparing {
            return Effect::Done(Ending::Decided {
                record,
                finished: false,
            });
        }
        let wanted = wanted(&record);
        let (legs, done) = match applied {
            Some(state) if state == wanted && self.along.is_some() => {
                (self.others(), vec![Ok(state)])
            }
            _ => (self.legs.to_vec(), Vec::new()),
        };
        let message = match record.state {
            TransferState::Committed => Message::Commit(legs),
            _ => Message::Abort(legs),
        };
        self.state = State::Finishing(record, done);
        Effect::Send(message)
    }
}

/// The state a decided record's legs end in.
fn wanted(record: &TransferRecord) -> LegState {
    match record.state {
        TransferState::Committed => LegState::Committed,
        _ => LegState::Aborted,
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
        plan_along(one_node, None)
    }

    fn plan_along(one_node: bool, along: Option<usize>) -> Plan {
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
                prepare: None,
            },
            one_node,
            along,
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
        let e = m.on(Reply::Decided(Ok(committed.clone()), None));
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
    fn the_leg_on_the_decision_node_travels_with_begin_and_decide() {
        let p = plan_along(false, Some(1));
        let (mut m, first) = Machine::new(p.clone());
        // The credit (leg 1) goes with the claim; the debit alone.
        assert!(
            matches!(first, Effect::Send(Message::Begin(ref b)) if b.prepare.as_ref() == Some(&p.legs[1]))
        );
        let e = m.on(Reply::Begun(Ok(Begun::Prepared { vote: Ok(()) })));
        assert!(
            matches!(e.as_slice(), [Effect::Send(Message::Prepare(legs))] if *legs == [p.legs[0].clone()])
        );
        let e = m.on(Reply::Voted(vec![Ok(())]));
        assert!(matches!(
            e.as_slice(),
            [_, Effect::Send(Message::Decide(Decide { decision: Decision::Commit, apply: Some(leg), .. }))]
                if *leg == p.legs[1]
        ));
        let committed = record(&p, TransferState::Committed);
        let e = m.on(Reply::Decided(
            Ok(committed.clone()),
            Some(LegState::Committed),
        ));
        assert!(matches!(
            e.as_slice(),
            [_, Effect::Send(Message::Commit(legs))] if *legs == [p.legs[0].clone()]
        ));
        let e = m.on(Reply::Applied(vec![Ok(LegState::Committed)]));
        assert!(matches!(
            e.as_slice(),
            [
                Effect::Send(Message::Complete(_)),
                Effect::Done(Ending::Decided { finished: true, .. })
            ]
        ));

        // A no from the leg that came with the claim aborts, and the abort
        // goes with the decision too.
        let (mut m, _) = Machine::new(p.clone());
        m.on(Reply::Begun(Ok(Begun::Prepared {
            vote: Err(Rejection::new(ErrorCode::CurrencyMismatch, "x")),
        })));
        let e = m.on(Reply::Voted(vec![Ok(())]));
        assert!(matches!(
            e.as_slice(),
            [_, Effect::Send(Message::Decide(Decide { decision: Decision::Abort { reason }, apply: Some(_), .. }))]
                if reason.code == ErrorCode::CurrencyMismatch
        ));
    }

    #[test]
    fn when_both_legs_refuse_the_debits_reason_is_recorded_whichever_came_along() {
        let (mut m, _) = Machine::new(plan_along(false, Some(1)));
        m.on(Reply::Begun(Ok(Begun::Prepared {
            vote: Err(Rejection::new(ErrorCode::CurrencyMismatch, "credit")),
        })));
        match m
            .on(Reply::Voted(vec![refused(ErrorCode::InsufficientFunds)]))
            .as_slice()
        {
            [_, Effect::Send(Message::Decide(d))] => {
                assert_eq!(code(d.decision.clone()), Some(ErrorCode::InsufficientFunds))
            }
            other => panic!("{other:?}"),
        }
        // A vote that never came still aborts.
        let (mut m, _) = Machine::new(plan_along(false, Some(0)));
        m.on(Reply::Begun(Ok(Begun::Prepared { vote: Ok(()) })));
        match m.on(Reply::Voted(Vec::new())).as_slice() {
            [_, Effect::Send(Message::Decide(d))] => {
                assert_eq!(code(d.decision.clone()), Some(ErrorCode::TransferAborted))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_leg_the_decision_node_did_not_take_along_is_sent_on_its_own() {
        let p = plan_along(false, Some(0));
        // Plain `proceed`: the node left the leg out (it no longer owns its
        // partition), so both legs are prepared, and the decision goes alone.
        let (mut m, _) = Machine::new(p.clone());
        let e = m.on(Reply::Begun(Ok(Begun::Proceed)));
        assert!(matches!(e.as_slice(), [Effect::Send(Message::Prepare(legs))] if *legs == p.legs));
        let e = m.on(Reply::Voted(vec![Ok(()), Ok(())]));
        assert!(matches!(
            e.as_slice(),
            [_, Effect::Send(Message::Decide(Decide { apply: None, .. }))]
        ));

        // Taken with the claim, but not applied with the decision: both legs
        // are sent, and only two applied states finish it.
        let (mut m, _) = Machine::new(p.clone());
        m.on(Reply::Begun(Ok(Begun::Prepared { vote: Ok(()) })));
        m.on(Reply::Voted(vec![Ok(())]));
        let committed = record(&p, TransferState::Committed);
        let e = m.on(Reply::Decided(Ok(committed.clone()), None));
        assert!(matches!(
            e.as_slice(),
            [_, Effect::Send(Message::Commit(legs))] if *legs == p.legs
        ));
        let e = m.on(Reply::Applied(vec![
            Ok(LegState::Committed),
            Ok(LegState::Committed),
        ]));
        assert!(matches!(
            e.as_slice(),
            [
                Effect::Send(Message::Complete(_)),
                Effect::Done(Ending::Decided { finished: true, .. })
            ]
        ));

        // A state that is not the record's decision (the node applies the
        // winning one, so this must not happen): not counted, both legs are
        // sent the decision.
        let (mut m, _) = Machine::new(p.clone());
        m.on(Reply::Begun(Ok(Begun::Prepared { vote: Ok(()) })));
        m.on(Reply::Voted(vec![Ok(())]));
        let aborted = record(&p, TransferState::Aborted);
        let e = m.on(Reply::Decided(Ok(aborted), Some(LegState::Committed)));
        assert!(matches!(
            e.as_slice(),
            [_, Effect::Send(Message::Abort(legs))] if *legs == p.legs
        ));
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
        let e = m.on(Reply::Decided(
            Err(CallError::Unknown("timeout".into())),
            None,
        ));
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
        let e = m.on(Reply::Decided(
            Ok(record(&p, TransferState::Committed)),
            None,
        ));
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
