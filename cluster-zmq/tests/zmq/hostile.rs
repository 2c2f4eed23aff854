//! Hostile input (contract C9): raw TCP clients and a raw ZeroMQ peer send garbage,
//! truncated, oversized and forged frames to a node's port; the node keeps serving its
//! peers and counts every frame it dropped.

use std::io::Write;

use bytes::Bytes;
use cluster_core::seal::Sealer;
use cluster_core::wire::{self, Header};
use cluster_core::{DropReason, Options, Server};
use cluster_testkit::net::{self, DEADLINE};
use cluster_zmq::Backend;

use crate::nodes::{drain_until_marker, try_start_as, wait_until};

on_every_backend!(
    garbage_truncated_oversized_and_forged_input_is_counted_and_harmless,
    keyed_nodes_drop_wrong_keys_unkeyed_frames_and_replays,
    frame_lengths_claiming_gigabytes_are_refused_without_allocating,
    encrypting_nodes_drop_mac_only_unkeyed_tampered_and_foreign_frames,
);

const MAX: usize = 4096;

fn forged(sender: i32, incarnation: u32) -> Bytes {
    // The node under attack is pid 2.
    let h = Header::new(sender, 2, incarnation, 666);
    wire::encode(&h, "forged").unwrap()
}

/// The hostile frames, each a separate ZeroMQ message, and what the node must count.
/// A frame above the limit reaches the server only on `zeromq` (libzmq closes the
/// connection that sends one: `ZMQ_MAXMSGSIZE`; see `send_raw_libzmq`).
fn hostile_frames(backend: Backend) -> (Vec<Vec<Bytes>>, [(DropReason, u64); 5]) {
    let valid_header_bad_payload = {
        let mut f = forged(1, 3).to_vec();
        f.truncate(wire::HEADER_LEN);
        f.extend_from_slice(&[0xc1, 0xff, 0x00]);
        Bytes::from(f)
    };
    // A header claiming a far newer incarnation of node 1, with a payload that does not
    // decode: counted malformed, and it must not make node 1's real frames look stale.
    let forged_future_bad_payload = {
        let mut f = forged(1, u32::MAX).to_vec();
        f.truncate(wire::HEADER_LEN);
        f.push(0xc1);
        Bytes::from(f)
    };
    let bad_version = {
        let mut f = forged(1, 3).to_vec();
        f[1] = 99;
        Bytes::from(f)
    };
    let mut frames = vec![
        vec![Bytes::from_static(b"garbage")],
        vec![Bytes::new()],
        vec![Bytes::from_static(&[0xC1, 0x01, 0x02])],
        vec![bad_version],
        vec![valid_header_bad_payload],
        vec![forged_future_bad_payload],
        // Forged senders: unknown, the node itself, and an older incarnation of node 1.
        vec![forged(99, 0)],
        vec![forged(2, 0)],
        vec![forged(1, 1)],
        // A multipart message: each part is checked on its own.
        vec![Bytes::from_static(b"part-1"), Bytes::from_static(b"part-2")],
        // A control-looking frame that is not a well-formed control frame.
        vec![Bytes::from_static(&[0xC2, 0x07])],
    ];
    let too_large = u64::from(backend == Backend::Zeromq);
    if too_large == 1 {
        // Too large: the `zeromq` crate reads it, the server counts it.
        frames.push(vec![Bytes::from(vec![0xC1; MAX + 100])]);
    }
    let expected = [
        // The frames of version 1 and 99 are refused by their version.
        (DropReason::Malformed, 7),
        (DropReason::UnsupportedVersion, 2),
        (DropReason::UnknownSender, 2),
        (DropReason::StaleIncarnation, 1),
        (DropReason::TooLarge, too_large),
    ];
    (frames, expected)
}

/// Whatever must stay alive until the node has read the frames.
type Keep = Box<dyn std::any::Any + Send>;

/// Sends `messages` to `endpoint` from a raw socket of the library `backend` runs on.
async fn send_raw_zmq(backend: Backend, endpoint: String, messages: Vec<Vec<Bytes>>) -> Keep {
    match backend {
        #[cfg(feature = "libzmq")]
        Backend::Libzmq => send_raw_libzmq(endpoint, messages).await,
        #[cfg(feature = "zeromq")]
        Backend::Zeromq => send_raw_zeromq(endpoint, messages).await,
        #[allow(unreachable_patterns)]
        other => panic!("backend {other} is not compiled in"),
    }
}

