//! The history of a run: every operation a client sent (what, to which
//! coordinator, when it was invoked and completed, the outcome and the
//! answer) and every fault the nemesis injected (what, where, from when to
//! when). The simulation and the chaos suite record the same [`Op`]s, and
//! the [`crate::check`]er reads them; `history.jsonl` keeps one a line,
//! `"type": "op"` or `"type": "fault"`, in invoke order.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;
use wallet_shared::Currency;

/// What a client asks for. Amounts are in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// `POST /v1/wallet/accounts`.
    Open {
        /// The new account.
        account: String,
        /// Its currency.
        currency: String,
    },
    /// `POST /v1/wallet/balance_transfer`.
    Transfer {
        /// Deduplicates.
        transaction_id: Uuid,
        /// Debited.
        from: String,
        /// Credited.
        to: String,
        /// Minor units.
        amount: i64,
        /// ISO code.
        currency: String,
    },
    /// `POST /v1/wallet/accounts/{id}/deposit`.
    Deposit {
        /// Deduplicates.
        transaction_id: Uuid,
        /// Credited.
        account: String,
        /// Minor units.
        amount: i64,
        /// ISO code.
        currency: String,
    },
    /// `POST /v1/wallet/accounts/{id}/withdraw`.
    Withdraw {
        /// Deduplicates.
        transaction_id: Uuid,
        /// Debited.
        account: String,
        /// Minor units.
        amount: i64,
        /// ISO code.
        currency: String,
    },
    /// `GET /v1/wallet/accounts/{id}/balance`.
    Read {
        /// Whose balance.
        account: String,
    },
    /// `GET /v1/wallet/transfers/{id}`.
    Status {
        /// Which transfer.
        transaction_id: Uuid,
    },
}

impl Request {
    /// The transaction id of a transfer, deposit or withdrawal.
    pub fn transaction_id(&self) -> Option<Uuid> {
        match self {
            Request::Transfer { transaction_id, .. }
            | Request::Deposit { transaction_id, .. }
            | Request::Withdraw { transaction_id, .. } => Some(*transaction_id),
            _ => None,
        }
    }

    /// Whether it may move money (and so may be retried with its id).
    pub fn is_mutation(&self) -> bool {
        self.transaction_id().is_some()
    }

    /// The money it moves: `(account, amount, currency)` of a deposit or
    /// withdrawal, `None` for anything else.
    pub fn movement(&self) -> Option<(&str, i64, &str)> {
        match self {
            Request::Deposit {
                account,
                amount,
                currency,
                ..
            }
            | Request::Withdraw {
                account,
                amount,
                currency,
                ..
            } => Some((account, *amount, currency)),
            _ => None,
        }
    }

    /// The public API call that asks it: method, path and JSON body (amounts
    /// as decimal strings, as a client sends them).
    pub fn http(&self) -> HttpCall {
        let money = |amount: i64, currency: &str| {
            Currency::parse(currency)
                .map(|c| c.format(amount))
                .unwrap_or_else(|_| amount.to_string())
        };
        let post = |path: String, body: Value| HttpCall {
            method: "POST",
            path,
            body: Some(body),
        };
        let get = |path: String| HttpCall {
            method: "GET",
            path,
            body: None,
        };
        match self {
            Request::Open { account, currency } => post(
                "/v1/wallet/accounts".into(),
                json!({"account_id": account, "currency": currency}),
            ),
            Request::Transfer {
                transaction_id,
                from,
                to,
                amount,
                currency,
            } => post(
                "/v1/wallet/balance_transfer".into(),
                json!({
                    "transaction_id": transaction_id, "from_account": from, "to_account": to,
                    "amount": money(*amount, currency), "currency": currency,
                }),
            ),
            Request::Deposit {
                transaction_id,
                account,
                amount,
                currency,
            }
            | Request::Withdraw {
                transaction_id,
                account,
                amount,
                currency,
            } => {
                let verb = if matches!(self, Request::Deposit { .. }) {
                    "deposit"
                } else {
                    "withdraw"
                };
                post(
                    format!("/v1/wallet/accounts/{account}/{verb}"),
                    json!({
                        "transaction_id": transaction_id,
                        "amount": money(*amount, currency), "currency": currency,
                    }),
                )
            }
            Request::Read { account } => get(format!("/v1/wallet/accounts/{account}/balance")),
            Request::Status { transaction_id } => {
                get(format!("/v1/wallet/transfers/{transaction_id}"))
            }
        }
    }

