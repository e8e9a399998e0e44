//! The bridge's memory map over a soak: `/proc/PID/smaps` snapshots, and which
//! mappings grew between the first and the last. RSS alone says *that* it grew;
//! the mapping says whether it was a heap (jemalloc's extents, glibc's arenas),
//! a thread's stack (a 2 MiB or 8 MiB mapping behind a guard page), a new
//! thread, or a file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One mapping: its `smaps` header line and its resident and anonymous KiB.
#[derive(Clone)]
pub struct Mapping {
    pub header: String,
    pub size_kib: u64,
    pub rss_kib: u64,
    pub anon_kib: u64,
}

pub struct Snapshot {
    pub at: Duration,
    pub text: String,
    /// By start address.
    pub mappings: BTreeMap<u64, Mapping>,
}

impl Snapshot {
    pub fn take(pid: u32, at: Duration) -> Snapshot {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mappings = parse(&text);
        Snapshot { at, text, mappings }
    }
}

fn parse(text: &str) -> BTreeMap<u64, Mapping> {
    let mut mappings = BTreeMap::new();
    let mut current: Option<(u64, Mapping)> = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, _end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            if let Some((start, mapping)) = current.take() {
                mappings.insert(start, mapping);
            }
            let start = u64::from_str_radix(start, 16).unwrap_or(0);
            current = Some((
                start,
                Mapping {
                    header: line.to_string(),
                    size_kib: 0,
                    rss_kib: 0,
                    anon_kib: 0,
                },
            ));
            continue;
        }
        let value: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        if let Some((_, mapping)) = current.as_mut() {
            match first {
                "Size:" => mapping.size_kib = value,
                "Rss:" => mapping.rss_kib = value,
                "Anonymous:" => mapping.anon_kib = value,
                _ => {}
            }
        }
    }
    if let Some((start, mapping)) = current {
        mappings.insert(start, mapping);
    }
    mappings
}

/// Writes every snapshot to `out` and prints the mappings whose anonymous
/// memory changed by 64 KiB or more from the first snapshot to the last, and
/// the totals of mappings that came or went.
pub fn report(snapshots: &[Snapshot], out: &Path) {
    for snapshot in snapshots {
        let name = format!("smaps-{:05.1}min.txt", snapshot.at.as_secs_f64() / 60.0);
        let _ = std::fs::write(out.join(name), &snapshot.text);
    }
    let (Some(first), Some(last)) = (snapshots.first(), snapshots.last()) else {
        return;
    };
    let total = |s: &Snapshot| s.mappings.values().map(|m| m.anon_kib).sum::<u64>();
    println!(
        "  smaps: anonymous {} KiB at {:.1} min, {} KiB at {:.1} min; mappings {} / {}",
        total(first),
        first.at.as_secs_f64() / 60.0,
        total(last),
        last.at.as_secs_f64() / 60.0,
        first.mappings.len(),
        last.mappings.len()
    );
    for (start, now) in &last.mappings {
        let before = first.mappings.get(start).map_or(0, |m| m.anon_kib);
        let change = now.anon_kib as i64 - before as i64;
        if change.abs() >= 64 {
            let new = if first.mappings.contains_key(start) {
                ""
            } else {
                " (new)"
            };
            println!(
                "    {change:+6} KiB anon{new}, size {} KiB, now {} KiB: {}",
                now.size_kib, now.anon_kib, now.header
            );
        }
    }
    let gone: u64 = first
        .mappings
        .iter()
        .filter(|(start, _)| !last.mappings.contains_key(start))
        .map(|(_, m)| m.anon_kib)
        .sum();
    if gone > 0 {
        println!("    mappings gone since the first snapshot held {gone} KiB anon");
    }
}
