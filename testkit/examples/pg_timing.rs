//! Prints what a test pays for PostgreSQL: a cluster's start and stop, and CREATE DATABASE
//! with either strategy, one at a time and from 8 threads at once, interleaved in rounds.
//!
//! `cargo run --release -p errscope-testkit --example pg_timing` (set `ERRSCOPE_PG_TMPDIR`
//! to compare where clusters live).

use std::time::{Duration, Instant};

use errscope_testkit::pg::{Cluster, Error};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 16;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn create(cluster: &Cluster, strategy: &str, name: &str) -> Result<(), Error> {
    cluster.execute(
        "postgres",
        &format!("CREATE DATABASE {name} STRATEGY = {strategy}"),
    )
}

fn main() -> Result<(), Error> {
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let cluster = Cluster::start()?;
        starts.push(t.elapsed());
        let t = Instant::now();
        drop(cluster);
        stops.push(t.elapsed());
    }
    println!(
        "cluster start: median {:?}, stop: median {:?} ({ROUNDS} runs)",
        median(starts),
        median(stops)
    );

    let cluster = Cluster::start()?;
    for strategy in ["WAL_LOG", "FILE_COPY"] {
        create(
            &cluster,
            strategy,
            &format!("warm_{}", strategy.to_lowercase()),
        )?;
    }
    let mut per_db: [[Vec<Duration>; 2]; 2] = Default::default();
    for round in 0..ROUNDS {
        for (s, strategy) in ["WAL_LOG", "FILE_COPY"].iter().enumerate() {
            let tag = strategy.to_lowercase();
            let t = Instant::now();
            for i in 0..PER_ROUND {
                create(&cluster, strategy, &format!("seq_{tag}_{round}_{i}"))?;
            }
            per_db[s][0].push(t.elapsed() / PER_ROUND as u32);
            let t = Instant::now();
            std::thread::scope(|scope| {
                let threads: Vec<_> = (0..8)
                    .map(|thread| {
                        let (cluster, tag) = (&cluster, &tag);
                        scope.spawn(move || {
                            for i in 0..PER_ROUND / 8 {
                                create(
                                    cluster,
                                    strategy,
                                    &format!("par_{tag}_{round}_{thread}_{i}"),
                                )?;
                            }
                            Ok::<(), Error>(())
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .try_for_each(|t| t.join().expect("thread"))
            })?;
            per_db[s][1].push(t.elapsed() / PER_ROUND as u32);
        }
    }
    for (s, strategy) in ["WAL_LOG", "FILE_COPY"].iter().enumerate() {
        let [seq, par] = per_db[s].clone();
        println!(
            "CREATE DATABASE STRATEGY = {strategy}: {:?} per database one at a time, {:?} with 8 threads (medians of {ROUNDS} rounds of {PER_ROUND})",
            median(seq),
            median(par)
        );
    }
    Ok(())
}
