//! Messages between coordinators and participants (JSON over HTTP, under
//! `/internal/v1/`). Amounts here are integers in minor units.
//!
//! A cross-node transfer is, in order:
//! 1. `begin` at the transfer's decision partition: dedup record + lease.
//! 2. `legs/prepare` on the debit's and the credit's node: the debit moves
//!    funds from available to held, the credit records a pending credit.
//! 3. `decide` at the decision partition: compare-and-set `preparing ->
//!    committed|aborted`. The first decision wins; every later one reads it.
//! 4. `legs/commit` or `legs/abort` on the legs' nodes, as the decision says.
//! 5. `complete` at the decision partition, so recovery stops looking at it.
//!
//! When the decision partition and both accounts live on one node,
//! `transfers/execute` does all of it in one local transaction.
//!
//! A deposit or withdrawal is deduplicated at the same place, so every
//! `transaction_id` is one idempotency key across the cluster and across
//! kinds: `begin` claims the id at its decision partition (a record of kind
//! `deposit` or `withdrawal`), `movements` applies it on the account's node
//! (in one local transaction: once, with its verdict kept), and `decide`
//! copies the outcome into the record. When the decision partition lives on
//! the account's node, `movements` carries the claim and does it all in one
//! local transaction. Recovery completes a claim whose coordinator stopped:
//! it sends the movement again (applied or refused once) and decides the
//! record to match.
//! Every call takes many items, so concurrent transfers can share one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Rejection;
use crate::ids::{AccountId, TransactionId};
use crate::money::{Amount, Currency};
use crate::partition::PartitionId;

/// Every internal request names the map revision it was routed with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Routed<T> {
    pub map_revision: i64,
    /// With traces on, the W3C `traceparent` of each item of a batch, in
    /// order ("" for an item without one): the span that submitted it, so
    /// the participant's work on the item joins the item's own trace (see
    /// `wallet_shared::traces`). Absent when traces are off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<String>,
    #[serde(flatten)]
    pub body: T,
}

/// A transfer as the client asked for it, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSpec {
    pub transaction_id: TransactionId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    pub currency: Currency,
    /// The tenant the caller acts for: it may debit only that tenant's
    /// accounts, and the record is that tenant's (part of "the same body",
    /// so an id used by another tenant is `idempotency_key_reused`). `None`:
    /// an admin (or the cluster itself) acting on every account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl TransferSpec {
    /// What "the same body" means for deduplication.
    pub fn fingerprint(&self) -> String {
        let amount = self.amount.minor().to_string();
        let mut parts = vec![
            "transfer",
            self.from.as_str(),
            self.to.as_str(),
            &amount,
            self.currency.code(),
        ];
        parts.extend(self.tenant.as_deref());
        fingerprint(&parts)
    }
}

/// What a `transaction_id` was used for. Every kind shares one idempotency
/// domain: the record at the id's decision partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    #[default]
    Transfer,
    Deposit,
    Withdrawal,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Transfer => "transfer",
            RecordKind::Deposit => "deposit",
            RecordKind::Withdrawal => "withdrawal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RecordKind::Transfer,
            RecordKind::Deposit,
            RecordKind::Withdrawal,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The movement this kind names, if it is one.
    pub fn movement(self) -> Option<MovementKind> {
        match self {
            RecordKind::Transfer => None,
            RecordKind::Deposit => Some(MovementKind::Deposit),
            RecordKind::Withdrawal => Some(MovementKind::Withdrawal),
        }
    }
}

impl From<MovementKind> for RecordKind {
    fn from(k: MovementKind) -> Self {
        match k {
            MovementKind::Deposit => RecordKind::Deposit,
            MovementKind::Withdrawal => RecordKind::Withdrawal,
        }
    }
}

/// SHA-256 (hex) of the parts, each length-prefixed so no two lists collide.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegRole {
    Debit,
    Credit,
}

impl LegRole {
    pub fn as_str(self) -> &'static str {
        match self {
            LegRole::Debit => "debit",
            LegRole::Credit => "credit",
        }
    }
}

