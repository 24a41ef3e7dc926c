//! The decision record: `begin` and `decide` at the decision partition.

use super::*;

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
                    prepare: None,
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

pub(crate) fn begin_at(db: &mut Db, b: &Begin) -> Result<(Verdict<Begun>, bool), TestCaseError> {
    db.run(decisions::keys([b.spec.transaction_id]), |w| {
        decisions::begin(w, b)
    })
    .map_err(|e| TestCaseError::fail(e.to_string()))
}

pub(crate) fn decide_at(
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