/// A raw libzmq PUSH socket.
#[cfg(feature = "libzmq")]
async fn send_raw_libzmq(endpoint: String, messages: Vec<Vec<Bytes>>) -> Keep {
    tokio::task::spawn_blocking(move || {
        let ctx = zmq::Context::new();
        let push = ctx.socket(zmq::PUSH).unwrap();
        push.set_linger(5000).unwrap();
        push.connect(&endpoint).unwrap();
        for parts in messages {
            let n = parts.len();
            for (i, p) in parts.into_iter().enumerate() {
                let flags = if i + 1 < n { zmq::SNDMORE } else { 0 };
                push.send(&p[..], flags).unwrap();
            }
        }
        // A frame above the limit (`ZMQ_MAXMSGSIZE` = `max_message_size`): libzmq closes
        // this connection unread, and nothing after it arrives.
        push.send(vec![0xC1u8; MAX + 1], 0).unwrap();
        // Linger: dropping the socket and the context waits until libzmq has sent it all.
        drop(push);
        drop(ctx);
    })
    .await
    .unwrap();
    Box::new(())
}

/// A raw `zeromq` DEALER socket (the backend's inbound socket is a ROUTER).
#[cfg(feature = "zeromq")]
async fn send_raw_zeromq(endpoint: String, messages: Vec<Vec<Bytes>>) -> Keep {
    use zeromq::{Socket, SocketSend, ZmqMessage};
    let mut dealer = zeromq::DealerSocket::new();
    dealer.connect(&endpoint).await.unwrap();
    for parts in messages {
        let mut it = parts.into_iter();
        let mut m = ZmqMessage::from(it.next().unwrap());
        for p in it {
            m.push_back(p);
        }
        dealer.send(m).await.unwrap();
    }
    // The socket's writer may still be flushing: the caller keeps it until the node has
    // counted every frame.
    Box::new(dealer)
}

fn raw_tcp(address: &str, bytes: &[u8]) {
    let mut s = std::net::TcpStream::connect(address).unwrap();
    // The peer may close first, after reading the bytes it rejects.
    let _ = s.write_all(bytes);
    let _ = s.flush();
}