    /// Its kind, as the history spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Open { .. } => "open",
            Request::Transfer { .. } => "transfer",
            Request::Deposit { .. } => "deposit",
            Request::Withdraw { .. } => "withdraw",
            Request::Read { .. } => "read",
            Request::Status { .. } => "status",
        }
    }
}

/// One call of the public API, as [`Request::http`] spells it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path and query, from `/v1/`.
    pub path: String,
    /// The JSON body of a `POST`.
    pub body: Option<Value>,
}

/// What an answer means (see the README's table of outcomes).
pub fn classify(request: &Request, status: u16, body: &Value) -> Outcome {
    let code = body.get("code").and_then(Value::as_str);
    match status {
        // Pending: recovery will settle it.
        202 => Outcome::Unknown,
        200..=299 => match request {
            Request::Transfer { .. } | Request::Deposit { .. } | Request::Withdraw { .. } => {
                if body.get("status").and_then(Value::as_str) == Some("committed") {
                    Outcome::Ok
                } else {
                    Outcome::Unknown
                }
            }
            _ => Outcome::Ok,
        },
        409 if code == Some("in_progress") => Outcome::Unknown,
        400..=499 => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// What the client learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done: a committed transfer or movement, an open account, a read.
    Ok,
    /// Definitely not done by this request: a refusal, or the request
    /// never left the client (connection refused).
    Fail,
    /// Maybe done: pending, in progress, a 5xx, a timeout, a broken
    /// connection.
    Unknown,
}

/// Which part of the run an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening and funding the accounts, before any fault.
    Setup,
    /// Clients against the nemesis.
    Chaos,
    /// After healing: finding out how every unknown operation ended.
    Resolve,
    /// After settling: new operations that must succeed.
    Fresh,
    /// The final read of every balance.
    Final,
}

/// One operation, from invocation to completion.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// The client that ran it (`clients` and above: the harness itself).
    pub process: usize,
    /// Part of the run.
    pub phase: Phase,
    /// What was asked.
    #[serde(flatten)]
    pub request: Request,
    /// Whether this request was sent before (same id, same body).
    pub retry: bool,
    /// Which coordinator it went to (index).
    pub coordinator: usize,
    /// When it was sent (ms since the start).
    pub invoke_ms: f64,
    /// When the answer, or the error, came (ms since the start).
    pub complete_ms: f64,
    /// What it came to.
    pub outcome: Outcome,
    /// HTTP status, if an answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The answer's body (JSON, or the text as a JSON string).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub body: Value,
    /// Why no answer came, if none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// The `code` of an error answer.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    /// The `status` field of the answer (`committed`, `aborted`, `pending`).
    pub fn state(&self) -> Option<&str> {
        self.body.get("status").and_then(Value::as_str)
    }

    /// A definite answer from the system (not a transport failure, not
    /// pending): what a retry of the same id must answer again.
    pub fn answer(&self) -> Option<String> {
        if self.outcome == Outcome::Unknown {
            return None;
        }
        let status = self.status?;
        Some(match (self.outcome, self.code()) {
            (Outcome::Ok, _) => format!("{status} committed"),
            (_, Some(code)) => format!("{status} {code}"),
            (_, None) => format!("{status}"),
        })
    }

    /// A status lookup that found the transfer decided, or found none.
    pub fn is_final_status(&self) -> bool {
        matches!(
            (self.status, self.state(), self.code()),
            (Some(200), Some("committed" | "aborted"), _)
                | (Some(404), _, Some("transfer_not_found"))
        )
    }

    /// How long it took.
    pub fn latency_ms(&self) -> f64 {
        self.complete_ms - self.invoke_ms
    }
}

