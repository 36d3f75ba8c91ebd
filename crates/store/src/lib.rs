//! Yun's desired state: applications, their immutable revisions and the event log, kept in one
//! crash-safe embedded database file (redb, ACID with fsync on commit).
//!
//! Read [`Store`] first. Every accepted change is a transaction: either all of it is on disk or
//! none of it is, so `kill -9` at any moment loses no acknowledged change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use yun_model::App;

/// On-disk format written by this version. A newer format is refused; older ones are migrated.
pub const FORMAT_VERSION: u32 = 1;
/// Events kept; older ones are dropped.
pub const MAX_EVENTS: u64 = 20_000;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const APPS: TableDefinition<&str, &[u8]> = TableDefinition::new("apps");
const REVISIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("revisions");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another daemon holds the database.
    #[error("the state in {0} is in use by another yun server (one daemon per YUN_HOME)")]
    InUse(PathBuf),
    /// The file was written by a newer Yun.
    #[error(
        "the state in {path} has format version {found}; this yun understands up to {FORMAT_VERSION}: upgrade yun"
    )]
    TooNew {
        /// Database file.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
    },
    /// No such application.
    #[error("application \"{0}\" not found")]
    AppNotFound(String),
    /// No such revision.
    #[error("application \"{app}\" has no revision {revision}")]
    RevisionNotFound {
        /// Application.
        app: String,
        /// Revision asked for.
        revision: u64,
    },
    /// No such component.
    #[error("application \"{app}\" has no component \"{component}\"")]
    ComponentNotFound {
        /// Application.
        app: String,
        /// Component asked for.
        component: String,
    },
    /// The app is being deleted.
    #[error("application \"{0}\" is being deleted")]
    Deleting(String),
    /// Database failure.
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    /// A record could not be decoded.
    #[error("state database record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for Error {
        fn from(e: $t) -> Self { Error::Db(e.into()) }
    })*};
}
db_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An application's record: what revision is current plus operational overrides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppRecord {
    /// Application name.
    pub name: String,
    /// Revision the app should run.
    pub current_revision: u64,
    /// Highest revision number ever created.
    pub latest_revision: u64,
    /// `yun scale` overrides by component, cleared by the next new revision.
    #[serde(default)]
    pub scale: BTreeMap<String, u32>,
    /// Stopped apps keep their history but run nothing.
    #[serde(default)]
    pub stopped: bool,
    /// Deletion requested; the record goes once the runtime has stopped everything.
    #[serde(default)]
    pub deleting: bool,
    /// Tasks that ran to completion, by component: the spec hash they completed.
    #[serde(default)]
    pub completed_tasks: BTreeMap<String, String>,
    /// Stable service ports allocated to webservices without fixed ports, by component.
    #[serde(default)]
    pub service_ports: BTreeMap<String, u16>,
    /// When the app was first applied (RFC 3339).
    pub created_at: String,
    /// When the record last changed (RFC 3339).
    pub updated_at: String,
}

/// An immutable revision of an application.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Revision {
    /// Application name.
    pub app: String,
    /// Revision number, from 1.
    pub number: u64,
    /// Content hash of the normalised spec.
    pub hash: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Who created it.
    pub actor: String,
    /// Why it exists, e.g. "apply app.yaml" or "rollback to 1".
    pub message: String,
    /// Directory relative paths in the spec are resolved against.
    pub base_dir: String,
    /// The manifest text as submitted.
    pub manifest: String,
    /// The normalised, validated spec.
    pub spec: App,
}

/// Something that happened: a change by a user or an action by a reconciler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Sequence number, increasing.
    pub seq: u64,
    /// When (RFC 3339).
    pub time: String,
    /// Application concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Component concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// `Normal` or `Warning`, as in Kubernetes.
    pub severity: String,
    /// Short machine-readable reason, e.g. `Applied`, `Started`, `CrashLoop`.
    pub reason: String,
    /// Who: `user:<name>` for API calls, `reconciler` for the platform.
    pub actor: String,
    /// Human-readable detail.
    pub message: String,
}

/// A new event to record; the store assigns sequence and time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Application concerned.
    pub app: Option<String>,
    /// Component concerned.
    pub component: Option<String>,
    /// Whether it is a warning.
    pub warning: bool,
    /// Short reason.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// Detail.
    pub message: String,
}

