//! One writer per output: a lease under the output prefix. The lease is a sequence of
//! generation objects `_taft/lease/NNNNNNNNNNNN.json`, each created with create-if-absent,
//! so of two runs racing for the same generation exactly one wins. The holder renews by
//! creating the next generation before its record expires; another run takes over only a
//! lease whose record has expired, or, on the same machine, whose holder process is gone
//! (so a run killed with SIGKILL does not block its own restart). Only create-if-absent is
//! needed, which local disk, S3 (`If-None-Match`), GCS and Azure all offer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::{Error, Result};

/// Where the generations live, under the output prefix.
pub const LEASE_DIR: &str = "_taft/lease/";
/// How long a record is valid unless renewed (`TAFT_LEASE_SECONDS` overrides).
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Attempts at taking a generation before giving up on a busy race.
const ATTEMPTS: usize = 20;

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    /// The machine's boot: pids are comparable within one boot only.
    pub boot: String,
    pub pid: u32,
    /// The process's start time (clock ticks since boot), so a reused pid is not mistaken
    /// for the holder.
    pub pid_start: u64,
    /// A random id of this run.
    pub run: String,
    pub step: String,
    pub since: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    holder: Holder,
    /// Seconds since the Unix epoch.
    expires_at: f64,
}

/// A held lease; renewed in the background until [`Lease::release`].
pub struct Lease {
    store: Store,
    holder: Holder,
    ttl: Duration,
    generation: Arc<AtomicU64>,
    lost: Arc<AtomicBool>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Takes the lease of the output `store` for `step`, or fails with [`Error::Busy`] naming
    /// the live holder.
    pub async fn acquire(store: &Store, step: &str) -> Result<Lease> {
        Self::acquire_for(store, step, ttl()?).await
    }