/// One side of a transfer, as sent to the node that owns its account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub transaction_id: TransactionId,
    pub role: LegRole,
    pub account: AccountId,
    pub partition: PartitionId,
    pub amount: Amount,
    pub currency: Currency,
    pub counterparty: AccountId,
    /// Where the transfer's decision lives; recovery asks there.
    pub decision_partition: PartitionId,
    /// A debit's prepare is refused (`forbidden`) unless its account
    /// belongs to this tenant (the transfer's [`TransferSpec::tenant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Leg {
    pub fn both(
        spec: &TransferSpec,
        from_partition: PartitionId,
        to_partition: PartitionId,
        decision_partition: PartitionId,
    ) -> [Leg; 2] {
        let leg = |role, account: &AccountId, partition, counterparty: &AccountId| Leg {
            transaction_id: spec.transaction_id,
            role,
            account: account.clone(),
            partition,
            amount: spec.amount,
            currency: spec.currency,
            counterparty: counterparty.clone(),
            decision_partition,
            tenant: match role {
                LegRole::Debit => spec.tenant.clone(),
                LegRole::Credit => None,
            },
        };
        [
            leg(LegRole::Debit, &spec.from, from_partition, &spec.to),
            leg(LegRole::Credit, &spec.to, to_partition, &spec.from),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegState {
    Prepared,
    Committed,
    Aborted,
    /// Commit asked for a leg this node never saw (must not happen; logged).
    Missing,
}

// ---- begin -----------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Begin {
    pub spec: TransferSpec,
    /// The decision partition (`decision_partition(transaction_id)`).
    pub partition: PartitionId,
    /// How long this coordinator claims the transfer; a retry after that
    /// takes it over.
    pub lease_ms: u64,
    /// Names this attempt, so its own retry of `begin` (after a lost reply)
    /// proceeds instead of finding the transfer "in progress".
    pub attempt: uuid::Uuid,
    /// A transfer, or the claim of a deposit's or withdrawal's id (then
    /// `spec.from` and `spec.to` both name its account).
    #[serde(default)]
    pub kind: RecordKind,
    /// A leg the coordinator found on the decision partition's node: it is
    /// prepared in the same local transaction as the claim, if the claim
    /// proceeds and that node still owns the leg's partition (else the
    /// answer is a plain `proceed` and the leg is prepared on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<Leg>,
}

impl Begin {
    /// What "the same body" means for this id, whatever its kind: a
    /// transfer's and a movement's fingerprints never agree.
    pub fn fingerprint(&self) -> String {
        match self.kind.movement() {
            None => self.spec.fingerprint(),
            Some(kind) => Movement::fingerprint_of(
                kind,
                &self.spec.to,
                self.spec.amount,
                self.spec.currency,
                self.spec.tenant.as_deref(),
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginRequest {
    pub transfers: Vec<Begin>,
}

/// What a participant's rules answer for one thing asked of them: done
/// (and what came of it), or refused, with the refusal's stable code and
/// why. The one way a refusal is said, from the rules through the wire to
/// the coordinator: a prepare's "no" vote, a claim on an id used with
/// another body (`idempotency_key_reused`) or held by a live lease
/// (`in_progress`), an overdrawn withdrawal.
pub type Verdict<T> = Result<T, Rejection>;

/// A leg's vote: `Ok(())` is yes, a refusal is no, with its reason.
pub type Vote = Verdict<()>;

/// A transfer (or a movement's claim) begun: the caller may go on, or it
/// was decided already. Refusals (`idempotency_key_reused`, `in_progress`)
/// are the [`Verdict`]'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Begun {
    /// The caller holds the lease: prepare, decide, commit.
    Proceed,
    /// As `Proceed`, and the leg that came with the claim
    /// ([`Begin::prepare`]) has voted.
    Prepared { vote: Vote },
    /// Already decided: answer with this.
    Decided { record: TransferRecord },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeginReply {
    pub results: Vec<Verdict<Begun>>,
}

// ---- prepare / commit / abort ---------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareReply {
    pub votes: Vec<Vote>,
}

/// Prepare, commit or abort these legs. Whole legs, not keys: an abort of a
/// leg the node never saw leaves a complete tombstone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegsRequest {
    pub legs: Vec<Leg>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LegsReply {
    pub states: Vec<LegState>,
}

// ---- decide / complete / lookup -------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Commit,
    Abort { reason: Rejection },
}

impl Decision {
    /// The decision a single-node outcome makes (a deposit or withdrawal,
    /// whose account's node has already applied or refused it).
    pub fn of<T>(outcome: &Verdict<T>) -> Decision {
        match outcome {
            Ok(_) => Decision::Commit,
            Err(reason) => Decision::Abort {
                reason: reason.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decide {
    pub transaction_id: TransactionId,
    pub partition: PartitionId,
    pub decision: Decision,
    /// A leg the coordinator found on the decision partition's node: the
    /// winning decision is applied to it in the same local transaction, if
    /// that node still owns the leg's partition ([`DecideReply::applied`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<Leg>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecideRequest {
    pub decisions: Vec<Decide>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecideReply {
    /// The record after the compare-and-set: the winning decision. `None`
    /// when no transfer with that id began there.
    pub records: Vec<Option<TransferRecord>>,
    /// For each decision, in order, the state its [`Decide::apply`] leg was
    /// left in; `None` when it came without one or it was not applied here
    /// (the caller then sends it as a commit or abort of its own). Empty
    /// when no decision came with a leg.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<Option<LegState>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TransferRef {
    pub transaction_id: TransactionId,
    pub partition: PartitionId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub transfers: Vec<TransferRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    Preparing,
    Committed,
    Aborted,
}

/// The dedup record and decision of a transfer, kept at its decision
/// partition; of a deposit or withdrawal too (see [`RecordKind`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferRecord {
    #[serde(default)]
    pub kind: RecordKind,
    /// For a deposit or withdrawal, `from` and `to` both name its account.
    pub spec: TransferSpec,
    pub state: TransferState,
    /// Why it aborted, for aborted transfers.
    pub reason: Option<Rejection>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    /// Every leg has applied the decision; recovery no longer looks at it.
    pub completed: bool,
}

// ---- one local transaction -------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteRequest {
    pub begin: Begin,
    pub legs: [Leg; 2],
}

/// Many one-phase transfers, each applied (or refused) on its own, all in
/// one local transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteBatch {
    pub transfers: Vec<ExecuteRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteReply {
    pub results: Vec<Verdict<Begun>>,
}

// ---- recovery ----------------------------------------------------------------

/// What recovery should look at on one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unresolved {
    /// Decision records here that are decided but not completed, or still
    /// preparing with an expired lease.
    pub transfers: Vec<TransferRecord>,
    /// Legs here still prepared after the grace period.
    pub legs: Vec<Leg>,
}

// ---- accounts ----------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAccount {
    pub account_id: AccountId,
    pub partition: PartitionId,
    pub currency: Currency,
    /// The tenant that opens it and owns it from then on (`None`: opened by
    /// an admin, for admins only). Opening an id another tenant owns is
    /// `account_exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    Deposit,
    Withdrawal,
}

/// Money entering or leaving the system through one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    pub transaction_id: TransactionId,
    pub kind: MovementKind,
    pub account_id: AccountId,
    pub partition: PartitionId,
    pub amount: Amount,
    pub currency: Currency,
    /// Refused (`forbidden`) unless the account belongs to this tenant;
    /// part of "the same body" (see [`TransferSpec::tenant`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Movement {
    pub fn fingerprint(&self) -> String {
        Self::fingerprint_of(
            self.kind,
            &self.account_id,
            self.amount,
            self.currency,
            self.tenant.as_deref(),
        )
    }

    fn fingerprint_of(
        kind: MovementKind,
        account: &AccountId,
        amount: Amount,
        currency: Currency,
        tenant: Option<&str>,
    ) -> String {
        let amount = amount.minor().to_string();
        let mut parts = vec![
            RecordKind::from(kind).as_str(),
            account.as_str(),
            &amount,
            currency.code(),
        ];
        parts.extend(tenant);
        fingerprint(&parts)
    }

    /// The claim of this movement's id at its decision partition.
    pub fn claim(&self, partition: PartitionId, lease_ms: u64, attempt: uuid::Uuid) -> Begin {
        Begin {
            spec: TransferSpec {
                transaction_id: self.transaction_id,
                from: self.account_id.clone(),
                to: self.account_id.clone(),
                amount: self.amount,
                currency: self.currency,
                tenant: self.tenant.clone(),
            },
            partition,
            lease_ms,
            attempt,
            kind: self.kind.into(),
            prepare: None,
        }
    }

    /// The movement a claim record stands for (`None` for a transfer's);
    /// `partition` is its account's, from the current map.
    pub fn of_record(record: &TransferRecord, partition: PartitionId) -> Option<Movement> {
        Some(Movement {
            transaction_id: record.spec.transaction_id,
            kind: record.kind.movement()?,
            account_id: record.spec.to.clone(),
            partition,
            amount: record.spec.amount,
            currency: record.spec.currency,
            tenant: record.spec.tenant.clone(),
        })
    }
}

/// A deposit or withdrawal on the account's node; `claim` when its decision
/// partition lives there too, so the claim and the movement are one local
/// transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MovementRequest {
    #[serde(flatten)]
    pub movement: Movement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Begin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountBalance {
    pub account_id: AccountId,
    pub currency: Currency,
    /// Money that is the account's.
    pub posted: i64,
    /// Part of `posted` held by prepared debits.
    pub held: i64,
    /// Prepared credits, not yet the account's.
    pub pending_credit: i64,
    /// Sequence number of the account's newest event.
    pub last_seq: i64,
    /// The tenant that owns the account (`None`: admins only). The
    /// coordinator shows the account to its owner's keys and admin keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl AccountBalance {
    pub fn available(&self) -> i64 {
        self.posted - self.held
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Opened,
    Deposited,
    Withdrawn,
    DebitHeld,
    DebitPosted,
    DebitReleased,
    CreditPending,
    CreditPosted,
    CreditVoided,
    /// Both sides in one local transaction: posted directly, no hold.
    TransferredOut,
    TransferredIn,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Opened,
        EventKind::Deposited,
        EventKind::Withdrawn,
        EventKind::DebitHeld,
        EventKind::DebitPosted,
        EventKind::DebitReleased,
        EventKind::CreditPending,
        EventKind::CreditPosted,
        EventKind::CreditVoided,
        EventKind::TransferredOut,
        EventKind::TransferredIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Deposited => "deposited",
            EventKind::Withdrawn => "withdrawn",
            EventKind::DebitHeld => "debit_held",
            EventKind::DebitPosted => "debit_posted",
            EventKind::DebitReleased => "debit_released",
            EventKind::CreditPending => "credit_pending",
            EventKind::CreditPosted => "credit_posted",
            EventKind::CreditVoided => "credit_voided",
            EventKind::TransferredOut => "transferred_out",
            EventKind::TransferredIn => "transferred_in",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How this event changes (posted, held, pending credit). The fold of
    /// these over an account's events is its balance: the stored balance row
    /// is only a projection of it.
    pub fn effect(self, amount: i64) -> (i64, i64, i64) {
        match self {
            EventKind::Opened => (0, 0, 0),
            EventKind::Deposited | EventKind::TransferredIn => (amount, 0, 0),
            EventKind::Withdrawn | EventKind::TransferredOut => (-amount, 0, 0),
            EventKind::DebitHeld => (0, amount, 0),
            EventKind::DebitPosted => (-amount, -amount, 0),
            EventKind::DebitReleased => (0, -amount, 0),
            EventKind::CreditPending => (0, 0, amount),
            EventKind::CreditPosted => (amount, 0, -amount),
            EventKind::CreditVoided => (0, 0, -amount),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub account_id: AccountId,
    pub seq: i64,
    pub kind: EventKind,
    pub amount: i64,
    pub transaction_id: Option<TransactionId>,
    pub counterparty: Option<AccountId>,
    pub at: DateTime<Utc>,
}

/// (posted, held, pending credit) after applying `events` in order.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> (i64, i64, i64) {
    replay_from((0, 0, 0), events)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    /// The account's currency, the unit of every amount below.
    pub currency: Currency,
    /// The account's owner (see [`AccountBalance::owner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub events: Vec<Event>,
    /// Pass as `after` to read the next page; absent at the end.
    pub next_after: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoricalBalance {
    pub balance: AccountBalance,
    /// Events folded to answer.
    pub events_replayed: u64,
    /// The snapshot the fold started from; `None`: from the first event.
    #[serde(default)]
    pub snapshot: Option<SnapshotRef>,
}

/// An account's balance right after its event `seq` (stored every Nth
/// event, in the same local transaction as that event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub account_id: AccountId,
    pub seq: i64,
    pub posted: i64,
    pub held: i64,
    pub pending_credit: i64,
    /// The time of event `seq`; no earlier event of the account is later.
    pub at: DateTime<Utc>,
}

impl Snapshot {
    pub fn fold(&self) -> (i64, i64, i64) {
        (self.posted, self.held, self.pending_credit)
    }
}

/// Which snapshot an `as_of` answer started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub seq: i64,
    pub at: DateTime<Utc>,
}

/// (posted, held, pending credit) after applying `events`, in order, to `start`.
pub fn replay_from<'a>(
    start: (i64, i64, i64),
    events: impl IntoIterator<Item = &'a Event>,
) -> (i64, i64, i64) {
    events.into_iter().fold(start, |(p, h, c), e| {
        let (dp, dh, dc) = e.kind.effect(e.amount);
        (p + dp, h + dh, c + dc)
    })
}

// ---- the change feed ---------------------------------------------------------

/// What a feed entry says happened: an account's event, or a transfer
/// decided aborted at its decision partition (the rejected transfers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum FeedKind {
    Event(EventKind),
    TransferAborted,
}

impl FeedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Event(k) => k.as_str(),
            FeedKind::TransferAborted => "transfer_aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "transfer_aborted" => Some(FeedKind::TransferAborted),
            other => EventKind::parse(other).map(FeedKind::Event),
        }
    }
}

