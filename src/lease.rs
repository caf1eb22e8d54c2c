//! The lake's run lock: a lease object in the lake itself, so it works wherever the lake lives
//! (local disk, S3, MinIO…) without a lock service.
//!
//! Leases are numbered objects `<lake>/_clicklake/lease/<n>.json`. Taking the lock means creating
//! the next number with a conditional put (create-if-absent): of two runs racing for the same
//! number exactly one succeeds. The newest lease holds the lock until it is released or its
//! expiry passes; its holder renews it (rewrites the expiry) every third of the time to live, so
//! a crashed run's lease lapses and the next run takes over. A holder that finds a newer lease
//! than its own has lost the lock and stops before its next commit.
//!
//! Expiry compares wall clocks of different machines: keep the time to live well above the
//! clock skew you have (the default, 10 minutes, is).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::Lake;

/// What a lease object says about its holder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub run_id: String,
    /// `user@host pid N`.
    pub holder: String,
    pub started_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub released_at: Option<DateTime<Utc>>,
    /// The holder process as `host|pid namespace|pid|start time` (see [`process_identity`]), so
    /// a command on the same host can tell that the holder died (killed, Ctrl-C) and need not wait
    /// for the lease to lapse.
    #[serde(default)]
    pub process: Option<String>,
}

impl LeaseInfo {
    fn active(&self, now: DateTime<Utc>) -> bool {
        self.released_at.is_none() && self.expires_at > now && !self.holder_is_gone()
    }

    /// True only when the holder ran on this host, in this pid namespace, and no process with
    /// its pid and start time exists any more. A holder elsewhere is alive until its lease lapses.
    fn holder_is_gone(&self) -> bool {
        let (Some(theirs), Some(mine)) = (&self.process, process_identity()) else {
            return false;
        };
        let theirs: Vec<&str> = theirs.split('|').collect();
        let mine: Vec<&str> = mine.split('|').collect();
        if theirs.len() != 4 || theirs[..2] != mine[..2] {
            return false;
        }
        match theirs[2].parse::<u32>() {
            Ok(pid) => start_time(pid).as_deref() != Some(theirs[3]),
            Err(_) => false,
        }
    }
}

