//! C6 in bytes: the inbox holds at most `inbox_bytes` bytes of frames, whatever
//! `inbox_capacity` allows; beyond, arrivals wait (in the node's task and the network:
//! flow control, C5'), and reading makes room again.

use std::time::Duration;

use cluster_core::{Config, Envelope, Options, Server};
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
    for _ in 0..10_000 {
        if two.inbox().len() == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(two.inbox().len(), 7, "as many as fit in 1000 bytes");
    assert_eq!(two.inbox().bytes(), 7 * 134);
    // Reading makes room, byte for byte: the rest arrives, in order, none dropped.
    for i in 0..20 {
        let env = tokio::time::timeout(Duration::from_secs(60), two.inbox().recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((env.msg_id, env.msg.as_str()), (i, text.as_str()));
        assert!(two.inbox().bytes() <= 1000);
    }
    let p = two.stats().peers[&1];
    assert_eq!((p.delivered, p.dropped_from.total()), (20, 0), "{p:?}");
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
