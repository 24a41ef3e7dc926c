//! Recovery's view, and the ledger's checks.

use super::*;

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