impl From<FeedKind> for String {
    fn from(k: FeedKind) -> String {
        k.as_str().to_string()
    }
}

impl TryFrom<String> for FeedKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        FeedKind::parse(&s).ok_or_else(|| format!("unknown feed entry kind {s:?}"))
    }
}

/// One entry of a participant's change feed: a self-contained copy of what
/// was written (it outlives the rows it copies, e.g. after a partition move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// Place in this node's feed: 1, 2, 3, ... in commit order.
    pub position: i64,
    pub kind: FeedKind,
    /// The account of an event; the debit account of an aborted transfer.
    pub account_id: AccountId,
    /// The event's per-account sequence number (events only).
    pub seq: Option<i64>,
    /// Minor units of `currency`.
    pub amount: i64,
    pub currency: Currency,
    pub transaction_id: Option<TransactionId>,
    /// The other account of a transfer (an aborted transfer: the credit account).
    pub counterparty: Option<AccountId>,
    /// Why an aborted transfer was aborted.
    pub reason: Option<crate::error::ErrorCode>,
    pub partition: PartitionId,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedPage {
    pub node_id: String,
    /// Entries with positions after the request's `after`, in order.
    pub entries: Vec<FeedEntry>,
    /// The last position handed out on this node so far.
    pub head: i64,
}

