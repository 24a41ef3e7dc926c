//! The history of a chaos run: every operation a client sent (what, to
//! which coordinator, when it was invoked and completed, the outcome and the
//! answer) and every fault the nemesis injected (what, where, from when to
//! when). The checker reads it; `history.jsonl` keeps it, one JSON object a
//! line, `"type": "op"` or `"type": "fault"`, in invoke order.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// Milliseconds since the start of the run, for every timestamp.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// When the run started.
    start: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Milliseconds since the zero, to the microsecond.
    pub fn now_ms(&self) -> f64 {
        (self.start.elapsed().as_micros() as f64) / 1000.0
    }
}

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
}

impl FaultKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [FaultKind; 13] = [
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
    /// answers and no final status (committed, aborted or not found).
    pub fn undetermined(&self) -> Vec<Request> {
        let statuses = self.statuses();
        self.by_transaction()
            .into_iter()
            .filter(|(id, ops)| {
                Known::of(ops) == Known::Unknown
                    && !(matches!(ops[0].request, Request::Transfer { .. })
                        && statuses.get(id).is_some_and(|s| s.is_final_status()))
            })
            .map(|(_, ops)| ops[0].request.clone())
            .collect()
    }

    /// Writes the history as JSON lines, operations and faults merged in
    /// the order they started.
    pub fn write_jsonl(&self, path: &Path) -> Result<()> {
        let mut lines: Vec<(f64, Line)> = self
            .ops
            .iter()
            .map(|op| (op.invoke_ms, Line::Op(op)))
            .chain(self.faults.iter().map(|f| (f.start_ms, Line::Fault(f))))
            .collect();
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for (_, line) in &lines {
            serde_json::to_writer(&mut out, line)?;
            out.write_all(b"\n")?;
        }
        out.flush()
            .with_context(|| format!("writing {}", path.display()))
    }
}
