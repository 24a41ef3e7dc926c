//! The participant's pure rules (`decisions`, `legs`, `movements`, `ledger`
//! over a `model::Working` set), driven without I/O: [`Db`] loads a working
//! set from tables in memory with the keys each request names (as the
//! stores do), runs the rules and writes back what they changed.
//!
//! Properties (proptest; `PROPTEST_CASES` sets how many cases each runs):
//! - any sequence of opens, deposits, withdrawals and transfer steps
//!   (duplicated, reordered, coordinators stopping at any step, aborts
//!   before prepares, stray commits of aborted or unseen legs, prepares with
//!   another body) keeps every balance row's invariants, keeps it equal to
//!   the fold of its events and to a reference model built from the rules'
//!   answers alone, and conserves money per currency; after recovery nothing
//!   is held and each transfer's legs are both committed or neither;
//! - a movement's row on its account's node keeps its first body and answer
//!   without its claim;
//! - every operation applied twice leaves what applying it once left, and
//!   answers the same;
//! - a batch (what every internal call is) equals its items one by one;
//! - `decide` is a compare-and-set out of `preparing`; `begin` answers by
//!   body, decision, lease and attempt as `docs/protocol.md` says.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::slice;

use chrono::{DateTime, Duration, TimeZone, Utc};
use participant::memory::Tables;
use participant::model::Broken;
use participant::model::{self, AccountRow, Keys, LegRow, RowRole, Working};
use participant::{decisions, legs, movements};
use proptest::prelude::*;
use uuid::Uuid;
use wallet_shared::protocol::{
    replay, AccountBalance, Begin, Begun, Decision, FeedKind, Leg, LegRole, LegState, Movement,
    MovementKind, MovementRequest, OpenAccount, RecordKind, TransferRecord, TransferSpec,
    TransferState, Verdict, Vote,
};
use wallet_shared::{AccountId, Amount, Currency, ErrorCode, Rejection, TransactionId};

// ---- the tables, and one local transaction over them ---------------------

/// The participant's tables in memory (`participant::memory`, the
/// simulation's store too) at a clock the test moves.
#[derive(Debug, Clone, PartialEq)]
struct Db {
    now: DateTime<Utc>,
    tables: Tables,
}

impl std::ops::Deref for Db {
    type Target = Tables;
    fn deref(&self) -> &Tables {
        &self.tables
    }
}

impl std::ops::DerefMut for Db {
    fn deref_mut(&mut self) -> &mut Tables {
        &mut self.tables
    }
}

/// Small, so that short sequences write snapshots too.
const SNAPSHOT_EVERY: i64 = 3;

impl Db {
    fn new() -> Self {
        Db {
            now: epoch(),
            tables: Tables::default(),
        }
    }

    /// One local transaction over the tables, all or nothing; also answers
    /// whether anything was written.
    fn run<T>(
        &mut self,
        keys: Keys,
        rules: impl FnOnce(&mut Working) -> Result<T, Broken>,
    ) -> Result<(T, bool), Broken> {
        let now = self.now;
        self.tables.transaction(now, SNAPSHOT_EVERY, &keys, rules)
    }

    /// The tables with the feed in a canonical order (a batch writes its
    /// aborted transfers after all its events, one by one after each).
    fn canonical(&self) -> Db {
        let mut db = self.clone();
        db.outbox.iter_mut().for_each(|e| e.position = 0);
        db.outbox.sort_by_key(|e| format!("{e:?}"));
        db
    }
}

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn tid(n: u128) -> TransactionId {
    TransactionId(Uuid::from_u128(n))
}

fn attempt(i: usize) -> Uuid {
    Uuid::from_u128(0xa77e_0000 + i as u128)
}

fn currency(i: usize) -> Currency {
    Currency::parse(["USD", "JPY"][i]).unwrap()
}

fn account(i: usize) -> AccountId {
    AccountId::parse(format!("acct-{i}")).unwrap()
}

fn amount(minor: i64) -> Amount {
    Amount::from_minor(minor).unwrap()
}

fn aborted(why: &str) -> Decision {
    Decision::Abort {
        reason: Rejection::new(ErrorCode::TransferAborted, why),
    }
}

// ---- the universe a case runs in -----------------------------------------

#[derive(Debug, Clone)]
struct TransferPlan {
    from: usize,
    to: usize,
    amount: i64,
    currency: usize,
    /// Run as `execute` (decision and both accounts on one node), not 2PC.
    one_phase: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct MovementPlan {
    kind: MovementKind,
    account: usize,
    amount: i64,
    currency: usize,
}

/// The accounts, transfers and movement ids one case uses. Each movement id
/// has two bodies (the second for reuses of the id; often it is the same).
#[derive(Debug, Clone)]
struct Universe {
    /// Each account's currency, as its opening asks for it.
    accounts: Vec<usize>,
    transfers: Vec<TransferPlan>,
    movements: Vec<[MovementPlan; 2]>,
}

impl Universe {
    fn transfer_id(tx: usize) -> TransactionId {
        tid(0x1000 + tx as u128)
    }

    fn movement_id(id: usize) -> TransactionId {
        tid(0x2000 + id as u128)
    }

    fn spec(&self, tx: usize) -> TransferSpec {
        let p = &self.transfers[tx];
        TransferSpec {
            transaction_id: Self::transfer_id(tx),
            from: account(p.from),
            to: account(p.to),
            amount: amount(p.amount),
            currency: currency(p.currency),
            tenant: None,
        }
    }

    fn legs(&self, tx: usize) -> [Leg; 2] {
        Leg::both(&self.spec(tx), 0, 0, 0)
    }

    fn leg(&self, tx: usize, role: LegRole) -> Leg {
        let [debit, credit] = self.legs(tx);
        match role {
            LegRole::Debit => debit,
            LegRole::Credit => credit,
        }
    }

    /// The leg with another amount: a body this id was never begun with.
    fn other_leg(&self, tx: usize, role: LegRole) -> Leg {
        let mut leg = self.leg(tx, role);
        let minor = leg.amount.minor();
        leg.amount = amount(if minor == i64::MAX {
            minor - 1
        } else {
            minor + 1
        });
        leg
    }

    fn begin(&self, tx: usize, attempt_: usize, lease_ms: u64) -> Begin {
        Begin {
            spec: self.spec(tx),
            partition: 0,
            lease_ms,
            attempt: attempt(attempt_),
            kind: RecordKind::Transfer,
        }
    }

    fn movement(&self, id: usize, variant: usize) -> Movement {
        let p = &self.movements[id][variant];
        Movement {
            transaction_id: Self::movement_id(id),
            kind: p.kind,
            account_id: account(p.account),
            partition: 0,
            amount: amount(p.amount),
            currency: currency(p.currency),
            tenant: None,
        }
    }

    fn claimed(&self, id: usize, variant: usize, attempt_: usize) -> MovementRequest {
        let m = self.movement(id, variant);
        MovementRequest {
            claim: Some(m.claim(0, 5000, attempt(attempt_))),
            movement: m,
        }
    }

    fn open(&self, account_: usize, wrong_currency: bool) -> OpenAccount {
        OpenAccount {
            account_id: account(account_),
            partition: 0,
            currency: currency(self.accounts[account_] ^ usize::from(wrong_currency)),
            owner: None,
        }
    }
}

/// Mostly small amounts (so funds run out), now and then one near
/// `i64::MAX` (so balances would overflow).
fn an_amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        20 => 1i64..=400,
        1 => Just(i64::MAX),
        1 => (i64::MAX / 2)..=i64::MAX,
    ]
}

fn a_currency() -> impl Strategy<Value = usize> {
    prop_oneof![5 => Just(0usize), 1 => Just(1usize)]
}

fn a_role() -> impl Strategy<Value = LegRole> {
    prop_oneof![Just(LegRole::Debit), Just(LegRole::Credit)]
}

fn a_universe() -> impl Strategy<Value = Universe> {
    (2usize..=4).prop_flat_map(|n| {
        let transfer = (0..n, 1..n, an_amount(), a_currency(), any::<bool>()).prop_map(
            move |(from, step, amount, currency, one_phase)| TransferPlan {
                from,
                to: (from + step) % n,
                amount,
                currency,
                one_phase,
            },
        );
        let body = (
            prop_oneof![3 => Just(MovementKind::Deposit), 2 => Just(MovementKind::Withdrawal)],
            0..n,
            an_amount(),
            a_currency(),
        )
            .prop_map(|(kind, account, amount, currency)| MovementPlan {
                kind,
                account,
                amount,
                currency,
            })
            .boxed();
        // The second body is the first one half the time: a plain retry.
        let movement = (body.clone(), body, any::<bool>()).prop_map(|(a, b, same)| {
            if same {
                [a.clone(), a]
            } else {
                [a, b]
            }
        });
        (
            prop::collection::vec(a_currency(), n),
            prop::collection::vec(50i64..2000, n),
            prop::collection::vec(transfer, 1..=5),
            prop::collection::vec(movement, 1..=5),
        )
            .prop_map(|(accounts, funding, transfers, mut movements)| {
                // The last n movement ids fund the accounts, one each.
                for (account, (&currency, amount)) in accounts.iter().zip(funding).enumerate() {
                    let deposit = MovementPlan {
                        kind: MovementKind::Deposit,
                        account,
                        amount,
                        currency,
                    };
                    movements.push([deposit.clone(), deposit]);
                }
                Universe {
                    accounts,
                    transfers,
                    movements,
                }
            })
    })
}

