//! In-memory transport for `cluster`: whole simulated clusters inside one process.
//!
//! A [`MemNetwork`] hands out one [`MemTransport`] per pid and injects faults, deterministically
//! for a given seed:
//!
//! * [`crash`](MemNetwork::crash) — the node stops; frames queued for it and frames it sent
//!   that were not yet received are lost (counted as `unreachable`);
//! * [`restart`](MemNetwork::restart) — the node comes back as a new incarnation and a new
//!   transport can be taken for it;
//! * [`partition`](MemNetwork::partition), [`cut`](MemNetwork::cut) (one way) and
//!   [`heal`](MemNetwork::heal) — frames across a cut are dropped (`partitioned`), including
//!   those in flight when the cut happens;
//! * [`set_loss`](MemNetwork::set_loss) — per-link loss probability (`injected`), drawn from a
//!   random stream per link seeded from the network seed, so a run replays exactly.
//!
//! A frame dropped by a fault is never delivered later (contract C4). Drops decided at send
//! time are returned to the sender's server, which counts them; frames discarded after they
//! were accepted (by a crash or a cut) are counted in [`MemNetwork::stats`].
//!
//! ```
//! use cluster_core::{BROADCAST, Config, Envelope, Server};
//! use cluster_mem::MemNetwork;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::local(3, 7000)?;
//! let net = MemNetwork::new(&config, 7);
//! let mut a = Server::<String>::with_transport(1, config.clone(), net.transport(1)?)?;
//! let mut b = Server::<String>::with_transport(2, config.clone(), net.transport(2)?)?;
//!
//! net.crash(3);
//! a.outbox().send(Envelope::new(BROADCAST, 1, "hi".into())).await?;
//! assert_eq!(b.inbox().recv().await, Some(Envelope::new(1, 1, "hi".to_string())));
//! a.outbox().send(Envelope::new(2, 2, "sync".into())).await?;
//! b.inbox().recv().await;
//! assert_eq!(a.stats().dropped_outgoing.get(cluster_core::DropReason::Unreachable), 1);
//! # Ok(()) }
//! ```

mod network;

pub use network::{MemNetwork, MemTransport, NetStats};
