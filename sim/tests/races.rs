//! Races that were once fixed by hand, replayed deterministically: the
//! coordinator's real transfer state machine (`coordinator::machine`) and
//! the participant's real rules over one in-memory node
//! (`participant::memory`), with the interleaving written out step by step.
//!
//! - two resolvers on one stuck transfer;
//! - a live coordinator deciding commit while recovery decides abort, in
//!   both orders;
//! - a coordinator taking over a transfer whose lease ran out, while the
//!   first one wakes up and carries on.
//!
//! Every case ends with the same check: one decision, both legs applied it
//! once, nothing held, money where the decision says.

use chrono::{DateTime, Duration, TimeZone, Utc};
use coordinator::client::judged;
use coordinator::machine::{Effect, Ending, Machine, Message, Plan, Reply};
use participant::legs::Finish;
use participant::memory::Tables;
use participant::model::{Broken, Keys, Working};
use participant::{decisions, legs, movements};
use wallet_shared::protocol::{
    Begin, Leg, LegState, Movement, MovementKind, MovementRequest, OpenAccount, RecordKind,
    TransferSpec, TransferState,
};
use wallet_shared::{AccountId, Amount, Currency, TransactionId};

/// One participant holding both accounts and the decision: the rules as
/// the participant runs them, one local transaction per message.
struct Node {
    tables: Tables,
    now: DateTime<Utc>,
}

impl Node {
    fn tx<T>(&mut self, keys: Keys, rules: impl FnOnce(&mut Working) -> Result<T, Broken>) -> T {
        let now = self.now;
        self.tables
            .transaction(now, 1000, &keys, rules)
            .expect("the rules accept it")
            .0
    }

    /// Delivers one message, as the participant's routes do.
    fn deliver(&mut self, message: &Message) -> Option<Reply> {
        Some(match message {
            Message::Begin(b) => Reply::Begun(judged(Ok(self.tx(
                decisions::keys_with(b.spec.transaction_id, b.prepare.as_ref()),
                |w| decisions::begin_and_prepare(w, b, b.prepare.as_ref()),
            )))),
            Message::Execute(_) => unreachable!("these transfers run in two phases"),
            Message::Prepare(both) => Reply::Voted(
                both.iter()
                    .map(|l| {
                        judged(Ok(self.tx(legs::keys(std::slice::from_ref(l)), |w| {
                            legs::prepare(w, l)
                        })))
                    })
                    .collect(),
            ),
            Message::Decide(d) => {
                let (record, applied) = self.tx(
                    decisions::keys_with(d.transaction_id, d.apply.as_ref()),
                    |w| decisions::decide_and_apply(w, d, d.apply.as_ref()),
                );
                Reply::Decided(
                    record
                        .ok_or_else(|| coordinator::client::CallError::Unknown("no record".into())),
                    applied,
                )
            }
            Message::Commit(legs_) => Reply::Applied(self.finish(legs_, Finish::Commit)),
            Message::Abort(legs_) => Reply::Applied(self.finish(legs_, Finish::Abort)),
            Message::Complete(r) => {
                self.tx(decisions::keys([r.transaction_id]), |w| {
                    decisions::complete(w, r.transaction_id);
                    Ok(())
                });
                return None;
            }
        })
    }

    fn finish(
        &mut self,
        legs_: &[Leg],
        how: Finish,
    ) -> Vec<Result<LegState, coordinator::client::CallError>> {
        legs_
            .iter()
            .map(|l| {
                Ok(self.tx(legs::keys(std::slice::from_ref(l)), |w| {
                    legs::finish(w, l, how)
                }))
            })
            .collect()
    }

    fn posted(&self, account: &str) -> (i64, i64) {
        let a = &self.tables.accounts[&AccountId::parse(account).unwrap()];
        (a.posted, a.held)
    }
}

/// A machine and the message it waits to have answered.
struct Run {
    machine: Machine,
    pending: Vec<Effect>,
    ending: Option<Ending>,
}

impl Run {
    fn new((machine, first): (Machine, Effect)) -> Self {
        Run {
            machine,
            pending: vec![first],
            ending: None,
        }
    }

