//! Accounts: the checks a debit or a credit must pass. Every balance change
//! itself goes through [`Working::record`](crate::model::Working::record),
//! which appends the event and applies its effect in the same transaction,
//! so the balance can never drift from the log.

use wallet_shared::protocol::AccountBalance;
use wallet_shared::{AccountId, Currency, ErrorCode, Rejection};

use crate::model::AccountRow;

impl AccountRow {
    pub fn available(&self) -> i64 {
        self.posted - self.held
    }

    /// May `amount` of `currency` leave this account?
    pub fn can_debit(&self, amount: i64, currency: Currency) -> Result<(), Rejection> {
        self.same_currency(currency)?;
        if self.available() < amount {
            return Err(Rejection::new(
                ErrorCode::InsufficientFunds,
                format!(
                    "account {} has {} {currency} available, {} needed",
                    self.account_id,
                    currency.format(self.available()),
                    currency.format(amount)
                ),
            ));
        }
        Ok(())
    }

    /// May `amount` of `currency` arrive in this account (now or once
    /// pending credits post)?
    pub fn can_credit(&self, amount: i64, currency: Currency) -> Result<(), Rejection> {
        self.same_currency(currency)?;
        let room = i64::MAX - self.posted - self.pending_credit;
        if amount > room {
            return Err(Rejection::new(
                ErrorCode::BalanceOverflow,
                format!(
                    "account {} cannot hold that much {currency}",
                    self.account_id
                ),
            ));
        }
        Ok(())
    }

    fn same_currency(&self, currency: Currency) -> Result<(), Rejection> {
        if self.currency != currency {
            return Err(Rejection::new(
                ErrorCode::CurrencyMismatch,
                format!(
                    "account {} holds {}, not {currency}",
                    self.account_id, self.currency
                ),
            ));
        }
        Ok(())
    }

    /// May the caller acting for `tenant` take money out of this account?
    /// `None`: an admin or the cluster itself, which may.
    pub fn can_be_debited_by(&self, tenant: Option<&str>) -> Result<(), Rejection> {
        match tenant {
            Some(t) if self.owner.as_deref() != Some(t) => Err(Rejection::new(
                ErrorCode::Forbidden,
                format!(
                    "account {} does not belong to this key's tenant",
                    self.account_id
                ),
            )),
            _ => Ok(()),
        }
    }

    pub fn balance(&self) -> AccountBalance {
        AccountBalance {
            account_id: self.account_id.clone(),
            currency: self.currency,
            posted: self.posted,
            held: self.held,
            pending_credit: self.pending_credit,
            last_seq: self.last_seq,
            owner: self.owner.clone(),
        }
    }
}

pub fn not_found(id: &AccountId) -> Rejection {
    Rejection::new(
        ErrorCode::AccountNotFound,
        format!("account {id} does not exist"),
    )
}
