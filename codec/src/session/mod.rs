//! The client and broker session machines (spec/04-session.md).
mod broker;
mod client;
mod link;

pub use broker::{Accept, BrokerConfig, BrokerEvent, BrokerSession, LedgerSnapshot};
pub use client::{backoff, ClientConfig, ClientEvent, ClientSession};
pub use link::{FrameCounts, SessionCounters};