/// `PUT /internal/v1/feed/consumers/{name}`: a feed reader's position on
/// this node, every entry up to it consumed for good. The node prunes its
/// outbox behind the smallest position of its registered consumers; a
/// reader that registers holds the outbox from its position on. The
/// position is the reader's own: it may go back (a rebuild), but never
/// below the node's `pruned_through`, nor above its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedAck {
    pub position: i64,
}

/// A registered feed consumer, as the node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedConsumer {
    pub name: String,
    pub position: i64,
    pub updated_at: DateTime<Utc>,
}

/// `GET /internal/v1/feed/consumers`, and the answer to an ack or a
/// removal (`DELETE .../consumers/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedConsumers {
    pub node_id: String,
    /// The last position handed out.
    pub head: i64,
    /// Every entry up to this position is gone from the outbox: the feed
    /// refuses a read from below it (read the history instead).
    pub pruned_through: i64,
    pub consumers: Vec<FeedConsumer>,
}

/// `GET /internal/v1/history/events?after_account&after_seq&limit` and
/// `GET /internal/v1/history/aborted?after&limit`: what the feed carried,
/// read from the tables it was written with, for the partitions this node
/// owns: every event (in account and sequence order), or every transfer
/// decision record aborted and still kept (in transaction id order). The
/// entries' positions are 0. A projection rebuilt from these, then from
/// the feed after `pruned_through` skipping what it already read, is the
/// one the whole feed gives (but for aborted transfers older than the
/// record retention, which are gone).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPage {
    pub node_id: String,
    pub entries: Vec<FeedEntry>,
    /// Nothing after the last entry.
    pub done: bool,
}

