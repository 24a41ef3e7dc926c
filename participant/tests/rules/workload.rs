//! What a client and a coordinator do, as a reference model, and the
//! properties that hold any workload to it.

use super::*;

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
pub(crate) struct Balance {
    currency: usize,
    posted: i64,
    held: i64,
    pending: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegModel {
    Prepared,
    Committed,
    Aborted(ErrorCode),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordModel {
    pub(crate) state: TransferState,
    reason: Option<ErrorCode>,
    completed: bool,
    owner: usize,
    until: DateTime<Utc>,
}

/// What the participant's tables must say, built from the protocol and the
/// answers alone (never from reading the tables).
#[derive(Debug, Default)]
pub(crate) struct Model {
    accounts: BTreeMap<usize, Balance>,
    pub(crate) legs: HashMap<(usize, LegRole), LegModel>,
    pub(crate) records: BTreeMap<usize, RecordModel>,
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
pub(crate) fn began(v: &Verdict<Begun>) -> Result<&Begun, ErrorCode> {
    v.as_ref().map_err(|r| r.code)
}

/// The client, the coordinator and recovery, over one `Db`, checked
/// against the model after every step.
pub(crate) struct Run<'a> {
    u: &'a Universe,
    pub(crate) db: Db,
    pub(crate) model: Model,
}

impl<'a> Run<'a> {
    pub(crate) fn new(u: &'a Universe) -> Self {
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

    pub(crate) fn open(
        &mut self,
        account: usize,
        wrong_currency: bool,
    ) -> Result<(), TestCaseError> {
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
    pub(crate) fn movement(
        &mut self,
        id: usize,
        variant: usize,
        remote: bool,
    ) -> Result<(), TestCaseError> {
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
    pub(crate) fn coordinate(
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

    pub(crate) fn execute(&mut self, tx: usize, attempt_: usize) -> Result<(), TestCaseError> {
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
    pub(crate) fn check(&self) -> Result<(), TestCaseError> {
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

pub(crate) fn cases(default: u32) -> ProptestConfig {
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
        prop_assert_eq!(db.unnumbered(), once.unnumbered(), "{:?} applied twice", raw);
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
