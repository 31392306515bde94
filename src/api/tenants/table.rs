//! The validated tenant table: who may call the API, found by the key they
//! present. Keys are kept only as SHA-256 digests and compared in constant time,
//! so neither a `Debug` print nor the time a lookup takes reveals a key.

use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::admission::InFlight;
use super::ledger::{Ledger, Rates};

/// The label of requests served with authentication off.
pub const ANONYMOUS: &str = "anonymous";

/// How a tenant's capacity is sold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Reserved input and output tokens per minute.
    Provisioned { input_tokens_per_minute: u64, output_tokens_per_minute: u64 },
    /// Best effort, sharing what reservations leave.
    OnDemand,
}

/// The share key of the anonymous tenant; tenants from a file get 1, 2, ...
pub const ANONYMOUS_SHARE_KEY: u32 = 0;

/// An API key as its SHA-256 digest. Comparing digests of equal length in
/// constant time leaks neither the key nor its length through timing.
#[derive(Clone)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    fn matches(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDigest(<redacted>)")
    }
}

#[derive(Debug)]
pub struct Tenant {
    /// Unique, `[A-Za-z0-9_-]{1,64}`: it is a metric label.
    pub name: String,
    pub key: Option<KeyDigest>,
    pub tier: Tier,
    pub max_concurrent_requests: Option<usize>,
    pub max_tokens_per_request: Option<usize>,
    /// An on-demand tenant's optional rates: a cap, refused beyond (429).
    pub on_demand_cap: Option<Rates>,
    /// Its relative share of standard (non-reserved) capacity; at least 1.
    pub weight: u32,
    /// The scheduler's fair-share key: assigned by the table, stable by name
    /// across reloads.
    pub share_key: u32,
    /// Requests of this tenant being served now; shared with the tenant of the
    /// same name in a reloaded table, so a reload does not reset the count.
    pub in_flight: InFlight,
    /// Buckets and usage; handed on by name on reload, like `in_flight`.
    pub ledger: Arc<Ledger>,
}

impl Tenant {
    /// The tenant of every request when authentication is off: no limits.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.into(),
            key: None,
            tier: Tier::OnDemand,
            max_concurrent_requests: None,
            max_tokens_per_request: None,
            on_demand_cap: None,
            weight: 1,
            share_key: ANONYMOUS_SHARE_KEY,
            in_flight: InFlight::default(),
            ledger: Arc::new(Ledger::new(None, Instant::now())),
        }
    }

    /// The rates its buckets run at: the reservation of a provisioned tenant, the
    /// cap of an on-demand one (if it has one).
    pub fn rates(&self) -> Option<Rates> {
        match self.tier {
            Tier::Provisioned { input_tokens_per_minute, output_tokens_per_minute } => {
                Some(Rates { input_tokens_per_minute, output_tokens_per_minute })
            }
            Tier::OnDemand => self.on_demand_cap,
        }
    }
}

/// Every tenant; empty means authentication is off.
#[derive(Debug)]
pub struct TenantTable {
    tenants: Vec<Arc<Tenant>>,
    anonymous: Arc<Tenant>,
    /// The share key the next new tenant name gets.
    next_share_key: u32,
}

/// The outcome of checking a request's credentials.
pub enum Authenticated {
    Tenant(Arc<Tenant>),
    /// A key was required and the one presented (if any) matches no tenant.
    Refused,
}

impl TenantTable {
    /// A table of already-validated tenants (see `file::parse`), each given a
    /// share key and full buckets.
    pub fn new(mut tenants: Vec<Tenant>) -> Self {
        let now = Instant::now();
        let mut next_share_key = ANONYMOUS_SHARE_KEY + 1;
        for t in &mut tenants {
            t.share_key = next_share_key;
            next_share_key += 1;
            t.ledger = Arc::new(Ledger::new(t.rates(), now));
        }
        Self {
            tenants: tenants.into_iter().map(Arc::new).collect(),
            anonymous: Arc::new(Tenant::anonymous()),
            next_share_key,
        }
    }

    /// No tenants: every request is the anonymous tenant.
    pub fn open() -> Self {
        Self::new(Vec::new())
    }

    /// One on-demand tenant named `default` holding the `--api-key` key.
    pub fn single_key(key: &str) -> Self {
        Self::new(vec![Tenant {
            name: "default".into(),
            key: Some(KeyDigest::of(key)),
            tier: Tier::OnDemand,
            max_concurrent_requests: None,
            ..Tenant::anonymous()
        }])
    }

    pub fn requires_key(&self) -> bool {
        !self.tenants.is_empty()
    }

