//! A small fixture: one MemNetwork and a Server per pid, on the test's current-thread runtime.

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_core::{Config, Envelope, Message, Options, Pid, Server, Stats};
use cluster_mem::MemNetwork;

pub(crate) struct Sim<M> {
    pub(crate) config: Config,
    pub(crate) net: MemNetwork,
    pub(crate) nodes: BTreeMap<Pid, Server<M>>,
    /// Stats of servers that were crashed and replaced, kept for accounting.
    pub(crate) retired: Vec<Stats>,
}

impl<M: Message> Sim<M> {
    pub(crate) fn new(n: usize, options: Options) -> Self {
        let config = Config::local(n, 17000)
            .unwrap()
            .with_options(options)
            .unwrap();
        let net = MemNetwork::new(&config, 1);
        let mut nodes = BTreeMap::new();
        for pid in config.pids() {
            let server =
                Server::with_transport(pid, config.clone(), net.transport(pid).unwrap()).unwrap();
            nodes.insert(pid, server);
        }
        Self {
            config,
            net,
            nodes,
            retired: Vec::new(),
        }
    }

    pub(crate) fn node(&mut self, pid: Pid) -> &mut Server<M> {
        self.nodes.get_mut(&pid).unwrap()
    }

    pub(crate) async fn send(&self, from: Pid, env: Envelope<M>) {
        self.nodes[&from].outbox().send(env).await.unwrap();
    }

    pub(crate) async fn crash(&mut self, pid: Pid) {
        self.net.crash(pid);
        if let Some(old) = self.nodes.remove(&pid) {
            // Shutdown routes what was still in the outbox: count it too.
            let monitor = old.monitor();
            old.shutdown().await;
            self.retired.push(monitor.stats());
        }
    }

    pub(crate) fn restart(&mut self, pid: Pid) {
        let incarnation = self.net.restart(pid).unwrap();
        let transport = self.net.transport(pid).unwrap();
        let server = Server::<M>::builder(pid, self.config.clone())
            .incarnation(incarnation)
            .build(transport)
            .unwrap();
        self.nodes.insert(pid, server);
    }

    /// Waits until every outbox is empty and the network holds nothing in flight, and the
    /// counters have stopped moving. The runtime is single-threaded, so while this task
    /// runs no server is halfway through a batch.
    pub(crate) async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last = None;
        let mut stable = 0;
        loop {
            tokio::task::yield_now().await;
            let idle = self.net.in_flight() == 0
                && self
                    .nodes
                    .values()
                    .all(|s| s.outbox().capacity() == s.outbox().max_capacity());
            let snapshot: Vec<Stats> = self.nodes.values().map(Server::stats).collect();
            if idle && last.as_ref() == Some(&snapshot) {
                stable += 1;
                if stable >= 3 {
                    return;
                }
            } else {
                stable = 0;
            }
            last = Some(snapshot);
            assert!(
                tokio::time::Instant::now() < deadline,
                "the simulation did not settle"
            );
        }
    }

    /// Everything in `pid`'s inbox right now.
    pub(crate) fn drain(&mut self, pid: Pid) -> Vec<Envelope<M>> {
        let inbox = self.node(pid).inbox();
        let mut out = Vec::new();
        while let Ok(env) = inbox.try_recv() {
            out.push(env);
        }
        out
    }

    /// Every server's stats, live and retired.
    pub(crate) fn all_stats(&self) -> Vec<Stats> {
        let mut all: Vec<Stats> = self.nodes.values().map(Server::stats).collect();
        all.extend(self.retired.iter().cloned());
        all
    }

    /// C7: sent = delivered + dropped, summed over every node and the network.
    pub(crate) fn assert_accounting(&self) {
        let all = self.all_stats();
        let sent: u64 = all.iter().map(|s| s.sent).sum();
        let delivered: u64 = all.iter().map(|s| s.delivered).sum();
        let dropped: u64 = all.iter().map(|s| s.dropped().total()).sum();
        let discarded = self.net.stats().discarded.total();
        assert_eq!(
            sent,
            delivered + dropped + discarded,
            "sent {sent} != delivered {delivered} + dropped {dropped} + discarded {discarded}"
        );
    }
}