/// Outcome of an apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The revision now current.
    pub revision: u64,
    /// Whether a new revision was created (false when the spec was unchanged).
    pub created: bool,
}

/// Where an apply came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Who applies.
    pub actor: String,
    /// Why, e.g. "apply app.yaml".
    pub message: String,
    /// Directory for relative paths.
    pub base_dir: String,
    /// Manifest text.
    pub manifest: String,
}

/// The store. Cheap to share behind an `Arc`; all methods are transactional.
pub struct Store {
    db: Database,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl Store {
    /// Opens or creates the database at `path`, checking its format version.
    pub fn open(path: &Path) -> Result<Store> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse(path.to_path_buf()),
            other => Error::Db(other.into()),
        })?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value().parse::<u32>().unwrap_or(u32::MAX));
            match found {
                Some(v) if v > FORMAT_VERSION => {
                    return Err(Error::TooNew { path: path.to_path_buf(), found: v });
                }
                // Older formats would be migrated here, inside this same transaction.
                _ => {
                    meta.insert("format", FORMAT_VERSION.to_string().as_str())?;
                }
            }
            tx.open_table(APPS)?;
            tx.open_table(REVISIONS)?;
            tx.open_table(EVENTS)?;
        }
        tx.commit()?;
        Ok(Store { db })
    }

    /// Records `app` as the desired state. A new revision is created only when its content
    /// differs from the current revision; scale overrides are cleared by a new revision.
    pub fn apply(&self, app: &App, source: Source) -> Result<Applied> {
        let hash = app.content_hash();
        let tx = self.db.begin_write()?;
        let applied;
        {
            let mut apps = tx.open_table(APPS)?;
            let mut revisions = tx.open_table(REVISIONS)?;
            let existing: Option<AppRecord> = match apps.get(app.name.as_str())? {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            };
            let mut record = existing.clone().unwrap_or_else(|| AppRecord {
                name: app.name.clone(),
                current_revision: 0,
                latest_revision: 0,
                scale: BTreeMap::new(),
                stopped: false,
                deleting: false,
                completed_tasks: BTreeMap::new(),
                service_ports: BTreeMap::new(),
                created_at: now(),
                updated_at: now(),
            });
            if record.deleting {
                return Err(Error::Deleting(app.name.clone()));
            }
            let current_hash = match revisions.get((app.name.as_str(), record.current_revision))? {
                Some(v) => Some(serde_json::from_slice::<Revision>(v.value())?.hash),
                None => None,
            };
            let created = current_hash.as_deref() != Some(hash.as_str());
            if created {
                record.latest_revision += 1;
                record.current_revision = record.latest_revision;
                record.scale.clear();
                let rev = Revision {
                    app: app.name.clone(),
                    number: record.latest_revision,
                    hash,
                    created_at: now(),
                    actor: source.actor.clone(),
                    message: source.message.clone(),
                    base_dir: source.base_dir,
                    manifest: source.manifest,
                    spec: app.clone(),
                };
                revisions.insert((app.name.as_str(), rev.number), serde_json::to_vec(&rev)?.as_slice())?;
            }
            let changed = created || record.stopped;
            record.stopped = false;
            if changed || existing.is_none() {
                record.updated_at = now();
                apps.insert(app.name.as_str(), serde_json::to_vec(&record)?.as_slice())?;
            }
            applied = Applied { revision: record.current_revision, created };
            if created {
                append_event(
                    &tx,
                    NewEvent {
                        app: Some(app.name.clone()),
                        component: None,
                        warning: false,
                        reason: "Applied".into(),
                        actor: source.actor,
                        message: format!("revision {}: {}", applied.revision, source.message),
                    },
                )?;
            }
        }
        tx.commit()?;
        Ok(applied)
    }

    /// Makes a copy of revision `to` the new current revision (history stays linear).
    pub fn rollback(&self, name: &str, to: Option<u64>, actor: &str) -> Result<Applied> {
        let record = self.app(name)?.ok_or_else(|| Error::AppNotFound(name.into()))?;
        let target = match to {
            Some(n) => n,
            None => record
                .current_revision
                .checked_sub(1)
                .filter(|n| *n > 0)
                .ok_or(Error::RevisionNotFound { app: name.into(), revision: 0 })?,
        };
        let rev = self
            .revision(name, target)?
            .ok_or(Error::RevisionNotFound { app: name.into(), revision: target })?;
        self.apply(
            &rev.spec,
            Source {
                actor: actor.into(),
                message: format!("rollback to revision {target}"),
                base_dir: rev.base_dir,
                manifest: rev.manifest,
            },
        )
    }

    /// Reads one application's record.
    pub fn app(&self, name: &str) -> Result<Option<AppRecord>> {
        let tx = self.db.begin_read()?;
        let apps = tx.open_table(APPS)?;
        Ok(match apps.get(name)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// All application records, by name.
    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        let tx = self.db.begin_read()?;
        let apps = tx.open_table(APPS)?;
        let mut out = Vec::new();
        for item in apps.iter()? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// One revision.
    pub fn revision(&self, name: &str, number: u64) -> Result<Option<Revision>> {
        let tx = self.db.begin_read()?;
        let revs = tx.open_table(REVISIONS)?;
        Ok(match revs.get((name, number))? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// All revisions of an app, oldest first.
    pub fn revisions(&self, name: &str) -> Result<Vec<Revision>> {
        let tx = self.db.begin_read()?;
        let revs = tx.open_table(REVISIONS)?;
        let mut out = Vec::new();
        for item in revs.range((name, 0)..=(name, u64::MAX))? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Changes an app's record in one transaction, recording `event` with it.
    pub fn update_app(
        &self,
        name: &str,
        event: Option<NewEvent>,
        change: impl FnOnce(&mut AppRecord) -> Result<()>,
    ) -> Result<AppRecord> {
        let tx = self.db.begin_write()?;
        let record;
        {
            let mut apps = tx.open_table(APPS)?;
            let mut r: AppRecord = match apps.get(name)? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => return Err(Error::AppNotFound(name.into())),
            };
            change(&mut r)?;
            r.updated_at = now();
            apps.insert(name, serde_json::to_vec(&r)?.as_slice())?;
            record = r;
        }
        if let Some(e) = event {
            append_event(&tx, e)?;
        }
        tx.commit()?;
        Ok(record)
    }

    /// Removes an app, its revisions and nothing else (events stay as history).
    pub fn purge(&self, name: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(APPS)?.remove(name)?;
            let mut revs = tx.open_table(REVISIONS)?;
            revs.retain_in((name, 0)..=(name, u64::MAX), |_, _| false)?;
            append_event(
                &tx,
                NewEvent {
                    app: Some(name.into()),
                    component: None,
                    warning: false,
                    reason: "Deleted".into(),
                    actor: "reconciler".into(),
                    message: "all instances stopped; application removed".into(),
                },
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records an event.
    pub fn record(&self, event: NewEvent) -> Result<u64> {
        let tx = self.db.begin_write()?;
        let seq = append_event(&tx, event)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Events after `after`, oldest first, optionally for one app, at most `limit`.
    pub fn events(&self, app: Option<&str>, after: u64, limit: usize) -> Result<Vec<Event>> {
        let tx = self.db.begin_read()?;
        let events = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for item in events.range(after.saturating_add(1)..)? {
            let (_, v) = item?;
            let e: Event = serde_json::from_slice(v.value())?;
            if app.is_none_or(|a| e.app.as_deref() == Some(a)) {
                out.push(e);
            }
        }
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }
}

fn append_event(tx: &redb::WriteTransaction, e: NewEvent) -> Result<u64> {
    let mut events = tx.open_table(EVENTS)?;
    let seq = events.last()?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
    let event = Event {
        seq,
        time: now(),
        app: e.app,
        component: e.component,
        severity: if e.warning { "Warning" } else { "Normal" }.into(),
        reason: e.reason,
        actor: e.actor,
        message: e.message,
    };
    events.insert(seq, serde_json::to_vec(&event)?.as_slice())?;
    if seq > MAX_EVENTS && seq % 100 == 0 && events.len()? > MAX_EVENTS {
        let cutoff = seq - MAX_EVENTS;
        events.retain_in(..cutoff, |_, _| false)?;
    }
    Ok(seq)
}

#[cfg(test)]
mod tests;