// ---- one operation: its keys and its rules --------------------------------

/// One request to the participant, as its router runs it: these keys, then
/// this rule.
#[derive(Debug, Clone)]
enum Raw {
    Open {
        account: usize,
        wrong_currency: bool,
    },
    /// A movement without its claim (the claim was made at another node).
    Apply {
        id: usize,
        variant: usize,
    },
    /// A movement carrying its claim (the decision partition is local).
    ApplyClaimed {
        id: usize,
        variant: usize,
        attempt: usize,
    },
    /// The claim of a movement's id, made at its decision partition.
    Claim {
        id: usize,
        variant: usize,
        attempt: usize,
    },
    DecideClaim {
        id: usize,
        commit: bool,
    },
    Begin {
        tx: usize,
        attempt: usize,
        lease_ms: u64,
    },
    Decide {
        tx: usize,
        commit: bool,
    },
    Complete {
        tx: usize,
    },
    Prepare {
        tx: usize,
        role: LegRole,
    },
    /// A prepare of the leg with another body.
    PrepareOther {
        tx: usize,
        role: LegRole,
    },
    Finish {
        tx: usize,
        role: LegRole,
        commit: bool,
    },
    Execute {
        tx: usize,
        attempt: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Opened(Result<(bool, AccountBalance), Rejection>),
    Moved(Result<AccountBalance, Rejection>),
    Began(Verdict<Begun>),
    Decided(Option<TransferRecord>),
    Completed,
    Voted(Vote),
    Finished(LegState),
}

/// What a decision does to a leg, from the test's coin.
fn finish(commit: bool) -> legs::Finish {
    if commit {
        legs::Finish::Commit
    } else {
        legs::Finish::Abort
    }
}

impl Raw {
    fn decision(commit: bool) -> Decision {
        if commit {
            Decision::Commit
        } else {
            aborted("the test aborts it")
        }
    }

    fn keys(&self, u: &Universe) -> Keys {
        match *self {
            Raw::Open {
                account,
                wrong_currency,
            } => movements::open_keys(&u.open(account, wrong_currency)),
            Raw::Apply { id, variant } => movements::request_keys(&MovementRequest {
                movement: u.movement(id, variant),
                claim: None,
            }),
            Raw::ApplyClaimed {
                id,
                variant,
                attempt,
            } => movements::request_keys(&u.claimed(id, variant, attempt)),
            Raw::Claim { id, .. } | Raw::DecideClaim { id, .. } => {
                decisions::keys([Universe::movement_id(id)])
            }
            Raw::Begin { tx, .. } | Raw::Decide { tx, .. } | Raw::Complete { tx } => {
                decisions::keys([Universe::transfer_id(tx)])
            }
            Raw::Prepare { tx, role }
            | Raw::PrepareOther { tx, role }
            | Raw::Finish { tx, role, .. } => legs::keys(slice::from_ref(&u.leg(tx, role))),
            Raw::Execute { tx, attempt } => {
                decisions::execute_keys(&u.begin(tx, attempt, 5000), &u.legs(tx))
            }
        }
    }

    fn step(&self, w: &mut Working, u: &Universe) -> Result<Answer, Broken> {
        Ok(match *self {
            Raw::Open {
                account,
                wrong_currency,
            } => Answer::Opened(movements::open(w, &u.open(account, wrong_currency))?),
            Raw::Apply { id, variant } => Answer::Moved(movements::apply_request(
                w,
                &MovementRequest {
                    movement: u.movement(id, variant),
                    claim: None,
                },
            )?),
            Raw::ApplyClaimed {
                id,
                variant,
                attempt,
            } => Answer::Moved(movements::apply_request(
                w,
                &u.claimed(id, variant, attempt),
            )?),
            Raw::Claim {
                id,
                variant,
                attempt,
            } => {
                let claim = u.claimed(id, variant, attempt).claim.expect("a claim");
                Answer::Began(decisions::begin(w, &claim)?)
            }
            Raw::DecideClaim { id, commit } => Answer::Decided(decisions::decide(
                w,
                Universe::movement_id(id),
                &Self::decision(commit),
            )?),
            Raw::Begin {
                tx,
                attempt,
                lease_ms,
            } => Answer::Began(decisions::begin(w, &u.begin(tx, attempt, lease_ms))?),
            Raw::Decide { tx, commit } => Answer::Decided(decisions::decide(
                w,
                Universe::transfer_id(tx),
                &Self::decision(commit),
            )?),
            Raw::Complete { tx } => {
                decisions::complete(w, Universe::transfer_id(tx));
                Answer::Completed
            }
            Raw::Prepare { tx, role } => Answer::Voted(legs::prepare(w, &u.leg(tx, role))?),
            Raw::PrepareOther { tx, role } => {
                Answer::Voted(legs::prepare(w, &u.other_leg(tx, role))?)
            }
            Raw::Finish { tx, role, commit } => {
                Answer::Finished(legs::finish(w, &u.leg(tx, role), finish(commit))?)
            }
            Raw::Execute { tx, attempt } => Answer::Began(decisions::execute(
                w,
                &u.begin(tx, attempt, 5000),
                &u.legs(tx),
            )?),
        })
    }

    /// Runs alone, in its own transaction.
    fn run(&self, db: &mut Db, u: &Universe) -> Result<(Answer, bool), TestCaseError> {
        db.run(self.keys(u), |w| self.step(w, u))
            .map_err(|e| TestCaseError::fail(format!("{self:?} failed: {e}")))
    }
}

/// Many requests of one kind in one transaction, as `Store::batch` runs them.
fn run_batch(db: &mut Db, u: &Universe, ops: &[Raw]) -> Result<Vec<Answer>, TestCaseError> {
    let mut keys = Keys::default();
    for op in ops {
        let k = op.keys(u);
        keys.transfers.extend(k.transfers);
        keys.legs.extend(k.legs);
        keys.accounts.extend(k.accounts);
    }
    db.run(keys, |w| ops.iter().map(|op| op.step(w, u)).collect())
        .map(|(answers, _)| answers)
        .map_err(|e| TestCaseError::fail(format!("batch {ops:?} failed: {e}")))
}

fn a_raw(u: &Universe) -> impl Strategy<Value = Raw> {
    let (n, t, m) = (u.accounts.len(), u.transfers.len(), u.movements.len());
    let variant = prop_oneof![3 => Just(0usize), 1 => Just(1usize)];
    let one_phase: Vec<usize> = (0..t).filter(|&i| u.transfers[i].one_phase).collect();
    let execute = if one_phase.is_empty() {
        (0..t, 0..3usize)
            .prop_map(|(tx, attempt)| Raw::Begin {
                tx,
                attempt,
                lease_ms: 5000,
            })
            .boxed()
    } else {
        (prop::sample::select(one_phase), 0..3usize)
            .prop_map(|(tx, attempt)| Raw::Execute { tx, attempt })
            .boxed()
    };
    prop_oneof![
        (0..n, prop::bool::weighted(0.2)).prop_map(|(account, wrong_currency)| Raw::Open {
            account,
            wrong_currency
        }),
        (0..m, variant.clone()).prop_map(|(id, variant)| Raw::Apply { id, variant }),
        (0..m, variant.clone(), 0..3usize).prop_map(|(id, variant, attempt)| {
            Raw::ApplyClaimed {
                id,
                variant,
                attempt,
            }
        }),
        (0..m, variant, 0..3usize).prop_map(|(id, variant, attempt)| Raw::Claim {
            id,
            variant,
            attempt
        }),
        (0..m, any::<bool>()).prop_map(|(id, commit)| Raw::DecideClaim { id, commit }),
        (0..t, 0..3usize, a_lease()).prop_map(|(tx, attempt, lease_ms)| Raw::Begin {
            tx,
            attempt,
            lease_ms
        }),
        (0..t, any::<bool>()).prop_map(|(tx, commit)| Raw::Decide { tx, commit }),
        (0..t).prop_map(|tx| Raw::Complete { tx }),
        (0..t, a_role(), any::<bool>()).prop_map(|(tx, role, other)| if other {
            Raw::PrepareOther { tx, role }
        } else {
            Raw::Prepare { tx, role }
        }),
        (0..t, a_role(), any::<bool>()).prop_map(|(tx, role, commit)| Raw::Finish {
            tx,
            role,
            commit
        }),
        execute,
    ]
}

fn a_lease() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), Just(1000), Just(5000)]
}

// ---- what a client and a coordinator do: a reference model -----------------

