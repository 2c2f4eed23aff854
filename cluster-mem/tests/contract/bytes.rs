//! C6 in bytes: the inbox holds at most `inbox_bytes` bytes of frames, whatever
//! `inbox_capacity` allows; beyond, arrivals are dropped as `backpressure`, and reading
//! makes room again.

use std::time::Duration;

use cluster_core::{Config, DropReason, Envelope, Options, Server};
use cluster_mem::MemNetwork;

#[tokio::test(start_paused = true)]
async fn the_inbox_is_bounded_in_bytes() {
    let options = Options {
        inbox_capacity: 1000,
        max_message_size: 1000,
        inbox_bytes: 1000,
        ..Options::default()
    };
    let config = Config::local(2, 17400)
        .unwrap()
        .with_options(options)
        .unwrap();
    let net = MemNetwork::new(&config, 1);
    let one: Server<String> =
        Server::with_transport(1, config.clone(), net.transport(1).unwrap()).unwrap();
    let mut two: Server<String> =
        Server::with_transport(2, config.clone(), net.transport(2).unwrap()).unwrap();
    // Frames of 32 header bytes + a 100-byte string's MessagePack (102 bytes): 134 each,
    // so 7 fit in 1000 bytes.
    let text = "x".repeat(100);
    for i in 0..20 {
        one.outbox()
            .send(Envelope::new(2, i, text.clone()))
            .await
            .unwrap();
    }
    let accounted = |s: &Server<String>| {
        let p = s.stats().peers[&1];
        p.delivered + p.dropped_from.total()
    };
    for _ in 0..10_000 {
        if accounted(&two) == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let p = two.stats().peers[&1];
    assert_eq!(p.delivered, 7, "{p:?}");
    assert_eq!(p.dropped_from.get(DropReason::Backpressure), 13, "{p:?}");
    assert_eq!(two.inbox().len(), 7);
    assert_eq!(two.inbox().bytes(), 7 * 134);
    // Reading makes room, byte for byte.
    for _ in 0..7 {
        assert_eq!(two.inbox().recv().await.unwrap().msg, text);
    }
    assert_eq!(two.inbox().bytes(), 0);
    one.outbox()
        .send(Envelope::new(2, 99, text.clone()))
        .await
        .unwrap();
    let env = tokio::time::timeout(Duration::from_secs(60), two.inbox().recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.msg_id, 99);
    assert_eq!(two.inbox().bytes(), 0);
}
