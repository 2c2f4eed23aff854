//! The bare libraries, no cluster code: the crate of the chosen backend.

use std::time::Duration;

use cluster_zmq::Backend;

use crate::BenchError;
use crate::measure::within;
#[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
use crate::options::not_compiled_in;

/// Connects one PUSH per endpoint and sends `n` messages of `payload` bytes on each,
/// message by message.
pub(crate) async fn push(
    backend: Backend,
    endpoints: &[String],
    n: u64,
    payload: usize,
) -> Result<(), BenchError> {
    match backend {
        #[cfg(feature = "libzmq")]
        Backend::Libzmq => within("push", with_libzmq::push(endpoints, n, payload)).await,
        #[cfg(feature = "zeromq")]
        Backend::Zeromq => within("push", with_zeromq::push(endpoints, n, payload)).await,
        #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
        other => Err(not_compiled_in(other)),
    }
}

/// Binds a PULL, says `ready`, receives `n` messages and prints its result line.
pub(crate) async fn pull(backend: Backend, endpoint: &str, n: u64) -> Result<(), BenchError> {
    match backend {
        #[cfg(feature = "libzmq")]
        Backend::Libzmq => within("pull", with_libzmq::pull(endpoint, n)).await,
        #[cfg(feature = "zeromq")]
        Backend::Zeromq => within("pull", with_zeromq::pull(endpoint, n)).await,
        #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
        other => Err(not_compiled_in(other)),
    }
}

/// `n` round trips of `payload` bytes through a REQ, timed one by one.
pub(crate) async fn req(
    backend: Backend,
    endpoint: &str,
    n: u64,
    payload: usize,
) -> Result<Vec<Duration>, BenchError> {
    match backend {
        #[cfg(feature = "libzmq")]
        Backend::Libzmq => within("req", with_libzmq::req(endpoint, n, payload)).await,
        #[cfg(feature = "zeromq")]
        Backend::Zeromq => within("req", with_zeromq::req(endpoint, n, payload)).await,
        #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
        other => Err(not_compiled_in(other)),
    }
}

/// Binds a REP, says `ready` and answers `n` requests.
pub(crate) async fn rep(backend: Backend, endpoint: &str, n: u64) -> Result<(), BenchError> {
    match backend {
        #[cfg(feature = "libzmq")]
        Backend::Libzmq => within("rep", with_libzmq::rep(endpoint, n)).await,
        #[cfg(feature = "zeromq")]
        Backend::Zeromq => within("rep", with_zeromq::rep(endpoint, n)).await,
        #[cfg(not(all(feature = "libzmq", feature = "zeromq")))]
        other => Err(not_compiled_in(other)),
    }
}

/// The `zmq` crate. Its calls block, so they run on the blocking pool, where they cannot
/// be cancelled: the sending side's sockets time out every [`POLL_MS`] and look whether
/// their caller gave up (its future was dropped) or the phase deadline passed; the
/// children's sockets time out at the phase deadline.
#[cfg(feature = "libzmq")]
mod with_libzmq {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use crate::error::failed;
    use crate::received::Received;
    use crate::{BenchError, PHASE_DEADLINE};

    /// How long a sending-side call blocks before looking whether to give up.
    const POLL_MS: i32 = 100;

    fn socket(
        ctx: &zmq::Context,
        kind: zmq::SocketType,
        timeout_ms: i32,
    ) -> Result<zmq::Socket, BenchError> {
        let socket = ctx.socket(kind).map_err(failed)?;
        socket.set_sndtimeo(timeout_ms).map_err(failed)?;
        socket.set_rcvtimeo(timeout_ms).map_err(failed)?;
        Ok(socket)
    }

    fn phase_timeout_ms() -> i32 {
        i32::try_from(PHASE_DEADLINE.as_millis()).unwrap_or(i32::MAX)
    }

    /// Repeats `op` while it times out, until the caller gives up or the deadline passes.
    fn retry<T>(
        abandoned: &AtomicBool,
        deadline: Instant,
        mut op: impl FnMut() -> Result<T, zmq::Error>,
    ) -> Result<T, BenchError> {
        loop {
            match op() {
                Err(zmq::Error::EAGAIN) => {
                    if abandoned.load(Ordering::Relaxed) {
                        return Err(failed("abandoned"));
                    }
                    if Instant::now() >= deadline {
                        return Err(failed(format!("not done within {PHASE_DEADLINE:?}")));
                    }
                }
                result => return result.map_err(failed),
            }
        }
    }

    pub(super) async fn push(
        endpoints: &[String],
        n: u64,
        payload: usize,
    ) -> Result<(), BenchError> {
        let endpoints = endpoints.to_vec();
        blocking(move |abandoned| {
            let deadline = Instant::now() + PHASE_DEADLINE;
            let ctx = zmq::Context::new();
            let pushes = endpoints
                .iter()
                .map(|endpoint| {
                    let push = socket(&ctx, zmq::PUSH, POLL_MS)?;
                    push.set_linger(5000).map_err(failed)?;
                    push.connect(endpoint).map_err(failed)?;
                    Ok(push)
                })
                .collect::<Result<Vec<_>, BenchError>>()?;
            let body = vec![b'x'; payload];
            let send_all = || {
                for _ in 0..n {
                    for push in &pushes {
                        retry(abandoned, deadline, || push.send(&body[..], 0))?;
                    }
                }
                Ok(())
            };
            let result = send_all();
            if result.is_err() {
                // Nothing left to flush to a receiver that is gone: close at once.
                for push in &pushes {
                    let _ = push.set_linger(0);
                }
            }
            result
        })
        .await
    }

