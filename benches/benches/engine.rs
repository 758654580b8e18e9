//! Criterion micro-benchmarks of the engine's hot paths: record encoding and
//! verification, and one durable 4 KiB put / one 4 KiB get on real files.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::executor::block_on;
use tessera_engine::format::{decode_record, encode_record_header, RecordKind};
use tessera_engine::{Engine, EngineConfig};

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    for len in [4096usize, 1 << 20] {
        let payload = vec![0xA5u8; len];
        let id = [7u8; 21];
        g.throughput(Throughput::Bytes(len as u64));
        // The ceilings measured in the same run: checksum alone, and checksum
        // plus one copy (the least that encoding a record must do).
        g.bench_with_input(BenchmarkId::new("ceiling_crc32c", len), &payload, |b, p| {
            b.iter(|| crc32c::crc32c(p))
        });
        g.bench_with_input(
            BenchmarkId::new("ceiling_copy_and_crc32c", len),
            &payload,
            |b, p| {
                let mut out = Vec::with_capacity(len);
                b.iter(|| {
                    out.clear();
                    out.extend_from_slice(p);
                    crc32c::crc32c(&out)
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("encode_with_crc", len),
            &payload,
            |b, p| {
                let mut out = Vec::with_capacity(len + 64);
                b.iter(|| {
                    out.clear();
                    // What a put does to its bytes: copy into the batch,
                    // checksum, and a header in the table.
                    out.extend_from_slice(p);
                    let crc = crc32c::crc32c(p);
                    encode_record_header(&mut out, RecordKind::Put, &id, p.len() as u32, crc, 1, 0);
                })
            },
        );
        let mut rec = Vec::new();
        let hdr_len = 32 + id.len();
        encode_record_header(
            &mut rec,
            RecordKind::Put,
            &id,
            payload.len() as u32,
            crc32c::crc32c(&payload),
            1,
            hdr_len as u32,
        );
        rec.extend_from_slice(&payload);
        g.bench_with_input(BenchmarkId::new("decode_and_verify", len), &rec, |b, r| {
            b.iter(|| {
                let (h, _id) = decode_record(r).unwrap();
                let p = &r[h.payload_off as usize..];
                assert_eq!(crc32c::crc32c(p), h.payload_crc);
            })
        });
    }
    g.finish();
}

fn engine_ops(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("tessera-criterion")
        .tempdir_in("/tmp")
        .unwrap();
    let e = Engine::open(
        dir.path(),
        EngineConfig {
            shards: 1,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let v = vec![0x5Au8; 4096];
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Bytes(4096));
    let mut n = 0u64;
    g.bench_function("durable_put_4kib_c1", |b| {
        b.iter(|| {
            n += 1;
            block_on(e.put(&n.to_be_bytes(), v.clone())).unwrap()
        })
    });
    g.bench_function("get_4kib_c1", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i % n.max(1) + 1;
            block_on(e.get(&i.to_be_bytes())).unwrap()
        })
    });
    g.finish();
    e.close().unwrap();
}

criterion_group!(benches, records, engine_ops);
criterion_main!(benches);