async fn garbage_truncated_oversized_and_forged_input_is_counted_and_harmless(backend: Backend) {
    let options = Options {
        max_message_size: MAX,
        ..net::fast_options()
    };
    let (config, (a, transport)) = net::bind_local(2, options, async |config| {
        let a = try_start_as(backend, 1, config, 3).await?;
        Ok((a, cluster_zmq::bind_with(backend, 2, config).await?))
    })
    .await
    .unwrap();
    let link = transport.link_stats();
    let mut b = Server::<String>::with_transport(2, config.clone(), transport).unwrap();
    a.wait_for_peers(DEADLINE).await.unwrap();
    assert!(drain_until_marker(&a, &mut b, "marker-0").await.is_empty());

    let address = config.peer(2).unwrap().address.clone();
    // Raw TCP: garbage, a truncated greeting, a greeting claiming a huge first frame.
    let mut greeting = vec![0xFFu8, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0];
    greeting.extend_from_slice(b"NULL");
    raw_tcp(&address, &[0x55; 4096]);
    raw_tcp(&address, &greeting[..5]);
    raw_tcp(&address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");

    let (frames, expected) = hostile_frames(backend);
    let keep = send_raw_zmq(backend, format!("tcp://{address}"), frames).await;

    // The node keeps serving its real peer.
    let seen = drain_until_marker(&a, &mut b, "marker-1").await;
    assert!(
        seen.is_empty(),
        "forged or garbage frames delivered: {seen:?}"
    );
    wait_until("every hostile frame to be counted", || {
        let d = b.stats().dropped_incoming;
        expected.iter().all(|(r, n)| d.get(*r) >= *n)
    })
    .await;
    drop(keep);
    let s = b.stats();
    for (reason, n) in expected {
        assert_eq!(s.dropped_incoming.get(reason), n, "{reason}");
    }
    // Delivered: only the markers from node 1, nothing from forgeries.
    assert_eq!(s.delivered, s.peers[&1].delivered);
    assert_eq!(s.peers[&1].incarnation, Some(3));
    if backend == Backend::Libzmq {
        wait_until("raw TCP garbage to be rejected", || {
            link.rejected_connections() >= 1
        })
        .await;
    }
    assert!(drain_until_marker(&a, &mut b, "marker-2").await.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

/// Nodes under a cluster key, on real sockets: a frame tagged under another key, a frame
/// with no tag, and a frame that repeats a sequence number node 1 already used (as a
/// captured frame sent again would) are each dropped and counted, change nothing, and the
/// real peers keep exchanging messages.
async fn keyed_nodes_drop_wrong_keys_unkeyed_frames_and_replays(backend: Backend) {
    let key = cluster_core::ClusterKey::from_bytes([0x61; 32]);
    let other = cluster_core::ClusterKey::from_bytes([0x62; 32]);
    let (address, a, b) = keyed_pair(backend, &key, false).await;
    // Node 1 has sent node 2 at least one frame: sequence number 1 is used.
    let signed = |under: &cluster_core::ClusterKey, seq: u64, incarnation: u32| {
        let mut h = Header::new(1, 2, incarnation, 4242);
        h.seq = seq;
        h.keyed = true;
        let mut e = wire::Encoder::new();
        e.serialize("hostile").unwrap();
        e.frame(&h, |covered| under.tag(covered))
    };
    let frames = vec![
        vec![signed(&other, 1_000, 3)],
        vec![signed(&other, 1_000, 99)],
        vec![forged(1, 3)],
        vec![signed(&key, 1, 3)],
    ];
    let expected = [(DropReason::Unauthenticated, 3), (DropReason::Replayed, 1)];
    counted_and_harmless(backend, &address, a, b, frames, expected).await;
}

/// Nodes 1 and 2 under `key` (encrypting if `encrypt`), connected, a first marker through;
/// node 2's address, and both servers.
async fn keyed_pair(
    backend: Backend,
    key: &cluster_core::ClusterKey,
    encrypt: bool,
) -> (String, Server<String>, Server<String>) {
    let options = Options {
        max_message_size: MAX,
        encrypt,
        ..net::fast_options()
    };
    let (config, (a, transport)) = net::bind_local(2, options, async |config| {
        let config = config.clone().with_cluster_key(Some(key.clone()));
        let a = try_start_as(backend, 1, &config, 3).await?;
        Ok((a, cluster_zmq::bind_with(backend, 2, &config).await?))
    })
    .await
    .unwrap();
    let config = config.with_cluster_key(Some(key.clone()));
    assert_eq!(config.options().encrypt, encrypt);
    let mut b = Server::<String>::with_transport(2, config.clone(), transport).unwrap();
    a.wait_for_peers(DEADLINE).await.unwrap();
    assert!(drain_until_marker(&a, &mut b, "marker-0").await.is_empty());
    let address = config.peer(2).unwrap().address.clone();
    (address, a, b)
}

/// Sends `frames` from a raw ZeroMQ peer to node 2 at `address`: none is delivered, each is
/// counted as `expected`, no forged incarnation moves anything, and node 1 and node 2 keep
/// exchanging messages.
async fn counted_and_harmless<const N: usize>(
    backend: Backend,
    address: &str,
    a: Server<String>,
    mut b: Server<String>,
    frames: Vec<Vec<Bytes>>,
    expected: [(DropReason, u64); N],
) {
    let keep = send_raw_zmq(backend, format!("tcp://{address}"), frames).await;
    let seen = drain_until_marker(&a, &mut b, "marker-1").await;
    assert!(seen.is_empty(), "hostile frames delivered: {seen:?}");
    wait_until("every hostile frame to be counted", || {
        let d = b.stats().dropped_incoming;
        expected.iter().all(|(r, n)| d.get(*r) >= *n)
    })
    .await;
    drop(keep);
    let s = b.stats();
    for (reason, n) in expected {
        assert_eq!(s.dropped_incoming.get(reason), n, "{reason}");
    }
    // No forged incarnation moved anything; only node 1's markers were delivered.
    assert_eq!(s.peers[&1].incarnation, Some(3));
    assert_eq!(s.delivered, s.peers[&1].delivered);
    assert!(drain_until_marker(&a, &mut b, "marker-2").await.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

/// A ZMTP 3.0 client's opening, by hand: the greeting (NULL mechanism, as client) and a
/// READY command for a DEALER socket, as a real peer sends it.
fn zmtp_dealer_opening() -> Vec<u8> {
    let mut out = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3, 0];
    let mut mechanism = [0u8; 20];
    mechanism[..4].copy_from_slice(b"NULL");
    out.extend_from_slice(&mechanism);
    out.push(0); // as-server: no
    out.extend_from_slice(&[0; 31]);
    assert_eq!(out.len(), 64);
    let mut ready = vec![5];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&6u32.to_be_bytes());
    ready.extend_from_slice(b"DEALER");
    out.push(0x04); // a short command
    out.push(u8::try_from(ready.len()).unwrap());
    out.extend_from_slice(&ready);
    out
}

/// C9 and C6: after a well-formed opening, frame headers announcing 1 TiB and 4 GiB (long
/// frames, 8-byte lengths) and then nothing. The node refuses them without reserving what
/// they announce (the process would abort, or hold gigabytes), closes the connection, and
/// keeps serving its real peer.
async fn frame_lengths_claiming_gigabytes_are_refused_without_allocating(backend: Backend) {
    use std::io::Read;
    let options = Options {
        max_message_size: MAX,
        ..net::fast_options()
    };
    let (config, (a, mut b)) = net::bind_local(2, options, async |config| {
        let a = try_start_as(backend, 1, config, 3).await?;
        let b = try_start_as(backend, 2, config, 3).await?;
        Ok((a, b))
    })
    .await
    .unwrap();
    a.wait_for_peers(DEADLINE).await.unwrap();
    assert!(drain_until_marker(&a, &mut b, "marker-0").await.is_empty());
    let address = config.peer(2).unwrap().address.clone();
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let before = rss();
    for claimed in [1u64 << 40, 1 << 32] {
        let mut s = std::net::TcpStream::connect(&address).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut bytes = zmtp_dealer_opening();
        bytes.push(0x02); // a long message frame
        bytes.extend_from_slice(&claimed.to_be_bytes());
        bytes.extend_from_slice(&[0xAB; 1024]);
        let _ = s.write_all(&bytes);
        // The node closes the connection (end of stream or reset) within the deadline:
        // it does not wait for the terabyte.
        let mut sink = [0u8; 4096];
        loop {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    // Nothing near the claimed sizes was taken (the test process holds both nodes).
    let grown = rss().saturating_sub(before);
    assert!(grown < 256 * 1024, "RSS grew by {grown} KiB");
    assert!(drain_until_marker(&a, &mut b, "marker-1").await.is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

/// Nodes with `"encrypt"` on, on real sockets: a frame tagged under the right key but not
/// encrypted (MAC mode), an unkeyed frame, an encrypted frame with one ciphertext byte
/// changed and one encrypted under another key are each `unauthenticated`; an encrypted
/// frame repeating a used sequence number is `replayed`; none changes anything, and the
/// real peers keep exchanging (encrypted) messages.
async fn encrypting_nodes_drop_mac_only_unkeyed_tampered_and_foreign_frames(backend: Backend) {
    let key = cluster_core::ClusterKey::from_bytes([0x71; 32]);
    let other = cluster_core::ClusterKey::from_bytes([0x72; 32]);
    let (address, a, b) = keyed_pair(backend, &key, true).await;
    // Node 1 has sent node 2 at least one frame: sequence number 1 is used.
    let sealed = |under: &cluster_core::ClusterKey, encrypt: bool, seq: u64| {
        let mut sealer = Sealer::new(Some(under.clone()), encrypt);
        let mut h = sealer.mark(Header::new(1, 2, 3, 4242));
        h.seq = seq;
        let mut e = wire::Encoder::new();
        e.serialize("hostile").unwrap();
        e.frame(&h, |covered| sealer.seal(covered))
    };
    let mut tampered = sealed(&key, true, 1_000).to_vec();
    tampered[wire::HEADER_LEN] ^= 0x20;
    let frames = vec![
        vec![sealed(&key, false, 1_000)],
        vec![forged(1, 3)],
        vec![Bytes::from(tampered)],
        vec![sealed(&other, true, 1_000)],
        vec![sealed(&key, true, 1)],
    ];
    let expected = [(DropReason::Unauthenticated, 4), (DropReason::Replayed, 1)];
    counted_and_harmless(backend, &address, a, b, frames, expected).await;
}