    /// The tenant of requests on routes that take no key (SageMaker's).
    pub fn anonymous(&self) -> Arc<Tenant> {
        self.anonymous.clone()
    }

    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// The tenant whose key is `presented`. Every tenant's digest is compared, with
    /// no early exit, so the time taken does not say which tenant (if any) matched.
    pub fn authenticate(&self, presented: Option<&str>) -> Authenticated {
        if !self.requires_key() {
            return Authenticated::Tenant(self.anonymous.clone());
        }
        let Some(presented) = presented else { return Authenticated::Refused };
        let digest = KeyDigest::of(presented);
        let mut found = None;
        for t in &self.tenants {
            if t.key.as_ref().is_some_and(|k| k.matches(&digest)) {
                found = Some(t.clone());
            }
        }
        found.map_or(Authenticated::Refused, Authenticated::Tenant)
    }

    /// A table of `tenants` replacing `old`: each takes the in-flight count,
    /// ledger (buckets retuned to its new rates) and share key of the tenant of
    /// the same name in `old`, so a reload neither frees slots, refills buckets
    /// nor moves a tenant to another fair-share queue. New names get new keys;
    /// a removed name's key is not reused.
    pub fn reloaded(mut tenants: Vec<Tenant>, old: &TenantTable) -> Self {
        let now = Instant::now();
        let mut next_share_key = old.next_share_key;
        for t in &mut tenants {
            if let Some(o) = old.tenants.iter().find(|o| o.name == t.name) {
                t.in_flight = o.in_flight.clone();
                t.share_key = o.share_key;
                o.ledger.retune(t.rates(), now);
                t.ledger = o.ledger.clone();
            } else {
                t.share_key = next_share_key;
                next_share_key += 1;
                t.ledger = Arc::new(Ledger::new(t.rates(), now));
            }
        }
        Self {
            tenants: tenants.into_iter().map(Arc::new).collect(),
            anonymous: old.anonymous.clone(),
            next_share_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, key: &str) -> Tenant {
        Tenant { name: name.into(), key: Some(KeyDigest::of(key)), ..Tenant::anonymous() }
    }

    fn name_of(a: Authenticated) -> Option<String> {
        match a {
            Authenticated::Tenant(t) => Some(t.name.clone()),
            Authenticated::Refused => None,
        }
    }

    #[test]
    fn keys_find_their_tenant_and_anything_else_is_refused() {
        let table = TenantTable::new(vec![tenant("acme", "sk-a"), tenant("globex", "sk-g")]);
        assert_eq!(name_of(table.authenticate(Some("sk-a"))).as_deref(), Some("acme"));
        assert_eq!(name_of(table.authenticate(Some("sk-g"))).as_deref(), Some("globex"));
        assert_eq!(name_of(table.authenticate(Some("sk-"))), None);
        assert_eq!(name_of(table.authenticate(Some(""))), None);
        assert_eq!(name_of(table.authenticate(None)), None);
    }

    #[test]
    fn an_empty_table_lets_everyone_in_as_anonymous() {
        let table = TenantTable::open();
        assert_eq!(name_of(table.authenticate(None)).as_deref(), Some(ANONYMOUS));
    }

    #[test]
    fn debug_output_never_holds_a_key() {
        let table = TenantTable::new(vec![tenant("acme", "sk-very-secret")]);
        let shown = format!("{table:?}");
        assert!(shown.contains("acme") && !shown.contains("sk-very-secret"), "{shown}");
    }

    #[test]
    fn a_reload_keeps_in_flight_counts_by_name() {
        let old = TenantTable::new(vec![tenant("acme", "sk-a")]);
        let _held = old.tenants()[0].in_flight.try_acquire(None).expect("admitted");
        let new = TenantTable::reloaded(vec![tenant("acme", "sk-rotated"), tenant("new", "sk-n")], &old);
        assert_eq!(new.tenants()[0].in_flight.current(), 1);
        assert_eq!(new.tenants()[1].in_flight.current(), 0);
    }

    #[test]
    fn share_keys_are_stable_by_name_across_reloads_and_never_reused() {
        let old = TenantTable::new(vec![tenant("acme", "sk-a"), tenant("globex", "sk-g")]);
        let keys =
            |t: &TenantTable| t.tenants().iter().map(|t| (t.name.clone(), t.share_key)).collect::<Vec<_>>();
        assert_eq!(keys(&old), [("acme".into(), 1), ("globex".into(), 2)]);
        assert_eq!(old.anonymous().share_key, ANONYMOUS_SHARE_KEY);
        let new = TenantTable::reloaded(vec![tenant("new", "sk-n"), tenant("globex", "sk-g")], &old);
        assert_eq!(keys(&new), [("new".into(), 3), ("globex".into(), 2)]);
        assert!(Arc::ptr_eq(&new.tenants()[1].ledger, &old.tenants()[1].ledger), "globex keeps its ledger");
        let newer = TenantTable::reloaded(vec![tenant("acme", "sk-a")], &new);
        assert_eq!(keys(&newer), [("acme".into(), 4)], "a removed name's key is not handed back");
    }
}
