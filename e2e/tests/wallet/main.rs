//! End-to-end tests of the wallet: a real cluster (etcd, three Postgres
//! servers, three participants, coordinators) per test, driven through the
//! public HTTP API and audited in Postgres.

mod api;
mod auth;
mod bench;
mod chaos;
mod concurrency;
mod crashes;
mod events;
mod hostile;
mod internal;
mod logs;
mod moves;
mod openapi;
mod ops;
mod retention;
mod support;
mod tls;
mod traces;
mod walletctl;