/// One step of the workload. Transfer steps follow the protocol as a
/// coordinator does (decide commit only on two yes votes, deliver only the
/// decision), in any order and any number of times; `StrayCommit` is a
/// commit of a leg that is aborted or was never prepared.
#[derive(Debug, Clone)]
enum Op {
    Open {
        account: usize,
        wrong_currency: bool,
    },
    /// A deposit or withdrawal with its claim (`remote`: claim, movement
    /// and decision as three requests).
    Move {
        id: usize,
        variant: usize,
        remote: bool,
    },
    Begin {
        tx: usize,
        attempt: usize,
        lease_ms: u64,
    },
    Prepare {
        tx: usize,
        role: LegRole,
    },
    Decide {
        tx: usize,
        commit: bool,
    },
    Deliver {
        tx: usize,
        role: LegRole,
    },
    StrayCommit {
        tx: usize,
        role: LegRole,
    },
    /// A prepare of a leg already there, with another body.
    PrepareOther {
        tx: usize,
        role: LegRole,
    },
    Complete {
        tx: usize,
    },
    /// A one-phase transfer's one request (on a two-phase transfer: a
    /// decision to commit, if both legs voted yes).
    Execute {
        tx: usize,
        attempt: usize,
    },
    /// A coordinator runs a transfer from `begin` on, and stops (crashes)
    /// after `steps` of its 7 steps.
    Coordinate {
        tx: usize,
        attempt: usize,
        steps: usize,
    },
    Tick {
        ms: i64,
    },
}

impl Op {
    /// The transfer a step is about, and the attempt it names (0: none).
    fn transfer(&self) -> Option<(usize, usize)> {
        match *self {
            Op::Begin { tx, attempt, .. }
            | Op::Execute { tx, attempt }
            | Op::Coordinate { tx, attempt, .. } => Some((tx, attempt)),
            Op::Prepare { tx, .. }
            | Op::Decide { tx, .. }
            | Op::Deliver { tx, .. }
            | Op::StrayCommit { tx, .. }
            | Op::PrepareOther { tx, .. } => Some((tx, 0)),
            _ => None,
        }
    }
}

fn an_op(n: usize, t: usize, m: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..n, prop::bool::weighted(0.1)).prop_map(|(account, wrong_currency)| Op::Open { account, wrong_currency }),
        5 => (0..m, prop_oneof![4 => Just(0usize), 1 => Just(1usize)], any::<bool>())
            .prop_map(|(id, variant, remote)| Op::Move { id, variant, remote }),
        1 => (0..t, 0..3usize, a_lease()).prop_map(|(tx, attempt, lease_ms)| Op::Begin { tx, attempt, lease_ms }),
        4 => (0..t, a_role()).prop_map(|(tx, role)| Op::Prepare { tx, role }),
        2 => (0..t, prop::bool::weighted(0.8)).prop_map(|(tx, commit)| Op::Decide { tx, commit }),
        4 => (0..t, a_role()).prop_map(|(tx, role)| Op::Deliver { tx, role }),
        1 => (0..t, a_role()).prop_map(|(tx, role)| Op::StrayCommit { tx, role }),
        1 => (0..t, a_role()).prop_map(|(tx, role)| Op::PrepareOther { tx, role }),
        1 => (0..t).prop_map(|tx| Op::Complete { tx }),
        2 => (0..t, 0..3usize).prop_map(|(tx, attempt)| Op::Execute { tx, attempt }),
        5 => (0..t, 0..3usize, 1usize..=7).prop_map(|(tx, attempt, steps)| Op::Coordinate { tx, attempt, steps }),
        1 => (-3000i64..3000).prop_map(|ms| Op::Tick { ms }),
    ]
}

