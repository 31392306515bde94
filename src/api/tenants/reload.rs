//! The live tenant table and its replacement on SIGHUP. A reload swaps the whole
//! table at once; a request keeps the `Arc<Tenant>` it was admitted with, so a
//! reload never changes who an in-flight request belongs to. A file that fails
//! to load leaves the old table serving.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::file;
use super::table::TenantTable;

#[derive(Debug, Clone)]
pub struct SharedTenants(Arc<RwLock<Arc<TenantTable>>>);

impl SharedTenants {
    pub fn new(table: TenantTable) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(table))))
    }

    /// The table as it is now. The lock is held only to clone an `Arc`; a
    /// poisoned lock still holds a whole table (writers only swap the `Arc`).
    pub fn current(&self) -> Arc<TenantTable> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads `path`; on success the new table replaces the old, keeping each
    /// tenant's in-flight count by name.
    pub fn reload(&self, path: &std::path::Path) -> Result<usize, file::TenantsError> {
        let tenants = file::load(path)?;
        let mut slot = self.0.write().unwrap_or_else(|e| e.into_inner());
        let table = TenantTable::reloaded(tenants, &slot);
        let count = table.tenants().len();
        *slot = Arc::new(table);
        Ok(count)
    }
}

/// On every SIGHUP until the process ends: reloads `path` into `tenants` when
/// there is a tenants file, else logs that there is nothing to reload. Either
/// way the signal no longer ends the process (its default action), so a
/// `kill -HUP` meant for log rotation or a reload cannot stop a server by
/// accident. The handler is in place when this returns. Unix only; elsewhere
/// there is no SIGHUP and this does nothing.
pub fn handle_sighup(tenants: SharedTenants, path: Option<PathBuf>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; it will end the process and not reload tenants");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(path) = &path else {
                    tracing::info!("SIGHUP ignored: there is no --tenants file to reload");
                    continue;
                };
                match tenants.reload(path) {
                    Ok(count) => tracing::info!(file = %path.display(), tenants = count, "tenants reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "tenants file not reloaded; the previous tenants stay in force")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (tenants, path);
}
