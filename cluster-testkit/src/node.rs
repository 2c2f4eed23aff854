//! Your node logic in a simulated cluster: what it is told when it starts ([`NodeContext`]),
//! and how it fails the run ([`NodeContext::fail`], or a panic) — see [`NodeFailure`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use cluster_core::{Incarnation, Pid, Server};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use crate::history::{Event, History};

/// The node logic a [`SimCluster`](crate::SimCluster) runs with
/// [`spawn_nodes`](crate::SimCluster::spawn_nodes): called with a node's server and its
/// [`NodeContext`] each time the node starts or restarts.
///
/// Any `Fn(Server<M>, NodeContext) -> impl Future<Output = ()>` is node logic:
///
/// ```
/// use cluster_core::Server;
/// use cluster_testkit::NodeContext;
///
/// async fn node(mut server: Server<u64>, ctx: NodeContext) {
///     if ctx.restarted() {
///         // A fresh start after a crash: state that was not "on disk" is gone.
///     }
///     while let Some(env) = server.inbox().recv().await {
///         if env.msg > 100 {
///             ctx.fail(format!("{} got {} from {}", ctx.pid(), env.msg, env.pid));
///         }
///     }
/// }
/// # fn _is_logic<L: cluster_testkit::NodeLogic<u64>>(_: L) {}
/// # _is_logic(node);
/// ```
pub trait NodeLogic<M>: Send + Sync + 'static {
    /// The future that runs the node until it returns or is crashed (dropped).
    type Future: Future<Output = ()> + Send + 'static;
    /// Starts the node.
    fn start(&self, server: Server<M>, ctx: NodeContext) -> Self::Future;
}

impl<M, F, Fut> NodeLogic<M> for F
where
    F: Fn(Server<M>, NodeContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    type Future = Fut;
    fn start(&self, server: Server<M>, ctx: NodeContext) -> Fut {
        self(server, ctx)
    }
}

/// What a node's logic is told when it starts, and its line to the harness.
///
/// Incarnations are those a real node has: a node's first start is incarnation 1 (as a
/// fresh peer catalog gives it), and each restart takes a higher one.
#[derive(Clone)]
pub struct NodeContext {
    pid: Pid,
    incarnation: Incarnation,
    restarted: bool,
    seed: u64,
    history: History,
    failures: Failures,
}

impl fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeContext")
            .field("pid", &self.pid)
            .field("incarnation", &self.incarnation)
            .field("restarted", &self.restarted)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl NodeContext {
    pub(crate) fn new(
        pid: Pid,
        incarnation: Incarnation,
        restarted: bool,
        seed: u64,
        history: History,
        failures: Failures,
    ) -> Self {
        Self {
            pid,
            incarnation,
            restarted,
            seed,
            history,
            failures,
        }
    }

    /// This node's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The incarnation this start runs as (its server's [`incarnation`](Server::incarnation)).
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Whether this start is a restart (the node crashed before, in this run): its memory
    /// is fresh, only what it kept outside (its "disk") survived.
    pub fn restarted(&self) -> bool {
        self.restarted
    }

    /// A seed for this node incarnation's randomness, derived from the run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A random number generator seeded with [`seed`](Self::seed): use it (not
    /// `rand::rng()`) so that a run replays from its seed.
    pub fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.seed)
    }

    /// Reports a broken invariant the moment this node sees it: recorded in the history
    /// (with the simulated time), and the run fails at once — [`faults::run`](crate::faults::run)
    /// returns it as its failure, and [`SimCluster::shutdown`](crate::SimCluster::shutdown)
    /// panics with it if nobody took it. Only the run's first failure is kept.
    pub fn fail(&self, message: impl Into<String>) {
        self.failures.report(
            &self.history,
            NodeFailure {
                pid: self.pid,
                incarnation: self.incarnation,
                panicked: false,
                message: message.into(),
            },
        );
    }

    /// A panic of this node's logic, caught by the harness.
    pub(crate) fn report_panic(&self, message: String) {
        self.failures.report(
            &self.history,
            NodeFailure {
                pid: self.pid,
                incarnation: self.incarnation,
                panicked: true,
                message,
            },
        );
    }

    /// Appends a free-form note to the run's history (shown in its diagram).
    pub fn note(&self, text: impl Into<String>) {
        self.history.push(Event::Note { text: text.into() });
    }
}

/// A node's logic broke: it reported a violation ([`NodeContext::fail`]) or panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    /// The node.
    pub pid: Pid,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// `true` for a panic, `false` for a reported violation.
    pub panicked: bool,
    /// The violation's message, or the panic's.
    pub message: String,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.panicked {
            "panicked"
        } else {
            "reported a violation"
        };
        write!(
            f,
            "node {} (incarnation {}) {what}: {}",
            self.pid, self.incarnation, self.message
        )
    }
}

impl std::error::Error for NodeFailure {}

/// The first failure of a run's node logic, shared by the harness and every node.
#[derive(Clone, Debug)]
pub(crate) struct Failures {
    first: Arc<watch::Sender<Option<NodeFailure>>>,
}

impl Default for Failures {
    fn default() -> Self {
        Self {
            first: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Failures {
    /// Keeps `failure` if it is the run's first, and records it in the history.
    pub(crate) fn report(&self, history: &History, failure: NodeFailure) {
        history.push(Event::NodeFailed {
            pid: failure.pid,
            incarnation: failure.incarnation,
            panicked: failure.panicked,
            message: failure.message.clone(),
        });
        self.first.send_if_modified(|first| {
            if first.is_some() {
                return false;
            }
            *first = Some(failure);
            true
        });
    }

    /// The first failure, if any.
    pub(crate) fn first(&self) -> Option<NodeFailure> {
        self.first.borrow().clone()
    }

    /// Waits for the first failure.
    pub(crate) async fn wait(&self) -> NodeFailure {
        let mut rx = self.first.subscribe();
        loop {
            if let Some(first) = rx.borrow_and_update().clone() {
                return first;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`: it cannot be gone while we wait on it.
                return std::future::pending().await;
            }
        }
    }
}

/// The text of a panic's payload (`panic!("…")` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not text".into()
    }
}
