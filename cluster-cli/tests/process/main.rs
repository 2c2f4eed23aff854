//! `cluster node` processes on real ZeroMQ over loopback, on both backends: kill -9 a node
//! mid-stream and restart it (nothing sent while it was down arrives), and freeze one with
//! SIGSTOP (the others keep getting every message). Node 1 runs in the test process, so that
//! the test can read its counters; the others are `cluster node --json` children, driven
//! through their stdin and stdout and killed with the test if it fails. And `cluster node
//! --metrics` read over HTTP, with `cluster members` from it and from the stopped node's
//! catalog.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// One test per backend, in modules `on_libzmq` and `on_zeromq`, each calling the scenario
/// `$name(backend)` of the module that invokes the macro. (`cluster` builds both in.)
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_libzmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(cluster::zmq::Backend::Libzmq).await;
                }
            )*
        }
        mod on_zeromq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(cluster::zmq::Backend::Zeromq).await;
                }
            )*
        }
    };
}

mod crash;
mod events;
mod freeze;
mod lost_catalog;
mod metrics;
mod node;
