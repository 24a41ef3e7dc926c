//! The benchmark's accounts and the requests each scenario sends.
//!
//! Accounts are `{prefix}-{i}` for `i` in `0..n`, each funded with
//! [`Accounts::initial`], plus two hot ones: `{prefix}-hot-credit` (credited
//! by every transfer of its scenario) and `{prefix}-hot-debit` (debited by
//! every transfer of its scenario, funded with a huge balance so it never
//! runs dry). Every transfer moves [`Scenario::AMOUNT_MINOR`] (one cent).

use std::sync::Arc;

use serde::Serialize;
use wallet_shared::{AccountId, Currency, PartitionMap};

/// A scenario: which requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Transfers between two random accounts in different partitions.
    Uniform,
    /// Transfers between two random accounts of one partition.
    SamePartition,
    /// Transfers from a random account to the hot account.
    HotCredit,
    /// Transfers from the hot account (a huge balance) to a random account.
    HotDebit,
    /// 60% uniform transfers, 20% deposits, 20% withdrawals.
    Mixed,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Uniform,
        Kind::SamePartition,
        Kind::HotCredit,
        Kind::HotDebit,
        Kind::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Uniform => "uniform",
            Kind::SamePartition => "same-partition",
            Kind::HotCredit => "hot-credit",
            Kind::HotDebit => "hot-debit",
            Kind::Mixed => "mixed",
        }
    }
}

/// The accounts a benchmark loads and uses.
#[derive(Debug)]
pub struct Accounts {
    pub currency: Currency,
    /// The ordinary accounts.
    pub ids: Vec<String>,
    /// Partition of each of `ids`.
    pub partitions: Vec<u32>,
    /// Indexes into `ids`, by partition.
    pub by_partition: Vec<Vec<usize>>,
    pub hot_credit: String,
    pub hot_debit: String,
    /// Partitions of the two hot accounts.
    pub hot_credit_partition: u32,
    pub hot_debit_partition: u32,
    /// Minor units each ordinary account (and the hot-credit one) starts with.
    pub initial: i64,
    /// Minor units the hot-debit account starts with.
    pub hot_debit_initial: i64,
}

impl Accounts {
    /// 1,000,000.00 in minor units of a two-decimal currency.
    pub const INITIAL: i64 = 100_000_000;
    /// 10,000,000,000,000.00: enough for any number of one-cent debits.
    pub const HOT_DEBIT_INITIAL: i64 = 1_000_000_000_000_000;

    /// `n` USD accounts named `{prefix}-{i}`, plus the two hot ones, placed
    /// with `map`'s partition function.
    pub fn new(prefix: &str, n: usize, map: &PartitionMap) -> anyhow::Result<Accounts> {
        let currency = Currency::parse("USD")?;
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let partitions = ids
            .iter()
            .map(|id| Ok(map.account_partition(&AccountId::parse(id.as_str())?)))
            .collect::<Result<Vec<u32>, wallet_shared::Rejection>>()?;
        let partition_of =
            |id: &str| -> anyhow::Result<u32> { Ok(map.account_partition(&AccountId::parse(id)?)) };
        let (hot_credit, hot_debit) = (
            format!("{prefix}-hot-credit"),
            format!("{prefix}-hot-debit"),
        );
        let mut by_partition = vec![Vec::new(); map.partition_count() as usize];
        for (i, p) in partitions.iter().enumerate() {
            by_partition[*p as usize].push(i);
        }
        Ok(Accounts {
            currency,
            ids,
            partitions,
            by_partition,
            hot_credit_partition: partition_of(&hot_credit)?,
            hot_debit_partition: partition_of(&hot_debit)?,
            hot_credit,
            hot_debit,
            initial: Self::INITIAL,
            hot_debit_initial: Self::HOT_DEBIT_INITIAL,
        })
    }

    /// Every account with the minor units it starts with.
    pub fn funded(&self) -> impl Iterator<Item = (&str, i64)> {
        self.ids
            .iter()
            .map(|id| (id.as_str(), self.initial))
            .chain([
                (self.hot_credit.as_str(), self.initial),
                (self.hot_debit.as_str(), self.hot_debit_initial),
            ])
    }

    /// The money loaded at setup, in minor units.
    pub fn total(&self) -> i64 {
        self.funded().map(|(_, m)| m).sum()
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Transfer,
    Deposit,
    Withdraw,
}

/// One request of the public API.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: OpKind,
    /// Path under the coordinator's base URL.
    pub path: String,
    /// JSON body.
    pub body: String,
    /// Amount in minor units.
    pub minor: i64,
    /// Partitions of the accounts it touches.
    pub partitions: [u32; 2],
}

/// A scenario over a set of accounts: cheap to clone into every client.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub kind: Kind,
    accounts: Arc<Accounts>,
    /// [`Scenario::AMOUNT_MINOR`] as the API's decimal string.
    amount: String,
}

impl Scenario {
    /// Every request moves one minor unit.
    pub const AMOUNT_MINOR: i64 = 1;