/// Most accounts opened and funded first (the rest stay unknown), then
/// up to `max_ops` steps.
fn a_workload(max_ops: usize) -> impl Strategy<Value = (Universe, Vec<Op>)> {
    a_universe().prop_flat_map(move |u| {
        let (n, m) = (u.accounts.len(), u.movements.len());
        let setup = prop::collection::vec(prop::bool::weighted(0.9), n).prop_map(move |open| {
            let mut ops = Vec::new();
            for (account, _) in open.iter().enumerate().filter(|(_, &o)| o) {
                ops.push(Op::Open {
                    account,
                    wrong_currency: false,
                });
                ops.push(Op::Move {
                    id: m - n + account,
                    variant: 0,
                    remote: false,
                });
            }
            ops
        });
        let ops = prop::collection::vec(an_op(n, u.transfers.len(), m), 0..=max_ops);
        (
            Just(u),
            (setup, ops).prop_map(|(mut setup, ops)| {
                setup.extend(ops);
                setup
            }),
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Balance {
    currency: usize,
    posted: i64,
    held: i64,
    pending: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegModel {
    Prepared,
    Committed,
    Aborted(ErrorCode),
}

#[derive(Debug, Clone, Copy)]
struct RecordModel {
    state: TransferState,
    reason: Option<ErrorCode>,
    completed: bool,
    owner: usize,
    until: DateTime<Utc>,
}

/// What the participant's tables must say, built from the protocol and the
/// answers alone (never from reading the tables).
#[derive(Debug, Default)]
struct Model {
    accounts: BTreeMap<usize, Balance>,
    legs: HashMap<(usize, LegRole), LegModel>,
    records: BTreeMap<usize, RecordModel>,
    /// Per movement id: the body that claimed it, and its outcome.
    claims: BTreeMap<usize, (MovementPlan, Result<(), ErrorCode>)>,
    /// Per movement row on the account's node, `(id, is a deposit)`: the
    /// body applied or refused there, and its outcome.
    rows: HashMap<(usize, bool), (MovementPlan, Result<(), ErrorCode>)>,
    /// Per currency: deposits minus withdrawals applied.
    brought: [i128; 2],
}

impl Model {
    fn can_debit(&self, account: usize, amount: i64, currency: usize) -> Result<(), ErrorCode> {
        let a = self
            .accounts
            .get(&account)
            .ok_or(ErrorCode::AccountNotFound)?;
        if a.currency != currency {
            Err(ErrorCode::CurrencyMismatch)
        } else if a.posted - a.held < amount {
            Err(ErrorCode::InsufficientFunds)
        } else {
            Ok(())
        }
    }

    fn can_credit(&self, account: usize, amount: i64, currency: usize) -> Result<(), ErrorCode> {
        let a = self
            .accounts
            .get(&account)
            .ok_or(ErrorCode::AccountNotFound)?;
        if a.currency != currency {
            Err(ErrorCode::CurrencyMismatch)
        } else if i128::from(a.posted) + i128::from(a.pending) + i128::from(amount)
            > i128::from(i64::MAX)
        {
            Err(ErrorCode::BalanceOverflow)
        } else {
            Ok(())
        }
    }

    /// A movement's verdict on its account; applied when it passes.
    fn apply(&mut self, body: &MovementPlan) -> Result<(), ErrorCode> {
        let (verdict, sign) = match body.kind {
            MovementKind::Deposit => (self.can_credit(body.account, body.amount, body.currency), 1),
            MovementKind::Withdrawal => {
                (self.can_debit(body.account, body.amount, body.currency), -1)
            }
        };
        if verdict.is_ok() {
            self.account(body.account).posted += sign * body.amount;
            self.brought[body.currency] += i128::from(sign * body.amount);
        }
        verdict
    }

    fn account(&mut self, i: usize) -> &mut Balance {
        self.accounts.get_mut(&i).expect("a model account")
    }
}

fn code<T>(r: &Result<T, Rejection>) -> Result<(), ErrorCode> {
    r.as_ref().map(|_| ()).map_err(|e| e.code)
}

fn vote_code(v: &Vote) -> Result<(), ErrorCode> {
    code(v)
}

/// A begin's answer as the tests compare it: what it began, or the code of
/// its refusal.
fn began(v: &Verdict<Begun>) -> Result<&Begun, ErrorCode> {
    v.as_ref().map_err(|r| r.code)
}

/// The client, the coordinator and recovery, over one `Db`, checked
/// against the model after every step.
struct Run<'a> {
    u: &'a Universe,
    db: Db,
    model: Model,
}

impl<'a> Run<'a> {
    fn new(u: &'a Universe) -> Self {
        Run {
            u,
            db: Db::new(),
            model: Model::default(),
        }
    }

    fn raw(&mut self, op: Raw) -> Result<(Answer, bool), TestCaseError> {
        op.run(&mut self.db, self.u)
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        // A one-phase transfer is one request, whatever step is drawn.
        if let Some((tx, attempt)) = op.transfer() {
            if self.u.transfers[tx].one_phase {
                self.execute(tx, attempt)?;
                return self.check();
            }
        }
        match *op {
            Op::Open {
                account,
                wrong_currency,
            } => self.open(account, wrong_currency)?,
            Op::Move {
                id,
                variant,
                remote,
            } => self.movement(id, variant, remote)?,
            Op::Begin {
                tx,
                attempt,
                lease_ms,
            } => self.begin(tx, attempt, lease_ms)?,
            Op::Prepare { tx, role } => self.prepare(tx, role)?,
            Op::Decide { tx, commit } => self.decide(tx, commit)?,
            Op::Execute { tx, .. } => self.decide(tx, true)?,
            Op::Deliver { tx, role } => self.deliver(tx, role)?,
            Op::StrayCommit { tx, role } => self.stray_commit(tx, role)?,
            Op::PrepareOther { tx, role } => self.prepare_other(tx, role)?,
            Op::Complete { tx } => self.complete(tx)?,
            Op::Coordinate { tx, attempt, steps } => self.coordinate(tx, attempt, steps)?,
            Op::Tick { ms } => self.db.now += Duration::milliseconds(ms),
        }
        self.check()
    }

    fn open(&mut self, account: usize, wrong_currency: bool) -> Result<(), TestCaseError> {
        let want = self.u.accounts[account] ^ usize::from(wrong_currency);
        let (answer, _) = self.raw(Raw::Open {
            account,
            wrong_currency,
        })?;
        let Answer::Opened(answer) = answer else {
            unreachable!()
        };
        match self.model.accounts.get(&account).copied() {
            Some(existing) if existing.currency != want => {
                prop_assert_eq!(code(&answer), Err(ErrorCode::AccountExists));
            }
            existing => {
                let (created, balance) = answer.map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(created, existing.is_none());
                let b = *self.model.accounts.entry(account).or_insert(Balance {
                    currency: want,
                    posted: 0,
                    held: 0,
                    pending: 0,
                });
                prop_assert_eq!(balance.currency, currency(want));
                prop_assert_eq!(
                    (balance.posted, balance.held, balance.pending_credit),
                    (b.posted, b.held, b.pending)
                );
            }
        }
        Ok(())
    }

    /// A deposit or withdrawal as the coordinator runs it: the claim carried
    /// with the movement, or (`remote`) claim, movement and decision as
    /// three requests.
    fn movement(&mut self, id: usize, variant: usize, remote: bool) -> Result<(), TestCaseError> {
        let body = self.u.movements[id][variant].clone();
        let expected = match self.model.claims.get(&id).cloned() {
            Some((winner, _)) if winner != body => Err(ErrorCode::IdempotencyKeyReused),
            Some((_, outcome)) => outcome,
            None => {
                let verdict = self.model.apply(&body);
                self.model.claims.insert(id, (body.clone(), verdict));
                self.model.rows.insert(
                    (id, body.kind == MovementKind::Deposit),
                    (body.clone(), verdict),
                );
                verdict
            }
        };
        let outcome = if remote {
            let (began, _) = self.raw(Raw::Claim {
                id,
                variant,
                attempt: variant,
            })?;
            match began {
                Answer::Began(Err(r)) if r.code == ErrorCode::IdempotencyKeyReused => {
                    Err(ErrorCode::IdempotencyKeyReused)
                }
                Answer::Began(Ok(Begun::Decided { record })) => match record.state {
                    TransferState::Committed => Ok(()),
                    TransferState::Aborted => {
                        Err(record.reason.map_or(ErrorCode::TransferAborted, |r| r.code))
                    }
                    TransferState::Preparing => {
                        return Err(TestCaseError::fail("a decided answer still preparing"))
                    }
                },
                Answer::Began(Ok(Begun::Proceed)) => {
                    let (moved, _) = self.raw(Raw::Apply { id, variant })?;
                    let Answer::Moved(moved) = moved else {
                        unreachable!()
                    };
                    let (decided, _) = decide_at(
                        &mut self.db,
                        Universe::movement_id(id),
                        &Decision::of(&moved),
                    )?;
                    let record = decided.ok_or_else(|| TestCaseError::fail("claim vanished"))?;
                    prop_assert!(record.completed);
                    prop_assert_eq!(record.state == TransferState::Committed, moved.is_ok());
                    code(&moved)
                }
                other => return Err(TestCaseError::fail(format!("claim answered {other:?}"))),
            }
        } else {
            let (moved, _) = self.raw(Raw::ApplyClaimed {
                id,
                variant,
                attempt: variant,
            })?;
            let Answer::Moved(moved) = moved else {
                unreachable!()
            };
            code(&moved)
        };
        prop_assert_eq!(outcome, expected, "movement {} body {:?}", id, body);
        Ok(())
    }

    /// A movement at the account's node alone (its claim made elsewhere):
    /// its row `(id, kind)` keeps the first body and its answer.
    fn apply_unclaimed(&mut self, id: usize, variant: usize) -> Result<(), TestCaseError> {
        let body = self.u.movements[id][variant].clone();
        let row = (id, body.kind == MovementKind::Deposit);
        let expected = match self.model.rows.get(&row).cloned() {
            Some((first, _)) if first != body => Err(ErrorCode::IdempotencyKeyReused),
            Some((_, outcome)) => outcome,
            None => {
                let verdict = self.model.apply(&body);
                self.model.rows.insert(row, (body.clone(), verdict));
                verdict
            }
        };
        let (answer, _) = self.raw(Raw::Apply { id, variant })?;
        let Answer::Moved(moved) = answer else {
            unreachable!()
        };
        prop_assert_eq!(code(&moved), expected, "movement {} body {:?}", id, body);
        self.check()
    }

    fn begin(&mut self, tx: usize, attempt_: usize, lease_ms: u64) -> Result<(), TestCaseError> {
        let now = Working::new(self.db.now, Keys::default()).now;
        let (answer, _) = self.raw(Raw::Begin {
            tx,
            attempt: attempt_,
            lease_ms,
        })?;
        let until = now + Duration::milliseconds(lease_ms as i64);
        let expected = match self.model.records.get_mut(&tx) {
            None => {
                self.model.records.insert(
                    tx,
                    RecordModel {
                        state: TransferState::Preparing,
                        reason: None,
                        completed: false,
                        owner: attempt_,
                        until,
                    },
                );
                "proceed"
            }
            Some(r) if r.state != TransferState::Preparing => "decided",
            Some(r) if r.until > now && r.owner != attempt_ => "in_progress",
            Some(r) => {
                r.owner = attempt_;
                r.until = until;
                "proceed"
            }
        };
        let got = match answer {
            Answer::Began(Ok(Begun::Proceed)) => "proceed",
            Answer::Began(Ok(Begun::Decided { .. })) => "decided",
            Answer::Began(Err(r)) if r.code == ErrorCode::InProgress => "in_progress",
            _ => "other",
        };
        prop_assert_eq!(got, expected);
        Ok(())
    }

    fn prepare(&mut self, tx: usize, role: LegRole) -> Result<(), TestCaseError> {
        let p = self.u.transfers[tx].clone();
        let (answer, _) = self.raw(Raw::Prepare { tx, role })?;
        let Answer::Voted(vote) = answer else {
            unreachable!()
        };
        let expected = match self.model.legs.get(&(tx, role)) {
            Some(LegModel::Prepared | LegModel::Committed) => Ok(()),
            Some(LegModel::Aborted(code)) => Err(*code),
            None => {
                let verdict = match role {
                    LegRole::Debit => self.model.can_debit(p.from, p.amount, p.currency),
                    LegRole::Credit => self.model.can_credit(p.to, p.amount, p.currency),
                };
                match verdict {
                    Ok(()) => {
                        match role {
                            LegRole::Debit => self.model.account(p.from).held += p.amount,
                            LegRole::Credit => self.model.account(p.to).pending += p.amount,
                        }
                        self.model.legs.insert((tx, role), LegModel::Prepared);
                    }
                    Err(code) => {
                        self.model.legs.insert((tx, role), LegModel::Aborted(code));
                    }
                }
                verdict
            }
        };
        prop_assert_eq!(vote_code(&vote), expected);
        Ok(())
    }

    /// The coordinator decides: commit only on two yes votes (and when it
    /// wants to), abort otherwise. Begins the record first if needed.
    fn decide(&mut self, tx: usize, commit: bool) -> Result<(), TestCaseError> {
        if !self.model.records.contains_key(&tx) {
            self.begin(tx, 0, 5000)?;
        }
        let prepared = |role| self.model.legs.get(&(tx, role)) == Some(&LegModel::Prepared);
        let commit = commit && prepared(LegRole::Debit) && prepared(LegRole::Credit);
        let (answer, _) = self.raw(Raw::Decide { tx, commit })?;
        let Answer::Decided(Some(record)) = answer else {
            return Err(TestCaseError::fail(format!("decide answered {answer:?}")));
        };
        let r = self.model.records.get_mut(&tx).expect("begun");
        if r.state == TransferState::Preparing {
            r.state = if commit {
                TransferState::Committed
            } else {
                TransferState::Aborted
            };
            r.reason = (!commit).then_some(ErrorCode::TransferAborted);
        }
        prop_assert_eq!(record.state, r.state, "the first decision stands");
        prop_assert_eq!(record.reason.map(|x| x.code), r.reason);
        prop_assert_eq!(record.completed, r.completed);
        Ok(())
    }

    /// What a coordinator does: begin; prepare both legs; decide (commit on
    /// two yes votes); send the decision to both legs; complete. Unless
    /// `begin` says not to, or it stops after `steps` of them.
    fn coordinate(
        &mut self,
        tx: usize,
        attempt_: usize,
        steps: usize,
    ) -> Result<(), TestCaseError> {
        let before = self
            .model
            .records
            .get(&tx)
            .map(|r| (r.state, r.owner, r.until));
        self.begin(tx, attempt_, 5000)?;
        let proceed = match before {
            None => true,
            Some((TransferState::Preparing, owner, until)) => {
                owner == attempt_ || until <= Working::new(self.db.now, Keys::default()).now
            }
            Some(_) => false,
        };
        if !proceed {
            return Ok(());
        }
        for step in 1..steps {
            match step {
                1 => self.prepare(tx, LegRole::Debit)?,
                2 => self.prepare(tx, LegRole::Credit)?,
                3 => self.decide(tx, true)?,
                4 => self.deliver(tx, LegRole::Debit)?,
                5 => self.deliver(tx, LegRole::Credit)?,
                _ => self.complete(tx)?,
            }
            self.check()?;
        }
        Ok(())
    }

    /// Sends the decision to one leg (nothing while undecided).
    fn deliver(&mut self, tx: usize, role: LegRole) -> Result<(), TestCaseError> {
        let Some(state) = self.model.records.get(&tx).map(|r| r.state) else {
            return Ok(());
        };
        let commit = match state {
            TransferState::Preparing => return Ok(()),
            TransferState::Committed => true,
            TransferState::Aborted => false,
        };
        let p = self.u.transfers[tx].clone();
        let (answer, _) = self.raw(Raw::Finish { tx, role, commit })?;
        let Answer::Finished(got) = answer else {
            unreachable!()
        };
        let leg = self.model.legs.get(&(tx, role)).copied();
        if leg == Some(LegModel::Prepared) {
            let account = match role {
                LegRole::Debit => self.model.account(p.from),
                LegRole::Credit => self.model.account(p.to),
            };
            match role {
                LegRole::Debit => account.held -= p.amount,
                LegRole::Credit => account.pending -= p.amount,
            }
            if commit {
                match role {
                    LegRole::Debit => account.posted -= p.amount,
                    LegRole::Credit => account.posted += p.amount,
                }
            }
        }
        if commit {
            prop_assert!(
                matches!(leg, Some(LegModel::Prepared | LegModel::Committed)),
                "a committed transfer's leg was {:?}",
                leg
            );
            self.model.legs.insert((tx, role), LegModel::Committed);
            prop_assert_eq!(got, LegState::Committed);
        } else {
            prop_assert_ne!(leg, Some(LegModel::Committed));
            let code = match leg {
                Some(LegModel::Aborted(code)) => code,
                _ => ErrorCode::LegAborted,
            };
            self.model.legs.insert((tx, role), LegModel::Aborted(code));
            prop_assert_eq!(got, LegState::Aborted);
        }
        Ok(())
    }

    /// A commit of a leg that is aborted or was never prepared: answered
    /// with what the node holds, and nothing changes.
    fn stray_commit(&mut self, tx: usize, role: LegRole) -> Result<(), TestCaseError> {
        let expected = match self.model.legs.get(&(tx, role)) {
            None => LegState::Missing,
            Some(LegModel::Aborted(_)) => LegState::Aborted,
            Some(_) => return Ok(()),
        };
        let (answer, wrote) = self.raw(Raw::Finish {
            tx,
            role,
            commit: true,
        })?;
        prop_assert_eq!(answer, Answer::Finished(expected));
        prop_assert!(!wrote, "a stray commit wrote something");
        Ok(())
    }

    /// A prepare with another body for a leg this node holds: refused as a
    /// reused id, and nothing changes.
    fn prepare_other(&mut self, tx: usize, role: LegRole) -> Result<(), TestCaseError> {
        if !self.model.legs.contains_key(&(tx, role)) {
            return Ok(());
        }
        let (answer, wrote) = self.raw(Raw::PrepareOther { tx, role })?;
        let Answer::Voted(vote) = answer else {
            unreachable!()
        };
        prop_assert_eq!(vote_code(&vote), Err(ErrorCode::IdempotencyKeyReused));
        prop_assert!(!wrote, "a prepare with another body wrote something");
        Ok(())
    }

    fn complete(&mut self, tx: usize) -> Result<(), TestCaseError> {
        self.raw(Raw::Complete { tx })?;
        if let Some(r) = self.model.records.get_mut(&tx) {
            if r.state != TransferState::Preparing {
                r.completed = true;
            }
        }
        Ok(())
    }

    fn execute(&mut self, tx: usize, attempt_: usize) -> Result<(), TestCaseError> {
        let p = self.u.transfers[tx].clone();
        let (answer, _) = self.raw(Raw::Execute {
            tx,
            attempt: attempt_,
        })?;
        if !self.model.records.contains_key(&tx) {
            let exists = |a| self.model.accounts.contains_key(&a);
            let verdict = if !exists(p.from) || !exists(p.to) {
                Err(ErrorCode::AccountNotFound)
            } else {
                self.model
                    .can_debit(p.from, p.amount, p.currency)
                    .and_then(|()| self.model.can_credit(p.to, p.amount, p.currency))
            };
            if verdict.is_ok() {
                self.model.account(p.from).posted -= p.amount;
                self.model.account(p.to).posted += p.amount;
            }
            self.model.records.insert(
                tx,
                RecordModel {
                    state: if verdict.is_ok() {
                        TransferState::Committed
                    } else {
                        TransferState::Aborted
                    },
                    reason: verdict.err(),
                    completed: true,
                    owner: attempt_,
                    until: self.db.now,
                },
            );
        }
        let r = self.model.records[&tx];
        let Answer::Began(Ok(Begun::Decided { record })) = answer else {
            return Err(TestCaseError::fail(format!("execute answered {answer:?}")));
        };
        prop_assert_eq!(record.state, r.state);
        prop_assert_eq!(record.reason.map(|x| x.code), r.reason);
        prop_assert!(record.completed);
        prop_assert_eq!(&record.spec, &self.u.spec(tx));
        Ok(())
    }

    /// Recovery, once the workload stops: every undecided transfer is
    /// aborted (presumed abort when it has no record), every leg gets its
    /// decision, every record is completed.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for tx in 0..self.u.transfers.len() {
            if self.u.transfers[tx].one_phase {
                continue;
            }
            if self.model.records.contains_key(&tx) {
                self.decide(tx, false)?;
            } else {
                // No record: presumed abort.
                self.model.records.insert(
                    tx,
                    RecordModel {
                        state: TransferState::Aborted,
                        reason: Some(ErrorCode::TransferAborted),
                        completed: true,
                        owner: 0,
                        until: self.db.now,
                    },
                );
            }
            self.deliver(tx, LegRole::Debit)?;
            self.deliver(tx, LegRole::Credit)?;
            self.complete(tx)?;
        }
        self.check()
    }

    /// What must hold after every step.
    fn check(&self) -> Result<(), TestCaseError> {
        let db = &self.db;
        let mut posted = [0i128; 2];
        let ids: BTreeSet<AccountId> = self.model.accounts.keys().map(|&i| account(i)).collect();
        prop_assert_eq!(
            db.accounts.keys().cloned().collect::<BTreeSet<_>>(),
            ids,
            "opened accounts"
        );
        for (&i, m) in &self.model.accounts {
            let a = &db.accounts[&account(i)];
            prop_assert!(
                a.posted >= 0 && a.held >= 0 && a.held <= a.posted && a.pending_credit >= 0,
                "{:?}",
                a
            );
            prop_assert_eq!(a.currency, currency(m.currency));
            prop_assert_eq!(
                (a.posted, a.held, a.pending_credit),
                (m.posted, m.held, m.pending),
                "{} against the model",
                a.account_id
            );
            let log = db
                .events
                .get(&a.account_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            prop_assert_eq!(replay(log), (a.posted, a.held, a.pending_credit));
            prop_assert_eq!(log.len() as i64, a.last_seq);
            for (n, e) in log.iter().enumerate() {
                prop_assert_eq!(e.seq, n as i64 + 1);
            }
            prop_assert!(
                log.windows(2).all(|w| w[0].at <= w[1].at),
                "events out of time order"
            );
            let snaps = db
                .snapshots
                .get(&a.account_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            prop_assert_eq!(snaps.len() as i64, a.last_seq / SNAPSHOT_EVERY);
            for s in snaps {
                prop_assert_eq!(s.fold(), replay(&log[..s.seq as usize]));
                prop_assert_eq!(s.at, log[s.seq as usize - 1].at);
            }
            posted[m.currency] += i128::from(a.posted);
        }
        // Conservation: posted balances are what deposits and withdrawals
        // brought, plus the transfers half-way through their commits.
        let mut in_flight = [0i128; 2];
        for (&(tx, role), &leg) in &self.model.legs {
            let p = &self.u.transfers[tx];
            if leg == LegModel::Committed {
                let sign = if role == LegRole::Credit { 1 } else { -1 };
                in_flight[p.currency] += sign * i128::from(p.amount);
            }
        }
        for c in 0..2 {
            prop_assert_eq!(
                posted[c],
                self.model.brought[c] + in_flight[c],
                "conservation in {}",
                currency(c)
            );
        }
        // The feed: every event once, in order; one entry per aborted transfer.
        let mut fed: BTreeMap<&AccountId, Vec<i64>> = BTreeMap::new();
        let mut aborted_fed = 0;
        for e in &db.outbox {
            match e.kind {
                FeedKind::Event(_) => fed.entry(&e.account_id).or_default().push(e.seq.unwrap()),
                FeedKind::TransferAborted => aborted_fed += 1,
            }
        }
        for (id, log) in &db.events {
            let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
            prop_assert_eq!(fed.get(id).cloned().unwrap_or_default(), seqs);
        }
        let aborted = db
            .transfers
            .values()
            .filter(|r| {
                r.record.kind == RecordKind::Transfer && r.record.state == TransferState::Aborted
            })
            .count();
        prop_assert_eq!(aborted_fed, aborted);
        // Records: as the model says.
        for (&tx, r) in &self.model.records {
            let Some(row) = db.transfers.get(&Universe::transfer_id(tx)) else {
                // Only a presumed abort has no record.
                prop_assert_eq!(r.state, TransferState::Aborted);
                continue;
            };
            prop_assert_eq!(row.record.state, r.state);
            prop_assert_eq!(row.record.completed, r.completed);
        }
        Ok(())
    }

    /// After `settle`: nothing held, nothing pending, every transfer's legs
    /// both committed or neither, money conserved exactly.
    fn check_settled(&self) -> Result<(), TestCaseError> {
        for a in self.db.accounts.values() {
            prop_assert_eq!(
                (a.held, a.pending_credit),
                (0, 0),
                "{} unsettled",
                a.account_id
            );
        }
        let mut posted = [0i128; 2];
        for (&i, m) in &self.model.accounts {
            posted[m.currency] += i128::from(self.db.accounts[&account(i)].posted);
        }
        prop_assert_eq!(posted, self.model.brought);
        for tx in 0..self.u.transfers.len() {
            let id = Universe::transfer_id(tx);
            let committed = |role| {
                self.db
                    .legs
                    .get(&(id, role))
                    .is_some_and(|l| l.state == LegState::Committed)
            };
            let record = self.db.transfers.get(&id).map(|r| r.record.state);
            let is_committed = record == Some(TransferState::Committed);
            prop_assert_eq!(committed(RowRole::Debit), is_committed);
            prop_assert_eq!(committed(RowRole::Credit), is_committed);
        }
        prop_assert!(self.db.legs.values().all(|l| l.state != LegState::Prepared));
        prop_assert!(self.db.transfers.values().all(|r| r.record.completed));
        Ok(())
    }
}

fn cases(default: u32) -> ProptestConfig {
    // PROPTEST_CASES overrides (e.g. 10,000 for a long run).
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// Promises 1, 4 and 6 at one node, under any order of requests.
    #[test]
    fn money_is_conserved_and_every_balance_is_its_events((u, ops) in a_workload(80)) {
        let mut run = Run::new(&u);
        for op in &ops {
            run.step(op)?;
        }
        run.settle()?;
        run.check_settled()?;
    }

    /// Promise 3 at one node: a retry (a duplicate, a lost reply) changes
    /// nothing and is answered as the first time.
    #[test]
    fn every_operation_applied_twice_is_applied_once(
        (u, ops, raw) in a_workload(40).prop_flat_map(|(u, ops)| {
            let raw = a_raw(&u);
            (Just(u), Just(ops), raw)
        })
    ) {
        let mut run = Run::new(&u);
        for op in &ops {
            run.step(op)?;
        }
        let mut db = run.db;
        let (first, _) = raw.run(&mut db, &u)?;
        let once = db.clone();
        let (second, wrote) = raw.run(&mut db, &u)?;
        prop_assert_eq!(&db, &once, "{:?} applied twice", raw);
        match (&raw, &first, &second) {
            // The account exists either way; the answer says whether this
            // request created it.
            (Raw::Open { .. }, Answer::Opened(Ok((_, a))), Answer::Opened(Ok((created, b)))) => {
                prop_assert_eq!(a, b);
                prop_assert!(!created);
            }
            _ => prop_assert_eq!(&first, &second, "{:?}", raw),
        }
        // A retry costs no write, but a begin's, which renews its lease.
        if !matches!(raw, Raw::Begin { .. } | Raw::Claim { .. }) {
            prop_assert!(!wrote, "{:?} wrote again", raw);
        }
    }

    /// `Store::batch` runs many requests in one transaction: the same
    /// answers and rows as one transaction each.
    #[test]
    fn a_batch_is_its_requests_one_by_one(
        (u, ops, batch) in a_workload(40).prop_flat_map(|(u, ops)| {
            let batch = a_batch(&u);
            (Just(u), Just(ops), batch)
        })
    ) {
        let mut run = Run::new(&u);
        for op in &ops {
            run.step(op)?;
        }
        let mut one_by_one = run.db.clone();
        let mut answers = Vec::new();
        for op in &batch {
            answers.push(op.run(&mut one_by_one, &u)?.0);
        }
        let mut batched = run.db;
        let together = run_batch(&mut batched, &u, &batch)?;
        prop_assert_eq!(together, answers);
        prop_assert_eq!(batched.canonical(), one_by_one.canonical());
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// The account's node keeps a movement's first body and answer by
    /// itself, whatever reaches it without a claim.
    #[test]
    fn a_movement_row_keeps_its_first_body_and_answer(
        (u, ops, applies) in a_workload(30).prop_flat_map(|(u, ops)| {
            let m = u.movements.len();
            let applies = prop::collection::vec((0..m, 0..2usize), 1..20);
            (Just(u), Just(ops), applies)
        })
    ) {
        let mut run = Run::new(&u);
        for op in &ops {
            run.step(op)?;
        }
        for &(id, variant) in &applies {
            run.apply_unclaimed(id, variant)?;
        }
        run.settle()?;
        run.check_settled()?;
    }
}

/// Requests of one kind, as one internal call carries them.
fn a_batch(u: &Universe) -> impl Strategy<Value = Vec<Raw>> {
    let t = u.transfers.len();
    let items = |s: BoxedStrategy<Raw>| prop::collection::vec(s, 1..=6);
    let one_phase: Vec<usize> = (0..t).filter(|&i| u.transfers[i].one_phase).collect();
    let mut kinds = vec![
        items(
            (0..t, 0..3usize, a_lease())
                .prop_map(|(tx, attempt, lease_ms)| Raw::Begin {
                    tx,
                    attempt,
                    lease_ms,
                })
                .boxed(),
        ),
        items(
            (0..t, any::<bool>())
                .prop_map(|(tx, commit)| Raw::Decide { tx, commit })
                .boxed(),
        ),
        items((0..t).prop_map(|tx| Raw::Complete { tx }).boxed()),
        items(
            (0..t, a_role())
                .prop_map(|(tx, role)| Raw::Prepare { tx, role })
                .boxed(),
        ),
        items(
            (0..t, a_role(), any::<bool>())
                .prop_map(|(tx, role, commit)| Raw::Finish { tx, role, commit })
                .boxed(),
        ),
    ];
    if !one_phase.is_empty() {
        kinds.push(items(
            (prop::sample::select(one_phase), 0..3usize)
                .prop_map(|(tx, attempt)| Raw::Execute { tx, attempt })
                .boxed(),
        ));
    }
    prop::strategy::Union::new(kinds)
}

// ---- the decision record ---------------------------------------------------

fn a_kind() -> impl Strategy<Value = RecordKind> {
    prop_oneof![
        Just(RecordKind::Transfer),
        Just(RecordKind::Deposit),
        Just(RecordKind::Withdrawal),
    ]
}

/// A `begin` for id 1 of this kind, from a tiny space of bodies (so two
/// drawn bodies are often the same): a transfer between `a` and `b`, or a
/// movement's claim (whose `from` and `to` are both its account).
fn a_begin() -> impl Strategy<Value = Begin> {
    (
        a_kind(),
        0..2usize,
        0..2usize,
        1i64..=2,
        0..2usize,
        0..3usize,
        a_lease(),
    )
        .prop_map(|(kind, from, to, minor, cur, attempt_, lease_ms)| {
            let id = tid(1);
            match kind.movement() {
                None => Begin {
                    spec: TransferSpec {
                        transaction_id: id,
                        from: account(from),
                        to: account(to),
                        amount: amount(minor),
                        currency: currency(cur),
                        tenant: None,
                    },
                    partition: 0,
                    lease_ms,
                    attempt: attempt(attempt_),
                    kind,
                },
                Some(kind) => Movement {
                    transaction_id: id,
                    kind,
                    account_id: account(to),
                    partition: 0,
                    amount: amount(minor),
                    currency: currency(cur),
                    tenant: None,
                }
                .claim(0, lease_ms, attempt(attempt_)),
            }
        })
}

fn a_decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        Just(Decision::Commit),
        prop::sample::select(vec![
            ErrorCode::InsufficientFunds,
            ErrorCode::TransferAborted,
            ErrorCode::AccountNotFound,
        ])
        .prop_map(|code| Decision::Abort {
            reason: Rejection::new(code, "no")
        }),
    ]
}

fn begin_at(db: &mut Db, b: &Begin) -> Result<(Verdict<Begun>, bool), TestCaseError> {
    db.run(decisions::keys([b.spec.transaction_id]), |w| {
        decisions::begin(w, b)
    })
    .map_err(|e| TestCaseError::fail(e.to_string()))
}

fn decide_at(
    db: &mut Db,
    id: TransactionId,
    d: &Decision,
) -> Result<(Option<TransferRecord>, bool), TestCaseError> {
    db.run(decisions::keys([id]), |w| decisions::decide(w, id, d))
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

proptest! {
    #![proptest_config(cases(512))]

    /// `decide` is a compare-and-set out of `preparing`: the first decision
    /// wins, every later one (a slow coordinator, recovery) reads it and
    /// writes nothing.
    #[test]
    fn the_first_decision_wins(
        b in a_begin(),
        decisions_ in prop::collection::vec((a_decision(), 0i64..10_000), 1..8),
    ) {
        let mut db = Db::new();
        let id = b.spec.transaction_id;
        prop_assert_eq!(decide_at(&mut db, id, &Decision::Commit)?, (None, false), "nothing begun");
        prop_assert_eq!(begin_at(&mut db, &b)?.0, Ok(Begun::Proceed));
        let mut first: Option<TransferRecord> = None;
        for (d, later) in &decisions_ {
            db.now += Duration::milliseconds(*later);
            let (record, wrote) = decide_at(&mut db, id, d)?;
            let record = record.ok_or_else(|| TestCaseError::fail("record vanished"))?;
            match &first {
                None => {
                    prop_assert!(wrote);
                    let (state, reason) = match d {
                        Decision::Commit => (TransferState::Committed, None),
                        Decision::Abort { reason } => (TransferState::Aborted, Some(reason.clone())),
                    };
                    prop_assert_eq!(record.state, state);
                    prop_assert_eq!(&record.reason, &reason);
                    prop_assert_eq!(record.decided_at, Some(Working::new(db.now, Keys::default()).now));
                    // A movement's record is decided from what its account's
                    // node already did: nothing is left to complete.
                    prop_assert_eq!(record.completed, b.kind != RecordKind::Transfer);
                    first = Some(record);
                }
                Some(first) => {
                    prop_assert!(!wrote, "a later decision wrote");
                    prop_assert_eq!(&record, first);
                }
            }
            prop_assert_eq!(Some(&db.transfers[&id].record), first.as_ref());
        }
        // `begin` of the same body now reads the decision.
        let mut again = b.clone();
        again.attempt = attempt(9);
        prop_assert_eq!(
            begin_at(&mut db, &again)?.0,
            Ok(Begun::Decided { record: first.clone().unwrap() })
        );
        // And `complete` marks it complete, once.
        let complete = |db: &mut Db| {
            db.run(decisions::keys([id]), |w| {
                decisions::complete(w, id);
                Ok(())
            })
            .map(|(_, wrote)| wrote)
        };
        let wrote = complete(&mut db).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(wrote, b.kind == RecordKind::Transfer);
        prop_assert!(db.transfers[&id].record.completed);
        prop_assert!(!complete(&mut db).map_err(|e| TestCaseError::fail(e.to_string()))?);
    }

    /// `begin`'s answers (`docs/protocol.md`): another body (another kind
    /// too) is `reused`; a decided record answers `decided`; a live lease of
    /// another attempt is `in_progress` for transfers only; an expired
    /// lease, or the same attempt, proceeds and takes the lease.
    #[test]
    fn begin_answers_by_body_decision_lease_and_attempt(
        first in a_begin(),
        second in a_begin(),
        decision in prop::option::of(a_decision()),
        after in prop_oneof![Just(0i64), Just(-1), Just(1), -6000i64..1000],
    ) {
        let mut db = Db::new();
        let id = first.spec.transaction_id;
        prop_assert_eq!(begin_at(&mut db, &first)?, (Ok(Begun::Proceed), true));
        let lease_until = db.transfers[&id].lease_until;
        prop_assert_eq!(db.transfers[&id].lease_owner, first.attempt);
        if let Some(d) = &decision {
            decide_at(&mut db, id, d)?;
        }
        // `after` is counted from the end of the first lease: -1 is just
        // inside it, 0 is its end (a lease is live while `now` is before it).
        db.now = lease_until + Duration::milliseconds(after);
        let now = Working::new(db.now, Keys::default()).now;
        let before = db.clone();
        let (answer, _) = begin_at(&mut db, &second)?;
        let same_body = first.kind == second.kind && first.spec == second.spec;
        let stored = &before.transfers[&id];
        let decided = Begun::Decided { record: stored.record.clone() };
        let expected = if !same_body {
            Err(ErrorCode::IdempotencyKeyReused)
        } else if stored.record.state != TransferState::Preparing {
            Ok(&decided)
        } else if lease_until > now
            && first.attempt != second.attempt
            && first.kind == RecordKind::Transfer
        {
            Err(ErrorCode::InProgress)
        } else {
            Ok(&Begun::Proceed)
        };
        prop_assert_eq!(began(&answer), expected);
        if answer == Ok(Begun::Proceed) {
            let row = &db.transfers[&id];
            prop_assert_eq!(row.lease_owner, second.attempt);
            prop_assert_eq!(row.lease_until, now + Duration::milliseconds(second.lease_ms as i64));
            prop_assert_eq!(&row.record, &stored.record);
        } else {
            prop_assert_eq!(&db, &before, "an answer that is not `proceed` changes nothing");
        }
    }
}

/// A lease as long as the caller likes: `begin` must not panic on a
/// `lease_ms` from the wire.
#[test]
fn begin_takes_any_lease() {
    let mut db = Db::new();
    let u = Universe {
        accounts: vec![0, 0],
        transfers: vec![TransferPlan {
            from: 0,
            to: 1,
            amount: 1,
            currency: 0,
            one_phase: false,
        }],
        movements: vec![],
    };
    let b = u.begin(0, 0, u64::MAX);
    let answer = std::panic::catch_unwind(move || begin_at(&mut db, &b).map(|(a, _)| a));
    assert!(
        matches!(answer, Ok(Ok(_))),
        "begin with lease_ms = u64::MAX panicked or failed"
    );
}

// ---- one id, one key, across kinds -----------------------------------------

fn opened(u: &Universe) -> Result<Run<'_>, TestCaseError> {
    let mut run = Run::new(u);
    for a in 0..u.accounts.len() {
        run.open(a, false)?;
    }
    Ok(run)
}

fn same_id_universe() -> Universe {
    // Transfer 0 and movement 0 get the same id below; acct-0 is funded by
    // movement 1.
    Universe {
        accounts: vec![0, 0],
        transfers: vec![TransferPlan {
            from: 0,
            to: 1,
            amount: 5,
            currency: 0,
            one_phase: true,
        }],
        movements: vec![
            [
                MovementPlan {
                    kind: MovementKind::Deposit,
                    account: 1,
                    amount: 5,
                    currency: 0,
                },
                MovementPlan {
                    kind: MovementKind::Withdrawal,
                    account: 0,
                    amount: 5,
                    currency: 0,
                },
            ],
            [
                MovementPlan {
                    kind: MovementKind::Deposit,
                    account: 0,
                    amount: 100,
                    currency: 0,
                },
                MovementPlan {
                    kind: MovementKind::Deposit,
                    account: 0,
                    amount: 100,
                    currency: 0,
                },
            ],
        ],
    }
}

/// A movement whose id is transfer 0's.
fn movement_with_transfer_id(u: &Universe, variant: usize) -> MovementRequest {
    let mut req = u.claimed(0, variant, 0);
    req.movement.transaction_id = Universe::transfer_id(0);
    if let Some(claim) = req.claim.as_mut() {
        claim.spec.transaction_id = Universe::transfer_id(0);
    }
    req
}

fn apply_claimed(db: &mut Db, req: &MovementRequest) -> Result<AccountBalance, Rejection> {
    db.run(movements::request_keys(req), |w| {
        movements::apply_request(w, req)
    })
    .expect("no store error")
    .0
}

#[test]
fn a_transfers_id_is_refused_as_a_deposit_or_withdrawal_and_nothing_moves() {
    let u = same_id_universe();
    let mut run = opened(&u).unwrap();
    run.movement(1, 0, false).unwrap();
    run.execute(0, 0).unwrap();
    assert_eq!(run.model.records[&0].state, TransferState::Committed);
    for variant in [0, 1] {
        let before = run.db.clone();
        let req = movement_with_transfer_id(&u, variant);
        let refused = apply_claimed(&mut run.db, &req);
        assert_eq!(refused.unwrap_err().code, ErrorCode::IdempotencyKeyReused);
        assert_eq!(run.db, before, "nothing of the reused id is written");
        // At the decision partition alone, too.
        let (answer, wrote) = begin_at(&mut run.db, req.claim.as_ref().unwrap()).unwrap();
        assert_eq!(
            (began(&answer), wrote),
            (Err(ErrorCode::IdempotencyKeyReused), false)
        );
    }
    run.check().unwrap();
}

#[test]
fn a_deposits_id_is_refused_as_a_transfer_and_nothing_moves() {
    let u = same_id_universe();
    let mut run = opened(&u).unwrap();
    run.movement(1, 0, false).unwrap();
    let deposit = movement_with_transfer_id(&u, 0);
    assert!(apply_claimed(&mut run.db, &deposit).is_ok());
    let before = run.db.clone();
    // One phase: refused before anything is looked at.
    let (answer, _) = Raw::Execute { tx: 0, attempt: 1 }
        .run(&mut run.db, &u)
        .unwrap();
    assert!(
        matches!(&answer, Answer::Began(Err(r)) if r.code == ErrorCode::IdempotencyKeyReused),
        "{answer:?}"
    );
    // Two phases: `begin` at the decision partition refuses it.
    let (answer, _) = Raw::Begin {
        tx: 0,
        attempt: 1,
        lease_ms: 5000,
    }
    .run(&mut run.db, &u)
    .unwrap();
    assert!(
        matches!(&answer, Answer::Began(Err(r)) if r.code == ErrorCode::IdempotencyKeyReused),
        "{answer:?}"
    );
    assert_eq!(run.db, before, "nothing of the reused id is written");
}

#[test]
fn a_deposit_and_a_withdrawal_with_one_id_are_one_key() {
    let u = same_id_universe();
    let mut run = opened(&u).unwrap();
    run.movement(1, 0, false).unwrap();
    // Movement 0: a deposit to acct-1, then the same id as a withdrawal
    // from acct-0 (another row on the account's node, but the same claim).
    run.movement(0, 0, false).unwrap();
    let before = run.db.clone();
    run.movement(0, 1, false).unwrap();
    run.movement(0, 1, true).unwrap();
    assert_eq!(run.db, before);
    run.check().unwrap();
}

// ---- recovery's view, and the ledger's checks ------------------------------

#[test]
fn recovery_looks_at_expired_leases_and_unfinished_decisions_only() {
    let u = same_id_universe();
    let mut db = Db::new();
    let b = u.begin(0, 0, 5000);
    assert_eq!(begin_at(&mut db, &b).unwrap().0, Ok(Begun::Proceed));
    let row = || db.transfers[&b.spec.transaction_id].clone();
    let grace = Duration::seconds(2);
    let at = |ms| epoch() + Duration::milliseconds(ms);
    let r = row();
    assert!(
        !model::needs_recovery(&r, at(5000), grace),
        "lease still live"
    );
    assert!(model::needs_recovery(&r, at(5001), grace), "lease expired");
    assert!(
        !model::needs_recovery(&r, at(-2000), grace),
        "begun by a clock a little ahead: its lease holds"
    );
    assert!(
        model::needs_recovery(&r, at(-2001), grace),
        "begun by a clock more than the grace ahead: its lease counts as run out"
    );
    decide_at(&mut db, b.spec.transaction_id, &Decision::Commit).unwrap();
    let mut db2 = db.clone();
    let r = db2.transfers[&b.spec.transaction_id].clone();
    assert!(
        !model::needs_recovery(&r, at(2000), grace),
        "decided just now"
    );
    assert!(
        model::needs_recovery(&r, at(2001), grace),
        "decided, not completed"
    );
    assert!(
        !model::needs_recovery(&r, at(-2000), grace),
        "decided by a clock a little ahead: waits"
    );
    assert!(
        model::needs_recovery(&r, at(-2001), grace),
        "decided by a clock more than the grace ahead (a move, a clock stepped back): \
         recovery does not wait out the difference"
    );
    db2.run(decisions::keys([b.spec.transaction_id]), |w| {
        decisions::complete(w, b.spec.transaction_id);
        Ok(())
    })
    .unwrap();
    let r = db2.transfers[&b.spec.transaction_id].clone();
    assert!(
        !model::needs_recovery(&r, at(1_000_000), grace),
        "completed"
    );

    let leg = u.leg(0, LegRole::Debit);
    let mut row = LegRow {
        transaction_id: leg.transaction_id,
        role: RowRole::Debit,
        account_id: leg.account.clone(),
        partition: 0,
        amount: 1,
        currency: leg.currency,
        counterparty: Some(leg.counterparty.clone()),
        decision_partition: Some(0),
        fingerprint: None,
        state: LegState::Prepared,
        reason: None,
        created_at: epoch(),
        updated_at: epoch(),
    };
    assert!(!model::is_stale_prepared(&row, at(2000), grace));
    assert!(model::is_stale_prepared(&row, at(2001), grace));
    assert!(!model::is_stale_prepared(&row, at(-2000), grace));
    assert!(
        model::is_stale_prepared(&row, at(-2001), grace),
        "prepared by a clock more than the grace ahead"
    );
    row.state = LegState::Committed;
    assert!(!model::is_stale_prepared(&row, at(9000), grace));
    row.state = LegState::Prepared;
    row.role = RowRole::Deposit;
    assert!(
        !model::is_stale_prepared(&row, at(9000), grace),
        "a movement is never prepared"
    );
}

fn row(posted: i64, held: i64, pending_credit: i64) -> AccountRow {
    AccountRow {
        account_id: account(0),
        partition: 0,
        currency: currency(0),
        posted,
        held,
        pending_credit,
        last_seq: 0,
        created_at: epoch(),
        owner: None,
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// A debit may take exactly what is available; a credit may fill the
    /// account up to `i64::MAX` counting pending credits; another currency
    /// never passes.
    #[test]
    fn the_ledger_checks_are_exact(
        posted in 0i64..=i64::MAX,
        held_share in 0.0f64..=1.0,
        pending in 0i64..=i64::MAX,
        amount_ in 1i64..=i64::MAX,
    ) {
        let held = (posted as f64 * held_share) as i64;
        let held = held.min(posted);
        let pending = pending.min(i64::MAX - posted);
        let a = row(posted, held, pending);
        let usd = currency(0);
        let jpy = currency(1);
        prop_assert_eq!(a.can_debit(amount_, usd).is_ok(), amount_ <= posted - held);
        prop_assert_eq!(
            a.can_credit(amount_, usd).is_ok(),
            i128::from(amount_) + i128::from(posted) + i128::from(pending) <= i128::from(i64::MAX)
        );
        prop_assert_eq!(a.can_debit(amount_, jpy).unwrap_err().code, ErrorCode::CurrencyMismatch);
        prop_assert_eq!(a.can_credit(amount_, jpy).unwrap_err().code, ErrorCode::CurrencyMismatch);
        if amount_ > posted - held {
            prop_assert_eq!(a.can_debit(amount_, usd).unwrap_err().code, ErrorCode::InsufficientFunds);
        }
    }
}

#[test]
fn the_ledger_checks_at_their_edges() {
    let a = row(100, 40, 0);
    let usd = currency(0);
    assert!(a.can_debit(60, usd).is_ok());
    assert_eq!(
        a.can_debit(61, usd).unwrap_err().code,
        ErrorCode::InsufficientFunds
    );
    let full = row(i64::MAX - 10, 0, 5);
    assert!(full.can_credit(5, usd).is_ok());
    assert_eq!(
        full.can_credit(6, usd).unwrap_err().code,
        ErrorCode::BalanceOverflow
    );
}

/// A transfer begun in two phases (its legs prepared here), whose
/// decision partition later moved here with its accounts: a retry after
/// the lease runs it in one phase, and takes it over, finishing it the
/// two-phase way in one local transaction (it once failed as corrupt, and
/// with it every transfer of its execute batch).
#[test]
fn execute_takes_over_a_two_phase_attempt() {
    let mut u = same_id_universe();
    u.transfers[0].one_phase = false;
    let mut run = opened(&u).unwrap();
    run.movement(1, 0, false).unwrap();
    run.coordinate(0, 0, 3).unwrap(); // begin, prepare both legs, then stop
    assert_eq!(run.model.legs.len(), 2);
    run.db.now += Duration::milliseconds(6000);
    let answer = Raw::Execute { tx: 0, attempt: 1 }.run(&mut run.db, &u);
    assert!(
        matches!(answer, Ok((Answer::Began(Ok(Begun::Decided { .. })), _))),
        "{answer:?}"
    );
}
