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
//!
//! Here: the tables and one local transaction over them ([`Db`]), the
//! universe a case runs in, and one operation with its keys and rules
//! ([`Raw`]). Beside it: the reference model and the workload properties
//! (`workload`), the decision record (`record`), one id across kinds
//! (`same_id`), recovery's view and the ledger's checks (`recovery`).

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

    /// The tables without their change numbers, which count the writes
    /// (a retry renewing a lease with the same value, a batch numbering in
    /// another order), not what they wrote.
    fn unnumbered(&self) -> Db {
        let mut db = self.clone();
        db.last_change = 0;
        db.change_nos.clear();
        db
    }

    /// The tables with the feed in a canonical order (a batch writes its
    /// aborted transfers after all its events, one by one after each),
    /// unnumbered.
    fn canonical(&self) -> Db {
        let mut db = self.unnumbered();
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
            prepare: None,
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

mod record;
mod recovery;
mod same_id;
mod workload;

use record::*;
use same_id::*;
use workload::*;
