//! Tenants: who may call the API and under which limits. The file format
//! (`file`), the validated table with constant-time key lookup (`table`), the
//! per-tenant in-flight count (`admission`), token buckets (`buckets`), each
//! tenant's running account (`ledger`), the scheduling class a request gets from
//! them (`reservation`), and the live table replaced on SIGHUP (`reload`).
//! Nothing here knows HTTP; `server`, `handlers` and `ratelimit` apply it.

pub mod admission;
pub mod buckets;
pub mod file;
pub mod ledger;
pub mod reload;
pub mod reservation;
pub mod table;

pub use admission::{InFlight, InFlightGuard};
pub use file::TenantsError;
pub use reload::{handle_sighup, SharedTenants};
pub use table::{Authenticated, Tenant, TenantTable, Tier, ANONYMOUS};
