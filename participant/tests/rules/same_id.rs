//! One id, one key, across kinds.

use super::*;

// ---- one id, one key, across kinds -----------------------------------------

pub(crate) fn opened(u: &Universe) -> Result<Run<'_>, TestCaseError> {
    let mut run = Run::new(u);
    for a in 0..u.accounts.len() {
        run.open(a, false)?;
    }
    Ok(run)
}

pub(crate) fn same_id_universe() -> Universe {
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
