//! The ZeroMQ transport over real sockets on loopback, on every backend compiled in
//! (`cargo test -p cluster-zmq --features zeromq` runs both): the contract scenarios
//! (`cluster-core`'s crate docs), hostile input, silent partitions and stalls, and a slow
//! wide-area link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// One `#[tokio::test]` per backend compiled in, in a module `on_<backend>`, each
/// calling the scenario `$name(backend)` of the module that invokes the macro.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        #[cfg(feature = "libzmq")]
        mod on_libzmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(cluster_zmq::Backend::Libzmq).await;
                }
            )*
        }
        #[cfg(feature = "zeromq")]
        mod on_zeromq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(cluster_zmq::Backend::Zeromq).await;
                }
            )*
        }
    };
}

mod connections;
mod contract;
mod events;
mod hostile;
mod membership;
mod nodes;
mod partition;
mod wan;