// ---- replay check ------------------------------------------------------------

/// One account rebuilt from its events and compared with its stored row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayedAccount {
    pub account_id: AccountId,
    pub stored: AccountBalance,
    /// (posted, held, pending credit) folded from the events.
    pub replayed: (i64, i64, i64),
    pub events: u64,
    pub snapshots: u64,
    /// Every disagreement found; empty when the account is consistent.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayPage {
    pub node_id: String,
    pub accounts: Vec<ReplayedAccount>,
    /// Pass as `after` for the next page; absent at the end.
    pub next_after: Option<AccountId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_leaves_posted_balances_moved_and_nothing_held() {
        let at = Utc::now();
        let ev = |kind, amount| Event {
            account_id: AccountId::parse("a").unwrap(),
            seq: 0,
            kind,
            amount,
            transaction_id: None,
            counterparty: None,
            at,
        };
        let debit = [
            ev(EventKind::Deposited, 100),
            ev(EventKind::DebitHeld, 30),
            ev(EventKind::DebitPosted, 30),
        ];
        assert_eq!(replay(&debit), (70, 0, 0));
        let released = [
            ev(EventKind::Deposited, 100),
            ev(EventKind::DebitHeld, 30),
            ev(EventKind::DebitReleased, 30),
        ];
        assert_eq!(replay(&released), (100, 0, 0));
        let credit = [
            ev(EventKind::CreditPending, 30),
            ev(EventKind::CreditPosted, 30),
        ];
        assert_eq!(replay(&credit), (30, 0, 0));
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn fingerprints_tell_bodies_apart() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["x"]), fingerprint(&["x"]));
    }
}
