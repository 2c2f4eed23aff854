//! What sealing and opening one frame costs in each mode: no key, the keyed-BLAKE3 tag, the
//! SipHash-2-4 tag (`"mac": "siphash-2-4"`), and XChaCha20-Poly1305 (`"encrypt": true`), at
//! 64-byte and 4 KiB payloads. Run: `cargo bench -p cluster-core --bench seal`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use cluster_core::seal::Sealer;
use cluster_core::wire::{Encoder, Header};
use cluster_core::{ClusterKey, MacAlgorithm, Options};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn sealer(mode: &str) -> Sealer {
    let key = Some(ClusterKey::from_bytes([0x5A; 32]));
    let options = match mode {
        "none" => return Sealer::None,
        "blake3" => Options::default(),
        "siphash-2-4" => Options {
            mac: MacAlgorithm::SipHash24,
            ..Options::default()
        },
        _ => Options {
            encrypt: true,
            ..Options::default()
        },
    };
    Sealer::for_options(key, &options)
}

fn seal(sealer: &mut Sealer, payload: &serde_bytes::ByteBuf) -> Bytes {
    let mut encoder = Encoder::new();
    encoder.serialize(payload).unwrap();
    let header = sealer.mark(Header::new(1, 2, 3, 4));
    encoder.frame(&header, |covered| sealer.seal(covered))
}

fn bench(c: &mut Criterion) {
    for size in [64usize, 4096] {
        let payload = serde_bytes::ByteBuf::from(vec![7u8; size]);
        let mut group = c.benchmark_group(format!("seal and open, {size} B payload"));
        group.throughput(Throughput::Elements(1));
        for mode in ["none", "blake3", "siphash-2-4", "xchacha20-poly1305"] {
            let mut sender = sealer(mode);
            let receiver = sealer(mode);
            group.bench_function(BenchmarkId::new("seal", mode), |b| {
                b.iter(|| seal(&mut sender, &payload));
            });
            let frame = seal(&mut sender, &payload);
            let header = Header::parse(&frame).unwrap();
            group.bench_function(BenchmarkId::new("open", mode), |b| {
                b.iter(|| receiver.open(frame.clone(), &header).unwrap());
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