    /// Delivers the run's next message and feeds the reply back: one step.
    fn step(&mut self, node: &mut Node) {
        while let Some(effect) = (!self.pending.is_empty()).then(|| self.pending.remove(0)) {
            match effect {
                Effect::CrashPoint(_) => continue,
                Effect::Done(ending) => {
                    self.ending = Some(ending);
                    return;
                }
                Effect::Send(message) => {
                    if let Some(reply) = node.deliver(&message) {
                        let next = self.machine.on(reply);
                        self.pending.extend(next);
                        return;
                    }
                }
            }
        }
    }

    fn run_out(&mut self, node: &mut Node) -> &Ending {
        while self.ending.is_none() {
            self.step(node);
        }
        self.ending.as_ref().unwrap()
    }
}

fn setup() -> (Node, Plan) {
    let mut node = Node {
        tables: Tables::default(),
        now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
    };
    let usd = Currency::parse("USD").unwrap();
    for (i, name) in ["alice", "bob"].into_iter().enumerate() {
        let open = OpenAccount {
            account_id: AccountId::parse(name).unwrap(),
            partition: 1,
            currency: usd,
            owner: None,
        };
        node.tx(movements::open_keys(&open), |w| movements::open(w, &open))
            .expect("opened");
        let deposit = MovementRequest {
            movement: Movement {
                transaction_id: TransactionId(uuid::Uuid::from_u128(100 + i as u128)),
                kind: MovementKind::Deposit,
                account_id: open.account_id.clone(),
                partition: 1,
                amount: Amount::from_minor(10_000).unwrap(),
                currency: usd,
                tenant: None,
            },
            claim: None,
        };
        node.tx(movements::request_keys(&deposit), |w| {
            movements::apply_request(w, &deposit)
        })
        .expect("funded");
    }
    let spec = TransferSpec {
        transaction_id: TransactionId(uuid::Uuid::from_u128(7)),
        from: AccountId::parse("alice").unwrap(),
        to: AccountId::parse("bob").unwrap(),
        amount: Amount::from_minor(2_500).unwrap(),
        currency: usd,
        tenant: None,
    };
    let plan = Plan {
        legs: Leg::both(&spec, 1, 1, 1),
        begin: Begin {
            spec,
            partition: 1,
            lease_ms: 5_000,
            attempt: uuid::Uuid::from_u128(1),
            kind: RecordKind::Transfer,
            prepare: None,
        },
        one_node: false,
        along: None,
    };
    (node, plan)
}

/// The record as it stands, for recovery to start from.
fn record(node: &Node, plan: &Plan) -> wallet_shared::protocol::TransferRecord {
    node.tables.transfers[&plan.begin.spec.transaction_id]
        .record
        .clone()
}

/// One decision, both legs applied it, nothing held, money as decided.
fn assert_settled(node: &Node, plan: &Plan, want: TransferState) {
    let r = record(node, plan);
    assert_eq!(r.state, want);
    let leg_state = match want {
        TransferState::Committed => LegState::Committed,
        _ => LegState::Aborted,
    };
    for leg in &plan.legs {
        assert_eq!(node.tables.legs[&legs::key(leg)].state, leg_state);
    }
    let expected = match want {
        TransferState::Committed => [(7_500, 0), (12_500, 0)],
        _ => [(10_000, 0), (10_000, 0)],
    };
    assert_eq!([node.posted("alice"), node.posted("bob")], expected);
    // Every balance is still the fold of its events.
    for (id, a) in &node.tables.accounts {
        let log = &node.tables.events[id];
        assert_eq!(
            wallet_shared::protocol::replay(log),
            (a.posted, a.held, a.pending_credit),
            "{id}"
        );
    }
}

/// Begins and prepares, then the coordinator stops: a stuck transfer.
fn stuck() -> (Node, Plan) {
    let (mut node, plan) = setup();
    let mut live = Run::new(Machine::new(plan.clone()));
    live.step(&mut node); // begin
    live.step(&mut node); // prepare both legs
    assert_eq!(node.posted("alice"), (10_000, 2_500), "the debit is held");
    (node, plan)
}

