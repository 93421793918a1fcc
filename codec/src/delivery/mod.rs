//! Delivery building blocks shared by both session machines (spec/06-delivery.md,
//! spec/07-packages.md).
//!
//! - [`OrderedReceiver`]: releases items in sequence order exactly once; detects duplicates
//!   and gaps. Used for upstream cids at the broker and downstream stream seqs at the client.
//! - [`RetransmitQueue`]: unacknowledged items with exponential-backoff deadlines.
//! - [`PackageBuffer`]: holds package members until the package is whole, or times it out.

mod ordered;
mod package;
mod retransmit;

pub use ordered::{Arrival, OrderedReceiver};
pub use package::{PackageBuffer, PackageInsert};
pub use retransmit::{RetransmitQueue, Rto};
