//! The case registry. Each module contributes its cases; ids are stable and never reused.

use std::time::Duration;

use crate::case::{CaseFuture, CaseInfo, Feature};
use crate::client_cx::ClientCx;
use crate::cx::Cx;

mod client;
mod client_tls;
mod delivery;
mod e2ee;
mod framing;
mod im;
mod mqtt;
mod session;
mod sync;
mod tls;

/// How a case runs.
#[derive(Clone, Copy)]
pub enum Run {
    /// Against a broker.
    Broker(for<'a> fn(&'a Cx) -> CaseFuture<'a>),
    /// Against a client shim.
    Client(for<'a> fn(&'a ClientCx) -> CaseFuture<'a>),
}

/// A case: its description and its function.
#[derive(Clone, Copy)]
pub struct Case {
    /// Id, requirements, summary, budget, feature.
    pub info: CaseInfo,
    /// The function.
    pub run: Run,
}

/// A broker-mode case with the default 30 s budget.
const fn broker(
    id: &'static str,
    reqs: &'static [&'static str],
    summary: &'static str,
    f: for<'a> fn(&'a Cx) -> CaseFuture<'a>,
) -> Case {
    Case { info: CaseInfo { id, reqs, summary, timeout: Duration::from_secs(30), feature: None }, run: Run::Broker(f) }
}

/// A client-mode case with the default 40 s budget.
const fn client(
    id: &'static str,
    reqs: &'static [&'static str],
    summary: &'static str,
    f: for<'a> fn(&'a ClientCx) -> CaseFuture<'a>,
) -> Case {
    Case { info: CaseInfo { id, reqs, summary, timeout: Duration::from_secs(40), feature: None }, run: Run::Client(f) }
}

impl Case {
    /// The same case, needing `feature`.
    const fn needs(mut self, feature: Feature) -> Case {
        self.info.feature = Some(feature);
        self
    }
}

/// Every case, in a stable order.
pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    for part in [
        framing::CASES,
        session::CASES,
        delivery::CASES,
        sync::CASES,
        im::CASES,
        e2ee::CASES,
        tls::CASES,
        mqtt::CASES,
        client::CASES,
        client_tls::CASES,
    ] {
        v.extend_from_slice(part);
    }
    v
}