/// This process as a lease records it: `host|pid namespace|pid|start time`. The start time (in
/// clock ticks since boot, from `/proc`) tells a reused pid from the holder. `None` where
/// `/proc` does not say (not Linux): such a holder is alive until its lease lapses.
fn process_identity() -> Option<String> {
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let pid = std::process::id();
    Some(format!(
        "{}|{}|{pid}|{}",
        host_name(),
        namespace.display(),
        start_time(pid)?
    ))
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// A held lease. Renewed in the background until [`Lease::release`].
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    dir: ObjectPath,
    seq: u64,
    info: LeaseInfo,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

/// Runs `work` under the lake's lease, as `run` and `erase` do, for a command that changes the
/// lake's tables on its own (`clean`, `build`, `compact`, `vacuum`, `consent`): exit 75 naming the holder
/// when another command holds it (or wait for it, `--wait`). One writer at a time is what keeps an erasure complete: a
/// clean or build that read a person's rows before the erasure would otherwise write them back
/// after it.
pub async fn exclusive<T, E: From<Error>>(
    lake: &Lake,
    cfg: &crate::config::Config,
    command: &str,
    work: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    let run_id = format!("{command}-{}", uuid::Uuid::new_v4().simple());
    let lease = Lease::acquire(lake, &run_id, cfg.run.lease_ttl, cfg.wait).await?;
    let result = work.await;
    if let Err(e) = lease.release().await {
        tracing::warn!("cannot release the lease (it lapses on its own): {e}");
    }
    result
}

/// `user@host pid N`, for messages and audit records.
pub fn holder_name() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{} pid {}", host_name(), std::process::id())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

fn object_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Lease {
    /// Takes the lake's lease for `ttl`. When another run holds it: fails at once with
    /// [`Error::Locked`] naming the holder, or with `wait`, polls until it is free or the wait is
    /// over.
    pub async fn acquire(
        lake: &Lake,
        run_id: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<Lease> {
        let (store, root) = lake.root_store()?;
        let dir = root.clone().join("_clicklake").join("lease");
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let holder = holder_name();
        let waiting_since = tokio::time::Instant::now();
        let mut said_waiting = false;
        loop {
            let latest = latest(&store, &dir).await?;
            let now = Utc::now();
            if let Some((_, current)) = &latest {
                if current.active(now) {
                    match deadline {
                        Some(d) if tokio::time::Instant::now() < d => {
                            // Another ingest's commit takes a moment; say so when it is longer.
                            if !said_waiting && waiting_since.elapsed() > Duration::from_secs(2) {
                                tracing::warn!(
                                    "waiting for the lake's lock, held by run {} of {} since {}",
                                    current.run_id,
                                    current.holder,
                                    ts(current.started_at)
                                );
                                said_waiting = true;
                            }
                            let left = d - tokio::time::Instant::now();
                            tokio::time::sleep(left.min(Duration::from_millis(500))).await;
                            continue;
                        }
                        _ => {
                            return Err(Error::Locked(format!(
                                "the lake is locked by run {} of {} since {} (lease expires {} unless renewed){}",
                                current.run_id,
                                current.holder,
                                ts(current.started_at),
                                ts(current.expires_at),
                                if wait.is_some() { "; gave up waiting" } else { "; use --wait DURATION to wait for it" }
                            )));
                        }
                    }
                }
                if current.released_at.is_none() {
                    let how = match current.expires_at > now {
                        true => "its process on this host is gone".to_string(),
                        false => format!("expired {}", ts(current.expires_at)),
                    };
                    tracing::warn!(
                        "taking over the lease of run {} of {} (started {}, {how}): it ended without releasing it",
                        current.run_id,
                        current.holder,
                        ts(current.started_at),
                    );
                }
            }
            let seq = latest.as_ref().map(|(s, _)| s + 1).unwrap_or(1);
            let info = LeaseInfo {
                run_id: run_id.to_string(),
                holder: holder.clone(),
                started_at: now,
                renewed_at: now,
                expires_at: now + ttl,
                released_at: None,
                process: process_identity(),
            };
            let path = dir.clone().join(object_name(seq));
            let put = store
                .put_opts(&path, payload(&info)?, PutMode::Create.into())
                .await;
            match put {
                // Read it back: a store that ignores the create-if-absent condition (or checks
                // it racily) would let two runs both "create" the same lease; only the one whose
                // content is there holds it.
                Ok(_) if !holds(&store, &path, run_id).await? => continue,
                Ok(_) => {
                    // Older leases are history now; keep only the one before ours.
                    if seq > 2 {
                        let old = dir.clone().join(object_name(seq - 2));
                        let _ = store.delete(&old).await;
                    }
                    let lost = Arc::new(AtomicBool::new(false));
                    let renewer = tokio::spawn(renew_loop(
                        store.clone(),
                        dir.clone(),
                        seq,
                        info.clone(),
                        ttl,
                        lost.clone(),
                    ));
                    return Ok(Lease {
                        store,
                        dir,
                        seq,
                        info,
                        lost,
                        renewer,
                    });
                }
                // Another run created this number first: look again.
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn info(&self) -> &LeaseInfo {
        &self.info
    }

    /// Fails when the lease was lost (it lapsed, or another run took it over): call before each
    /// stage that commits.
    pub fn ensure_held(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::runtime(format!(
                "run {} lost the lake's lease (it was not renewed in time and another run took it over); stopping",
                self.info.run_id
            )));
        }
        Ok(())
    }

    /// Marks the lease released so the next run need not wait for it to lapse.
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        let _ = self.renewer.await;
        if self.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut info = self.info.clone();
        info.released_at = Some(Utc::now());
        let path = self.dir.clone().join(object_name(self.seq));
        self.store
            .put_opts(&path, payload(&info)?, PutMode::Overwrite.into())
            .await?;
        Ok(())
    }
}

fn payload(info: &LeaseInfo) -> Result<PutPayload> {
    let bytes =
        serde_json::to_vec_pretty(info).map_err(|e| Error::runtime(format!("lease: {e}")))?;
    Ok(PutPayload::from(bytes))
}

/// True when the lease object at `path` names `run_id`.
async fn holds(store: &Arc<dyn ObjectStore>, path: &ObjectPath, run_id: &str) -> Result<bool> {
    let bytes = match store.get(path).await {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(serde_json::from_slice::<LeaseInfo>(&bytes).is_ok_and(|info| info.run_id == run_id))
}

/// The newest lease and what it says, if any.
async fn latest(
    store: &Arc<dyn ObjectStore>,
    dir: &ObjectPath,
) -> Result<Option<(u64, LeaseInfo)>> {
    let listed = store.list_with_delimiter(Some(dir)).await?;
    let newest = listed
        .objects
        .iter()
        .filter_map(|o| {
            let name = o.location.filename()?;
            let seq = name.strip_suffix(".json")?.parse::<u64>().ok()?;
            Some((seq, o.location.clone()))
        })
        .max_by_key(|(seq, _)| *seq);
    let Some((seq, path)) = newest else {
        return Ok(None);
    };
    let bytes = match store.get(&path).await {
        Ok(r) => r.bytes().await?,
        // Deleted between the listing and the read: a newer lease exists, look again.
        Err(object_store::Error::NotFound { .. }) => return Box::pin(latest(store, dir)).await,
        Err(e) => return Err(e.into()),
    };
    let info: LeaseInfo = serde_json::from_slice(&bytes).map_err(|e| {
        Error::runtime(format!(
            "lease object {path} is not a lease ({e}); delete it if no run is active"
        ))
    })?;
    Ok(Some((seq, info)))
}

/// Rewrites the lease's expiry every third of its time to live; flags the lease lost when a
/// newer one appears or the expiry passed without a successful renewal.
async fn renew_loop(
    store: Arc<dyn ObjectStore>,
    dir: ObjectPath,
    seq: u64,
    mut info: LeaseInfo,
    ttl: Duration,
    lost: Arc<AtomicBool>,
) {
    let path = dir.clone().join(object_name(seq));
    loop {
        tokio::time::sleep(ttl / 3).await;
        match latest(&store, &dir).await {
            Ok(Some((newest, _))) if newest != seq => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("lease renewal: cannot read the lease: {e}"),
        }
        let now = Utc::now();
        let renewed = LeaseInfo {
            renewed_at: now,
            expires_at: now + ttl,
            ..info.clone()
        };
        let written = match payload(&renewed) {
            Ok(p) => store
                .put_opts(&path, p, PutOptions::from(PutMode::Overwrite))
                .await
                .map_err(Error::from),
            Err(e) => Err(e),
        };
        match written {
            Ok(_) => info = renewed,
            Err(e) => {
                tracing::warn!("lease renewal failed: {e}");
                if Utc::now() >= info.expires_at {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(process: Option<String>) -> LeaseInfo {
        let now = Utc::now();
        LeaseInfo {
            run_id: "r".into(),
            holder: "someone".into(),
            started_at: now,
            renewed_at: now,
            expires_at: now + chrono::Duration::minutes(10),
            released_at: None,
            process,
        }
    }

    /// Only a holder on this host and pid namespace whose process (pid and start time) is gone
    /// loses an unexpired lease; everything else holds it until it lapses.
    #[test]
    fn a_lease_outlives_its_holder_only_on_another_host() {
        let me = process_identity().expect("Linux /proc");
        let parts: Vec<&str> = me.split('|').collect();
        let (host, namespace, pid) = (parts[0], parts[1], parts[2]);
        let now = Utc::now();
        assert!(
            held_by(Some(me.clone())).active(now),
            "this process is alive"
        );
        assert!(held_by(None).active(now), "an old lease without a process");
        // The same pid started at another time: a reused pid, not the holder.
        let reused = format!("{host}|{namespace}|{pid}|1");
        assert!(!held_by(Some(reused)).active(now));
        // No such pid (above the kernel's pid limit).
        let gone = format!("{host}|{namespace}|4194305|12345");
        assert!(!held_by(Some(gone)).active(now));
        let elsewhere = format!("another-{host}|{namespace}|4194305|12345");
        assert!(held_by(Some(elsewhere)).active(now));
        let other_namespace = format!("{host}|pid:[1]|4194305|12345");
        assert!(held_by(Some(other_namespace)).active(now));
        assert!(held_by(Some("garbage".into())).active(now));
    }
}
