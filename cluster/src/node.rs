//! [`new`]: a node from a config file, over the ZeroMQ transport picked by cargo feature.

use std::path::Path;

use cluster_catalog::{CatalogError, NodeCatalog};
use cluster_core::{Config, Message, Pid, Server, ServerBuilder, ServerError};
use cluster_zmq::Backend;

/// Starts node `pid` of the cluster described by the config file at `path`, over the
/// ZeroMQ backend selected by the crate's features (`libzmq` by default, else `zeromq`).
///
/// The node first opens its peer catalog (the config's `catalog_dir`, where `{pid}` stands
/// for the pid, or `.cluster/catalog-<pid>` beside the config file) and durably begins a new
/// incarnation there; then it binds its own address and connects to its peers in the background:
/// await [`Server::wait_for_peers`] before relying on delivery. Errors are clear: a config
/// problem names the file, the entry and the problem; a port already in use is a
/// [`TransportError::Bind`](cluster_core::TransportError::Bind) naming the address.
/// Must be called inside a tokio runtime.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cluster::{BROADCAST, Envelope, Server};
///
/// let mut server: Server<String> = cluster::new(1, "config.json").await?;
/// server.wait_for_peers(std::time::Duration::from_secs(5)).await?;
/// let id = server.next_msg_id();
/// server.outbox().send(Envelope::new(BROADCAST, id, "hello".into())).await?;
/// let reply = server.inbox().recv().await;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub async fn new<M: Message>(pid: Pid, path: impl AsRef<Path>) -> Result<Server<M>, ServerError> {
    new_with(Backend::default(), pid, path).await
}

/// Like [`new`], on the ZeroMQ [`Backend`] you name (both can be compiled in: features
/// `libzmq` and `zeromq`); one that is not compiled in is an error naming the feature.
pub async fn new_with<M: Message>(
    backend: Backend,
    pid: Pid,
    path: impl AsRef<Path>,
) -> Result<Server<M>, ServerError> {
    start(backend, pid, path.as_ref(), |_, builder| Ok(builder)).await
}

/// Like [`new_with`], with a [`metrics::Exporter`](crate::metrics::Exporter) attached: the
/// node's counters and gauges are published through the `metrics` facade every
/// [`metrics::DEFAULT_INTERVAL`](crate::metrics::DEFAULT_INTERVAL) while it runs, and once
/// more when it stops, starting from the history in its catalog (each peer's address,
/// newest incarnation and last seen). Install the recorder (e.g. `metrics-exporter-prometheus`)
/// before: the metrics' descriptions go to the recorder installed at the start.
#[cfg(feature = "metrics")]
pub async fn new_with_metrics<M: Message>(
    backend: Backend,
    pid: Pid,
    path: impl AsRef<Path>,
) -> Result<Server<M>, ServerError> {
    start(backend, pid, path.as_ref(), |node, builder| {
        let records = node.catalog().list()?;
        let incarnation = node.incarnation();
        Ok(builder.attach_with(move |monitor| {
            crate::metrics::Exporter::new(monitor)
                .with_incarnation(incarnation)
                .with_history(&records)
                .spawn(crate::metrics::DEFAULT_INTERVAL)
        }))
    })
    .await
}

/// Opens the catalog, lets `extend` add to the builder with it (blocking: it may read the
/// catalog), attaches the catalog, binds, builds.
async fn start<M: Message>(
    backend: Backend,
    pid: Pid,
    path: &Path,
    extend: impl FnOnce(&NodeCatalog, ServerBuilder) -> Result<ServerBuilder, CatalogError>
    + Send
    + 'static,
) -> Result<Server<M>, ServerError> {
    // Before the catalog begins an incarnation for a start that cannot happen.
    backend
        .require()
        .map_err(|e| cluster_core::TransportError::Other(e.to_string()))?;
    let config = Config::load(path)?;
    config.check_member(pid)?;
    // The catalog stores this start's incarnation durably before any frame can be sent.
    let builder = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let node = NodeCatalog::open(pid, &config)?;
            // Fails clearly on membership records that do not decode (`attach_to`, below,
            // restores them).
            node.catalog().membership()?;
            let builder = extend(&node, Server::<M>::builder(pid, config.clone()))?;
            Ok::<_, CatalogError>(node.attach_to(builder))
        })
        .await
        .map_err(|e| ServerError::Catalog(format!("opening the catalog panicked: {e}")))?
        .map_err(|e| ServerError::Catalog(e.to_string()))?
    };
    let transport = cluster_zmq::bind_with(backend, pid, &config).await?;
    builder.build(transport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_core::{ConfigProblem, TransportError};

    #[tokio::test]
    async fn config_errors_and_busy_ports_are_clear() {
        let dir = std::env::temp_dir().join(format!("cluster-new-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let e = new::<String>(1, &path).await.unwrap_err();
        assert!(
            matches!(&e, ServerError::Config(c) if matches!(c.problem, ConfigProblem::Unreadable(_))),
            "{e}"
        );

        let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        std::fs::write(
            &path,
            format!(r#"{{"peers":[{{"pid":1,"address":"127.0.0.1:{port}"}}]}}"#),
        )
        .unwrap();
        let e = new::<String>(2, &path).await.unwrap_err();
        assert!(matches!(&e, ServerError::Config(_)), "{e}");
        // What `main() -> Result<(), Box<dyn Error>>` prints, as the README shows it.
        let shown = format!("Error: {:?}", Box::<dyn std::error::Error>::from(e));
        assert_eq!(
            shown,
            format!(
                "Error: {}: pid 2 is not one of the configured peers",
                path.display()
            )
        );
        let e = new::<String>(1, &path).await.unwrap_err();
        match &e {
            ServerError::Transport(TransportError::Bind { address, .. }) => {
                assert_eq!(address, &format!("127.0.0.1:{port}"));
            }
            other => panic!("expected a bind error, got {other}"),
        }
        assert!(e.to_string().contains(&port.to_string()), "{e}");

        drop(squatter);
        let server = new::<String>(1, &path).await.unwrap();
        assert_eq!(server.pid(), 1);
        assert!(server.peers().is_empty());
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