    /// [`Lease::acquire`] with records valid for `ttl` unless renewed.
    async fn acquire_for(store: &Store, step: &str, ttl: Duration) -> Result<Lease> {
        let holder = Holder {
            host: host(),
            boot: boot_id(),
            pid: std::process::id(),
            pid_start: process_start(std::process::id()).unwrap_or(0),
            run: run_id(),
            step: step.to_string(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        for _ in 0..ATTEMPTS {
            let generations = generations(store).await?;
            let next = match generations.last() {
                None => 1,
                Some(&top) => {
                    let Some(record) = read(store, top).await? else { continue };
                    if record.holder.run == holder.run {
                        // Our own create, answered "exists" after a retried request.
                        return Ok(Lease::start(store, holder, ttl, top));
                    }
                    if live(&record) {
                        return Err(Error::Busy(busy_message(store, &record)));
                    }
                    tracing::info!(holder = ?record.holder, "taking over the lease of a run that is gone or expired");
                    top + 1
                }
            };
            if create(store, next, &holder, ttl).await? {
                for g in generations {
                    let _ = store.delete(&name(g)).await;
                }
                return Ok(Lease::start(store, holder, ttl, next));
            }
        }
        Err(Error::Busy(format!("{}: could not take the lease of this output: other runs keep taking it", store.url())))
    }

    fn start(store: &Store, holder: Holder, ttl: Duration, generation: u64) -> Lease {
        let generation = Arc::new(AtomicU64::new(generation));
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(store.clone(), holder.clone(), ttl, generation.clone(), lost.clone()));
        Lease { store: store.clone(), holder, ttl, generation, lost, renewal: Some(renewal) }
    }

    /// Who holds it (this run).
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Fails when another run took the lease over (this run was too slow to renew it):
    /// nothing must be committed then.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::Busy(format!(
                "{}: this run lost its lease (not renewed within {:?}) and another run took the output over; nothing was committed",
                self.store.url(),
                self.ttl
            )));
        }
        Ok(())
    }

    /// Stops renewing and removes the lease.
    pub async fn release(mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        if !self.lost.load(Ordering::SeqCst) {
            let g = self.generation.load(Ordering::SeqCst);
            if let Err(e) = self.store.delete(&name(g)).await {
                tracing::warn!(error = %crate::error::chain(&e), "could not remove the lease (it will expire)");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
    }
}

async fn renew(store: Store, holder: Holder, ttl: Duration, generation: Arc<AtomicU64>, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let current = generation.load(Ordering::SeqCst);
        match create(&store, current + 1, &holder, ttl).await {
            Ok(true) => {
                generation.store(current + 1, Ordering::SeqCst);
                let _ = store.delete(&name(current)).await;
            }
            Ok(false) => {
                // Someone created the next generation: the lease was taken over.
                match read(&store, current + 1).await {
                    Ok(Some(record)) if record.holder.run == holder.run => {
                        generation.store(current + 1, Ordering::SeqCst);
                        continue;
                    }
                    _ => {}
                }
                tracing::error!(url = store.url(), "the lease of this output was taken over by another run");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::warn!(error = %crate::error::chain(&e), "could not renew the lease; retrying"),
        }
    }
}

fn name(generation: u64) -> String {
    format!("{LEASE_DIR}{generation:012}.json")
}

async fn generations(store: &Store) -> Result<Vec<u64>> {
    let dir = store.join(LEASE_DIR.trim_end_matches('/'))?;
    let mut gens: Vec<u64> =
        dir.list().await?.into_iter().filter_map(|(n, _)| n.strip_suffix(".json")?.parse().ok()).collect();
    gens.sort_unstable();
    Ok(gens)
}

async fn read(store: &Store, generation: u64) -> Result<Option<Record>> {
    let Some(bytes) = store.get(&name(generation)).await? else { return Ok(None) };
    match serde_json::from_slice(&bytes) {
        Ok(record) => Ok(Some(record)),
        // A record that does not parse protects nothing: treat it as expired.
        Err(_) => Ok(Some(Record {
            holder: Holder {
                host: String::new(),
                boot: String::new(),
                pid: 0,
                pid_start: 0,
                run: String::new(),
                step: String::new(),
                since: String::new(),
            },
            expires_at: 0.0,
        })),
    }
}

async fn create(store: &Store, generation: u64, holder: &Holder, ttl: Duration) -> Result<bool> {
    let record = Record { holder: holder.clone(), expires_at: now() + ttl.as_secs_f64() };
    store.put_if_absent(&name(generation), Bytes::from(serde_json::to_vec_pretty(&record)?)).await
}

/// Whether a record still protects its output: not expired, and not held by a process of
/// this machine that is gone.
fn live(record: &Record) -> bool {
    if record.expires_at <= now() {
        return false;
    }
    let h = &record.holder;
    // Only a process of this boot of this machine, whose start time was recorded, can be
    // known to be gone; any other holder is trusted until its record expires.
    let here = h.host == host() && !h.boot.is_empty() && h.boot == boot_id() && h.pid_start != 0;
    !(here && process_start(h.pid) != Some(h.pid_start))
}

fn busy_message(store: &Store, record: &Record) -> String {
    let h = &record.holder;
    let until = UNIX_EPOCH + Duration::from_secs_f64(record.expires_at.max(0.0));
    format!(
        "{}: another run is writing this output: `taft {}` (pid {} on {}, since {}, lease valid until {} unless renewed); retry when it has finished",
        store.url(),
        h.step,
        h.pid,
        h.host,
        h.since,
        humantime::format_rfc3339_seconds(until)
    )
}

pub(crate) fn ttl() -> Result<Duration> {
    let Ok(text) = std::env::var("TAFT_LEASE_SECONDS") else { return Ok(DEFAULT_TTL) };
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (1.0..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(Error::config(format!("TAFT_LEASE_SECONDS={text:?}: expected a number of seconds in 1..=86400"))),
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The start time of a process (field 22 of `/proc/PID/stat`); `None` when it is gone.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn run_id() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_lease_is_renewed_before_it_expires() {
        let store = Store::create("memory://unit-lease/renewed").unwrap();
        let held = Lease::acquire_for(&store, "dapt", Duration::from_secs(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // Two and a half lifetimes later the record is a newer generation, still valid.
        assert!(held.generation.load(Ordering::SeqCst) >= 3, "renewed every third of its lifetime");
        assert!(Lease::acquire_for(&store, "role", Duration::from_secs(1)).await.is_err());
        held.check().unwrap();
        held.release().await;
        assert!(generations(&store).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_expired_or_dead_holders_are_taken_over() {
        let store = Store::create("memory://unit-lease/out").unwrap();
        let first = Lease::acquire(&store, "prep").await.unwrap();
        let err = Lease::acquire(&store, "dapt").await.err().expect("held").to_string();
        assert!(
            err.contains("another run is writing this output") && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        first.release().await;
        let second = Lease::acquire(&store, "dapt").await.unwrap();
        // Dropped without release: its record stays and protects the output while this
        // process lives.
        drop(second);
        assert!(Lease::acquire(&store, "x").await.is_err());

        // A record of a process of this machine that is gone (its start time differs) is
        // stale before it expires; an expired record is stale wherever its holder runs.
        let top = *generations(&store).await.unwrap().last().unwrap();
        let mut record = read(&store, top).await.unwrap().unwrap();
        record.holder.pid_start += 1;
        store.put(&name(top), Bytes::from(serde_json::to_vec(&record).unwrap())).await.unwrap();
        assert!(!live(&record));
        let third = Lease::acquire(&store, "role").await.unwrap();
        assert_eq!(third.generation.load(Ordering::SeqCst), top + 1);
        assert_eq!(generations(&store).await.unwrap(), [top + 1], "older generations are removed");
        third.release().await;
        assert!(generations(&store).await.unwrap().is_empty());
        let mut elsewhere = record.clone();
        elsewhere.holder.host = "another-host".into();
        assert!(live(&elsewhere));
        elsewhere.expires_at = now() - 1.0;
        assert!(!live(&elsewhere));
    }

    #[test]
    fn this_process_has_a_start_time() {
        assert!(process_start(std::process::id()).is_some());
        assert_eq!(process_start(u32::MAX), None);
    }
}
