//! The rules' side of tenants: an account belongs to the tenant that opened
//! it; a debit (a prepared leg, a one-node transfer, a withdrawal or a
//! deposit) on another tenant's account is refused with `forbidden` and
//! moves nothing; an admin's request (no tenant) may act on any account.

use chrono::{TimeZone, Utc};
use participant::model::{Keys, RowRole, Working};
use participant::{decisions, legs, movements};
use wallet_shared::protocol::{
    Begin, Begun, Leg, Movement, MovementKind, OpenAccount, RecordKind, TransferSpec, TransferState,
};
use wallet_shared::{AccountId, Amount, Currency, ErrorCode, TransactionId};

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn id(n: u128) -> TransactionId {
    TransactionId(uuid::Uuid::from_u128(n))
}

/// A working set holding `acme-1` (Acme's, 100.00) and `globex-1` (Globex's,
/// empty), with every row the tests touch (ids 1 to 29) loadable.
fn working() -> Working {
    let mut keys = Keys::default();
    for n in 1..30 {
        keys.transfers.insert(id(n));
        for role in [
            RowRole::Debit,
            RowRole::Credit,
            RowRole::Deposit,
            RowRole::Withdrawal,
        ] {
            keys.legs.insert((id(n), role));
        }
    }
    let mut w = Working::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(), keys);
    for (account, owner) in [("acme-1", "acme"), ("globex-1", "globex")] {
        let open = OpenAccount {
            account_id: AccountId::parse(account).unwrap(),
            partition: 0,
            currency: usd(),
            owner: Some(owner.into()),
        };
        w.note_account_key(open.account_id.clone());
        movements::open(&mut w, &open).unwrap().unwrap();
    }
    let deposit = Movement {
        transaction_id: id(1),
        kind: MovementKind::Deposit,
        account_id: AccountId::parse("acme-1").unwrap(),
        partition: 0,
        amount: Amount::from_minor(10_000).unwrap(),
        currency: usd(),
        tenant: Some("acme".into()),
    };
    movements::apply(&mut w, &deposit).unwrap().unwrap();
    w
}

fn spec(n: u128, tenant: Option<&str>) -> TransferSpec {
    TransferSpec {
        transaction_id: id(n),
        from: AccountId::parse("acme-1").unwrap(),
        to: AccountId::parse("globex-1").unwrap(),
        amount: Amount::from_minor(2_500).unwrap(),
        currency: usd(),
        tenant: tenant.map(String::from),
    }
}

fn balance(w: &Working, account: &str) -> (i64, i64, i64) {
    let a = w.account(&AccountId::parse(account).unwrap()).unwrap();
    (a.posted, a.held, a.pending_credit)
}

#[test]
fn a_prepare_of_another_tenants_debit_is_refused_and_holds_nothing() {
    let mut w = working();
    let [debit, _] = Leg::both(&spec(7, Some("globex")), 0, 0, 0);
    let vote = legs::prepare(&mut w, &debit).unwrap();
    assert!(
        matches!(&vote, Err(reason) if reason.code == ErrorCode::Forbidden),
        "{vote:?}"
    );
    assert_eq!(balance(&w, "acme-1"), (10_000, 0, 0));
    // The owner's, and an admin's (no tenant), are prepared.
    for (n, tenant) in [(8, Some("acme")), (9, None)] {
        let [debit, _] = Leg::both(&spec(n, tenant), 0, 0, 0);
        assert_eq!(legs::prepare(&mut w, &debit).unwrap(), Ok(()));
    }
    assert_eq!(balance(&w, "acme-1"), (10_000, 5_000, 0));
}

#[test]
fn a_one_node_transfer_and_movements_on_another_tenants_account_are_refused() {
    let mut w = working();
    let s = spec(7, Some("globex"));
    let begin = Begin {
        spec: s.clone(),
        partition: 0,
        lease_ms: 5_000,
        attempt: uuid::Uuid::from_u128(1),
        kind: RecordKind::Transfer,
        prepare: None,
    };
    let legs_ = Leg::both(&s, 0, 0, 0);
    match decisions::execute(&mut w, &begin, &legs_).unwrap() {
        Ok(Begun::Decided { record }) => {
            assert_eq!(record.state, TransferState::Aborted);
            assert_eq!(record.reason.unwrap().code, ErrorCode::Forbidden);
            assert_eq!(record.spec.tenant.as_deref(), Some("globex"));
        }
        other => panic!("{other:?}"),
    }
    for kind in [MovementKind::Withdrawal, MovementKind::Deposit] {
        let m = Movement {
            transaction_id: id(20 + kind as u128),
            kind,
            account_id: AccountId::parse("acme-1").unwrap(),
            partition: 0,
            amount: Amount::from_minor(100).unwrap(),
            currency: usd(),
            tenant: Some("globex".into()),
        };
        let refused = movements::apply(&mut w, &m).unwrap().unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
    }
    assert_eq!(balance(&w, "acme-1"), (10_000, 0, 0));
    assert_eq!(balance(&w, "globex-1"), (0, 0, 0));
    // Opening Acme's id as Globex says only that it exists; as Acme, the
    // account's balance.
    let again = |owner: &str| OpenAccount {
        account_id: AccountId::parse("acme-1").unwrap(),
        partition: 0,
        currency: usd(),
        owner: Some(owner.into()),
    };
    let taken = movements::open(&mut w, &again("globex"))
        .unwrap()
        .unwrap_err();
    assert_eq!(taken.code, ErrorCode::AccountExists);
    assert!(!taken.message.contains("USD"), "{}", taken.message);
    assert!(movements::open(&mut w, &again("acme")).unwrap().is_ok());
}

#[test]
fn the_tenant_is_part_of_what_the_same_body_means() {
    let (a, b, admin) = (
        spec(7, Some("acme")),
        spec(7, Some("globex")),
        spec(7, None),
    );
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), admin.fingerprint());
    // Without a tenant the fingerprint is what it always was.
    assert_eq!(
        admin.fingerprint(),
        wallet_shared::protocol::fingerprint(&["transfer", "acme-1", "globex-1", "2500", "USD"])
    );
}
