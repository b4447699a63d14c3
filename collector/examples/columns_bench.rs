//! Columns benchmark: what reading a debug file's columns adds to its SymCache (build time,
//! bytes) and to each frame's lookup, against the SymCache alone, interleaved in one run.
//!
//! ```text
//! cargo run --release -p errscope-collector --example columns_bench -- <debug file> [rounds]
//! ```

use std::time::Instant;

use errscope_collector::symbolicate::columns::Columns;
use errscope_collector::symbolicate::resolve;
use symbolic_common::ByteView;
use symbolic_debuginfo::Object;
use symbolic_symcache::{SymCache, SymCacheConverter};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: columns_bench <debug file> [rounds]");
    let rounds: usize = args.next().map_or(3, |r| r.parse().expect("rounds"));
    let view = ByteView::open(&path).expect("open the debug file");
    let object = Object::parse(&view).expect("parse the debug file");
    println!("{path}: {} bytes", view.len());

    let (mut sym_ms, mut col_ms) = (Vec::new(), Vec::new());
    let mut data = Vec::new();
    let mut columns = Columns::default();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut converter = SymCacheConverter::new();
        converter.process_object(&object).expect("convert");
        data.clear();
        converter
            .serialize(&mut std::io::Cursor::new(&mut data))
            .expect("serialize");
        sym_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        columns = Columns::of(&object);
        col_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (sym, col) = (median(&mut sym_ms), median(&mut col_ms));
    println!(
        "build, median of {rounds}: SymCache {sym:.0} ms, columns {col:.0} ms (+{:.0}%)",
        100.0 * col / sym
    );
    println!(
        "memory: SymCache {} bytes, columns {} bytes (+{:.0}%)",
        data.len(),
        columns.size(),
        100.0 * columns.size() as f64 / data.len() as f64
    );

    // Lookups at the functions' addresses (a few bytes in), with and without columns.
    let cache = SymCache::parse(&data).expect("symcache");
    let load = object.load_address();
    let addrs: Vec<u64> = object
        .symbols()
        .filter(|s| s.address > load)
        .map(|s| s.address - load + 4)
        .take(20_000)
        .collect();
    let (mut plain_ns, mut with_ns) = (Vec::new(), Vec::new());
    let mut with_col = 0usize;
    for _ in 0..rounds.max(5) {
        let t = Instant::now();
        let mut n = 0;
        for &a in &addrs {
            n += resolve::lookup(&cache, a).len();
        }
        std::hint::black_box(n);
        plain_ns.push(t.elapsed().as_nanos() as f64 / addrs.len() as f64);
        let t = Instant::now();
        with_col = 0;
        for &a in &addrs {
            let mut frames = resolve::lookup(&cache, a);
            columns.fill(a, &mut frames);
            with_col += frames.iter().filter(|f| f.colno.is_some()).count();
        }
        with_ns.push(t.elapsed().as_nanos() as f64 / addrs.len() as f64);
    }
    let (plain, with) = (median(&mut plain_ns), median(&mut with_ns));
    println!(
        "lookup of {} addresses, median per address: SymCache {plain:.0} ns, with columns \
         {with:.0} ns ({:.2}x); {with_col} frames got a column",
        addrs.len(),
        with / plain
    );
}