#[test]
fn two_resolvers_on_one_stuck_transfer_abort_it_once() {
    let (mut node, plan) = stuck();
    node.now += Duration::seconds(6);
    let start = || Machine::recover(record(&node, &plan), plan.legs.clone());
    let mut a = Run::new(start());
    let mut b = Run::new(start());
    a.step(&mut node); // A: decide abort (wins)
    b.step(&mut node); // B: decide abort (reads A's)
    b.step(&mut node); // B: abort both legs
    a.step(&mut node); // A: abort both legs again (idempotent)
    for run in [&mut a, &mut b] {
        assert!(matches!(
            run.run_out(&mut node),
            Ending::Decided { finished: true, .. }
        ));
    }
    assert_settled(&node, &plan, TransferState::Aborted);
}

#[test]
fn a_live_commit_and_a_recovery_abort_agree_on_whichever_came_first() {
    // The live coordinator decides first: recovery applies its commit.
    let (mut node, plan) = setup();
    let mut live = Run::new(Machine::new(plan.clone()));
    live.step(&mut node); // begin
    live.step(&mut node); // prepare
    node.now += Duration::seconds(6);
    let mut recovery = Run::new(Machine::recover(record(&node, &plan), plan.legs.clone()));
    live.step(&mut node); // decide commit
    recovery.step(&mut node); // decide abort: loses, reads the commit
    recovery.step(&mut node); // commits both legs
    live.step(&mut node); // commits both legs again
    assert!(
        matches!(live.run_out(&mut node), Ending::Decided { record, .. } if record.state == TransferState::Committed)
    );
    assert!(
        matches!(recovery.run_out(&mut node), Ending::Decided { record, .. } if record.state == TransferState::Committed)
    );
    assert_settled(&node, &plan, TransferState::Committed);

    // Recovery decides first: the live coordinator's commit loses and it
    // applies the abort; its client hears the abort, never a commit.
    let (mut node, plan) = setup();
    let mut live = Run::new(Machine::new(plan.clone()));
    live.step(&mut node);
    live.step(&mut node);
    node.now += Duration::seconds(6);
    let mut recovery = Run::new(Machine::recover(record(&node, &plan), plan.legs.clone()));
    recovery.step(&mut node); // decide abort (wins)
    live.step(&mut node); // decide commit: loses, reads the abort
    match live.run_out(&mut node) {
        Ending::Decided { record, .. } => assert_eq!(record.state, TransferState::Aborted),
        other => panic!("{other:?}"),
    }
    recovery.run_out(&mut node);
    assert_settled(&node, &plan, TransferState::Aborted);
}

#[test]
fn a_takeover_after_the_lease_and_the_first_coordinator_waking_up_commit_once() {
    let (mut node, plan) = setup();
    let mut first = Run::new(Machine::new(plan.clone()));
    first.step(&mut node); // begin (lease for 5 s)
                           // Within the lease, a retry by another coordinator is refused.
    let mut retry_plan = plan.clone();
    retry_plan.begin.attempt = uuid::Uuid::from_u128(2);
    let mut early = Run::new(Machine::new(retry_plan.clone()));
    assert!(matches!(
        early.run_out(&mut node),
        Ending::Early(coordinator::machine::TransferOutcome::Refused(r)) if r.code == wallet_shared::ErrorCode::InProgress
    ));
    // After it, the retry takes the transfer over and runs it to the end...
    node.now += Duration::seconds(6);
    let mut second = Run::new(Machine::new(retry_plan));
    assert!(
        matches!(second.run_out(&mut node), Ending::Decided { record, finished: true } if record.state == TransferState::Committed)
    );
    // ...and the first wakes up and carries on: whatever its prepares
    // answer, its decision loses to the commit, and applying the commit
    // again changes nothing.
    match first.run_out(&mut node) {
        Ending::Decided { record, .. } => assert_eq!(record.state, TransferState::Committed),
        other => panic!("{other:?}"),
    }
    assert_settled(&node, &plan, TransferState::Committed);
}