/// The faults the nemesis knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` of a coordinator, restarted after a while.
    KillCoordinator,
    /// `kill -9` of a participant, restarted after a while.
    KillParticipant,
    /// `kill -9` of a Postgres server and its backends, restarted after a
    /// while (crash recovery).
    KillPostgres,
    /// `kill -9` of etcd, restarted after a while.
    KillEtcd,
    /// SIGSTOP, then SIGCONT, of a coordinator.
    PauseCoordinator,
    /// SIGSTOP, then SIGCONT, of a participant.
    PauseParticipant,
    /// SIGSTOP, then SIGCONT, of a Postgres server and its backends.
    PausePostgres,
    /// SIGSTOP, then SIGCONT, of etcd.
    PauseEtcd,
    /// Every coordinator's link to one participant reset.
    CutParticipant,
    /// Every coordinator's link to one participant silent.
    BlackholeParticipant,
    /// One coordinator's link to etcd reset.
    CutEtcd,
    /// One coordinator's link to etcd silent.
    BlackholeEtcd,
    /// A partition moved to another node (`walletctl partitions move`),
    /// sometimes with another fault, or a crash of walletctl, in the middle;
    /// then run again until it is done.
    MovePartition,
    /// A container (coordinator, participant, Postgres or etcd) taken off
    /// the compose network (`docker network disconnect`), then put back:
    /// the chaos suite's containers mode.
    Disconnect,
}

impl FaultKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [FaultKind; 14] = [
        FaultKind::KillCoordinator,
        FaultKind::KillParticipant,
        FaultKind::KillPostgres,
        FaultKind::KillEtcd,
        FaultKind::PauseCoordinator,
        FaultKind::PauseParticipant,
        FaultKind::PausePostgres,
        FaultKind::PauseEtcd,
        FaultKind::CutParticipant,
        FaultKind::BlackholeParticipant,
        FaultKind::CutEtcd,
        FaultKind::BlackholeEtcd,
        FaultKind::MovePartition,
        FaultKind::Disconnect,
    ];

    /// The kinds the in-process nemesis injects (the containers mode
    /// injects kills, pauses and disconnects with docker).
    pub const IN_PROCESS: [FaultKind; 13] = [
        FaultKind::KillCoordinator,
        FaultKind::KillParticipant,
        FaultKind::KillPostgres,
        FaultKind::KillEtcd,
        FaultKind::PauseCoordinator,
        FaultKind::PauseParticipant,
        FaultKind::PausePostgres,
        FaultKind::PauseEtcd,
        FaultKind::CutParticipant,
        FaultKind::BlackholeParticipant,
        FaultKind::CutEtcd,
        FaultKind::BlackholeEtcd,
        FaultKind::MovePartition,
    ];

    /// Its name in the history and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillCoordinator => "kill_coordinator",
            FaultKind::KillParticipant => "kill_participant",
            FaultKind::KillPostgres => "kill_postgres",
            FaultKind::KillEtcd => "kill_etcd",
            FaultKind::PauseCoordinator => "pause_coordinator",
            FaultKind::PauseParticipant => "pause_participant",
            FaultKind::PausePostgres => "pause_postgres",
            FaultKind::PauseEtcd => "pause_etcd",
            FaultKind::CutParticipant => "cut_participant",
            FaultKind::BlackholeParticipant => "blackhole_participant",
            FaultKind::CutEtcd => "cut_etcd",
            FaultKind::BlackholeEtcd => "blackhole_etcd",
            FaultKind::MovePartition => "move_partition",
            FaultKind::Disconnect => "disconnect",
        }
    }
}

/// One fault, from injection to healing.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// Where, e.g. `coordinator-2`, `postgres-1`, `coordinator-1->etcd`.
    pub target: String,
    /// When it was injected (ms since the start).
    pub start_ms: f64,
    /// When it was healed: the process back and healthy, the link open.
    pub end_ms: f64,
}