    pub(super) async fn pull(endpoint: &str, n: u64) -> Result<(), BenchError> {
        let endpoint = endpoint.to_owned();
        blocking(move |_| {
            let ctx = zmq::Context::new();
            let pull = socket(&ctx, zmq::PULL, phase_timeout_ms())?;
            pull.bind(&endpoint).map_err(failed)?;
            println!("ready");
            let mut msg = zmq::Message::new();
            pull.recv(&mut msg, 0).map_err(failed)?;
            let first = Instant::now();
            for _ in 1..n {
                pull.recv(&mut msg, 0).map_err(failed)?;
            }
            println!("{}", Received::line(n, Some((first, Instant::now())), 0));
            Ok(())
        })
        .await
    }

    pub(super) async fn req(
        endpoint: &str,
        n: u64,
        payload: usize,
    ) -> Result<Vec<Duration>, BenchError> {
        let endpoint = endpoint.to_owned();
        blocking(move |abandoned| {
            let deadline = Instant::now() + PHASE_DEADLINE;
            let ctx = zmq::Context::new();
            let req = socket(&ctx, zmq::REQ, POLL_MS)?;
            req.set_linger(0).map_err(failed)?;
            req.connect(&endpoint).map_err(failed)?;
            let body = vec![b'x'; payload];
            let mut msg = zmq::Message::new();
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t = Instant::now();
                retry(abandoned, deadline, || req.send(&body[..], 0))?;
                retry(abandoned, deadline, || req.recv(&mut msg, 0))?;
                samples.push(t.elapsed());
            }
            Ok(samples)
        })
        .await
    }

    pub(super) async fn rep(endpoint: &str, n: u64) -> Result<(), BenchError> {
        let endpoint = endpoint.to_owned();
        blocking(move |_| {
            let ctx = zmq::Context::new();
            let rep = socket(&ctx, zmq::REP, phase_timeout_ms())?;
            rep.set_linger(0).map_err(failed)?;
            rep.bind(&endpoint).map_err(failed)?;
            println!("ready");
            let mut msg = zmq::Message::new();
            for _ in 0..n {
                rep.recv(&mut msg, 0).map_err(failed)?;
                rep.send(&msg[..], 0).map_err(failed)?;
            }
            Ok(())
        })
        .await
    }

    /// Set when the future that started a blocking call is dropped.
    struct AbandonOnDrop(Arc<AtomicBool>);

    impl Drop for AbandonOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Runs `f` on the blocking pool; `f` is told when its caller has given up.
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce(&AtomicBool) -> Result<T, BenchError> + Send + 'static,
    ) -> Result<T, BenchError> {
        let abandoned = Arc::new(AtomicBool::new(false));
        let _abandon = AbandonOnDrop(Arc::clone(&abandoned));
        tokio::task::spawn_blocking(move || f(&abandoned))
            .await
            .map_err(failed)?
    }
}

/// The pure-Rust `zeromq` crate (async: the callers bound every wait).
#[cfg(feature = "zeromq")]
mod with_zeromq {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

    use crate::BenchError;
    use crate::error::failed;
    use crate::received::Received;

    pub(super) async fn push(
        endpoints: &[String],
        n: u64,
        payload: usize,
    ) -> Result<(), BenchError> {
        let mut pushes = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let mut push = zeromq::PushSocket::new();
            push.connect(endpoint).await.map_err(failed)?;
            pushes.push(push);
        }
        let body = Bytes::from(vec![b'x'; payload]);
        for _ in 0..n {
            for push in &mut pushes {
                push.send(ZmqMessage::from(body.clone()))
                    .await
                    .map_err(failed)?;
            }
        }
        // A send returns once its frame is written out; the children report when they
        // have them all.
        Ok(())
    }

    pub(super) async fn pull(endpoint: &str, n: u64) -> Result<(), BenchError> {
        let mut pull = zeromq::PullSocket::new();
        pull.bind(endpoint).await.map_err(failed)?;
        println!("ready");
        pull.recv().await.map_err(failed)?;
        let first = Instant::now();
        for _ in 1..n {
            pull.recv().await.map_err(failed)?;
        }
        println!("{}", Received::line(n, Some((first, Instant::now())), 0));
        Ok(())
    }

    pub(super) async fn req(
        endpoint: &str,
        n: u64,
        payload: usize,
    ) -> Result<Vec<Duration>, BenchError> {
        let mut req = zeromq::ReqSocket::new();
        req.connect(endpoint).await.map_err(failed)?;
        let body = Bytes::from(vec![b'x'; payload]);
        let mut samples = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t = Instant::now();
            req.send(ZmqMessage::from(body.clone()))
                .await
                .map_err(failed)?;
            req.recv().await.map_err(failed)?;
            samples.push(t.elapsed());
        }
        Ok(samples)
    }

    pub(super) async fn rep(endpoint: &str, n: u64) -> Result<(), BenchError> {
        let mut rep = zeromq::RepSocket::new();
        rep.bind(endpoint).await.map_err(failed)?;
        println!("ready");
        for _ in 0..n {
            let m = rep.recv().await.map_err(failed)?;
            rep.send(m).await.map_err(failed)?;
        }
        Ok(())
    }
}