    pub fn new(kind: Kind, accounts: Arc<Accounts>) -> Scenario {
        let amount = accounts.currency.format(Self::AMOUNT_MINOR);
        Scenario {
            kind,
            accounts,
            amount,
        }
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The next request.
    pub fn next(&self, rng: &mut fastrand::Rng) -> Op {
        let a = &*self.accounts;
        match self.kind {
            Kind::Uniform => {
                let (from, to) = self.cross_partition_pair(rng);
                self.transfer_between(from, to)
            }
            Kind::SamePartition => {
                let (from, to) = self.same_partition_pair(rng);
                self.transfer_between(from, to)
            }
            Kind::HotCredit => {
                let from = rng.usize(..a.ids.len());
                self.transfer(
                    &a.ids[from],
                    &a.hot_credit,
                    [a.partitions[from], a.hot_credit_partition],
                )
            }
            Kind::HotDebit => {
                let to = rng.usize(..a.ids.len());
                self.transfer(
                    &a.hot_debit,
                    &a.ids[to],
                    [a.hot_debit_partition, a.partitions[to]],
                )
            }
            Kind::Mixed => match rng.u32(..10) {
                0 | 1 => self.movement(OpKind::Deposit, rng.usize(..a.ids.len())),
                2 | 3 => self.movement(OpKind::Withdraw, rng.usize(..a.ids.len())),
                _ => {
                    let (from, to) = self.cross_partition_pair(rng);
                    self.transfer_between(from, to)
                }
            },
        }
    }

    fn cross_partition_pair(&self, rng: &mut fastrand::Rng) -> (usize, usize) {
        let a = &*self.accounts;
        loop {
            let (from, to) = (rng.usize(..a.ids.len()), rng.usize(..a.ids.len()));
            if a.partitions[from] != a.partitions[to] {
                return (from, to);
            }
        }
    }

    fn same_partition_pair(&self, rng: &mut fastrand::Rng) -> (usize, usize) {
        let a = &*self.accounts;
        loop {
            let from = rng.usize(..a.ids.len());
            let peers = &a.by_partition[a.partitions[from] as usize];
            let to = peers[rng.usize(..peers.len())];
            if to != from {
                return (from, to);
            }
        }
    }

    /// A transfer between ordinary accounts `from` and `to` (indexes).
    fn transfer_between(&self, from: usize, to: usize) -> Op {
        let a = &*self.accounts;
        self.transfer(
            &a.ids[from],
            &a.ids[to],
            [a.partitions[from], a.partitions[to]],
        )
    }

    fn transfer(&self, from: &str, to: &str, partitions: [u32; 2]) -> Op {
        let body = serde_json::json!({
            "transaction_id": uuid::Uuid::new_v4(),
            "from_account": from,
            "to_account": to,
            "amount": self.amount,
            "currency": self.accounts.currency.code(),
        });
        Op {
            kind: OpKind::Transfer,
            path: "/v1/wallet/balance_transfer".into(),
            body: body.to_string(),
            minor: Self::AMOUNT_MINOR,
            partitions,
        }
    }

    /// A deposit or withdrawal on ordinary account `i`.
    fn movement(&self, kind: OpKind, i: usize) -> Op {
        let (account, partition) = (&self.accounts.ids[i], self.accounts.partitions[i]);
        let verb = if kind == OpKind::Deposit {
            "deposit"
        } else {
            "withdraw"
        };
        let body = serde_json::json!({
            "transaction_id": uuid::Uuid::new_v4(),
            "amount": self.amount,
            "currency": self.accounts.currency.code(),
        });
        Op {
            kind,
            path: format!("/v1/wallet/accounts/{account}/{verb}"),
            body: body.to_string(),
            minor: Self::AMOUNT_MINOR,
            partitions: [partition; 2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_shared::partition::account_partition;

    fn map() -> PartitionMap {
        PartitionMap {
            revision: 1,
            moves: Default::default(),
            owners: (0..64).map(|p| format!("node-{}", p % 2 + 1)).collect(),
            nodes: [("node-1", "http://a"), ("node-2", "http://b")]
                .iter()
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .collect(),
        }
    }

    fn parse(op: &Op) -> serde_json::Value {
        serde_json::from_str(&op.body).unwrap()
    }

    fn partition(id: &str) -> u32 {
        account_partition(&AccountId::parse(id).unwrap(), 64)
    }

    #[test]
    fn scenarios_pick_the_accounts_they_promise() {
        let accounts = Arc::new(Accounts::new("t", 500, &map()).unwrap());
        let mut rng = fastrand::Rng::with_seed(7);
        for kind in Kind::ALL {
            let s = Scenario::new(kind, accounts.clone());
            for _ in 0..200 {
                let op = s.next(&mut rng);
                let b = parse(&op);
                if op.kind != OpKind::Transfer {
                    assert_eq!(kind, Kind::Mixed);
                    let account = op.path.split('/').nth(4).unwrap();
                    assert_eq!(op.partitions, [partition(account); 2]);
                    assert_eq!(b["amount"], "0.01");
                    continue;
                }
                let (from, to) = (
                    b["from_account"].as_str().unwrap(),
                    b["to_account"].as_str().unwrap(),
                );
                assert_ne!(from, to);
                assert_eq!(b["amount"], "0.01");
                assert_eq!(op.partitions, [partition(from), partition(to)]);
                match kind {
                    Kind::Uniform | Kind::Mixed => assert_ne!(partition(from), partition(to)),
                    Kind::SamePartition => assert_eq!(partition(from), partition(to)),
                    Kind::HotCredit => assert_eq!(to, "t-hot-credit"),
                    Kind::HotDebit => assert_eq!(from, "t-hot-debit"),
                }
            }
        }
        assert_eq!(
            accounts.total(),
            500 * Accounts::INITIAL + Accounts::INITIAL + Accounts::HOT_DEBIT_INITIAL
        );
    }
}