/// Everything that happened.
#[derive(Debug, Default)]
pub struct History {
    /// Every operation.
    pub ops: Vec<Op>,
    /// Every fault.
    pub faults: Vec<Fault>,
}

/// What the operations on one transaction id tell about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Some answer said committed.
    Acked,
    /// Some answer was a refusal: nothing applied.
    Refused,
    /// No request with it ever left the client.
    NeverSent,
    /// Every answer was unknown: the status (a transfer) or a retry (a
    /// movement) must tell.
    Unknown,
}

impl Known {
    /// Reads the operations of one transaction id.
    pub fn of(ops: &[&Op]) -> Known {
        if ops.iter().any(|op| op.outcome == Outcome::Ok) {
            Known::Acked
        } else if ops
            .iter()
            .any(|op| op.outcome == Outcome::Fail && op.status.is_some())
        {
            Known::Refused
        } else if ops.iter().all(|op| op.outcome == Outcome::Fail) {
            Known::NeverSent
        } else {
            Known::Unknown
        }
    }
}

/// One line of `history.jsonl`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Op(&'a Op),
    Fault(&'a Fault),
}

impl History {
    /// The transfers, deposits and withdrawals, by transaction id, in the
    /// order they were recorded.
    pub fn by_transaction(&self) -> BTreeMap<Uuid, Vec<&Op>> {
        let mut by: BTreeMap<Uuid, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            if let Some(id) = op.request.transaction_id() {
                by.entry(id).or_default().push(op);
            }
        }
        by
    }

    /// The latest status lookup of each transfer.
    pub fn statuses(&self) -> BTreeMap<Uuid, &Op> {
        let mut latest: BTreeMap<Uuid, &Op> = BTreeMap::new();
        for op in &self.ops {
            if let Request::Status { transaction_id } = op.request {
                let later = latest
                    .get(&transaction_id)
                    .is_none_or(|prev| prev.complete_ms <= op.complete_ms);
                if later {
                    latest.insert(transaction_id, op);
                }
            }
        }
        latest
    }

    /// The requests whose outcome nothing in the history settles yet: a
    /// movement with only unknown answers, a transfer with only unknown
    /// answers and no final status (committed, aborted or not found). A
    /// transaction id sent with two bodies (the second must be refused) is
    /// settled body by body.
    pub fn undetermined(&self) -> Vec<Request> {
        let statuses = self.statuses();
        let mut out = Vec::new();
        for (id, ops) in self.by_transaction() {
            let mut bodies: Vec<&Request> = Vec::new();
            for op in &ops {
                if !bodies.contains(&&op.request) {
                    bodies.push(&op.request);
                }
            }
            for body in bodies {
                let same: Vec<&Op> = ops
                    .iter()
                    .copied()
                    .filter(|op| op.request == *body)
                    .collect();
                let settled_by_status = matches!(body, Request::Transfer { .. })
                    && statuses.get(&id).is_some_and(|s| s.is_final_status());
                if Known::of(&same) == Known::Unknown && !settled_by_status {
                    out.push(body.clone());
                }
            }
        }
        out
    }

    /// The transfers whose latest status lookup found no record while
    /// `state` now holds one (a message delayed past the lookup): their
    /// status is to be looked up again before checking.
    pub fn to_look_up_again(&self, state: &crate::State) -> Vec<Uuid> {
        self.statuses()
            .into_iter()
            .filter(|(id, op)| op.status == Some(404) && state.transfers.contains_key(id))
            .map(|(id, _)| id)
            .collect()
    }

    /// Writes the history as JSON lines into `out`, operations and faults
    /// merged in the order they started (`history.jsonl`).
    pub fn write_jsonl_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut lines: Vec<(f64, Line)> = self
            .ops
            .iter()
            .map(|op| (op.invoke_ms, Line::Op(op)))
            .chain(self.faults.iter().map(|f| (f.start_ms, Line::Fault(f))))
            .collect();
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, line) in &lines {
            serde_json::to_writer(&mut *out, line)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}
