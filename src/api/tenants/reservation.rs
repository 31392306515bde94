//! Which scheduling class a request gets, from its tenant's buckets. A
//! provisioned tenant within its reserved rate is `Reserved`; over it, the
//! request falls back to on-demand treatment (`Standard`) and is never refused
//! for that — a provisioned tenant over its rate is no worse off than an
//! on-demand one. An on-demand tenant with a cap is refused (429) once over it,
//! with the time until its bucket holds the prompt.

use std::time::{Duration, Instant};

use crate::engine::request::{Priority, SchedClass};

use super::ledger::Buckets;
use super::table::{Tenant, Tier};

/// The outcome of admitting a request of `prompt_tokens` (all choices counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Granted {
        priority: Priority,
        /// The prompt was taken from the buckets, so the output is charged to
        /// them as it is produced.
        drew: bool,
    },
    /// Over an on-demand cap: retry after this long.
    OverCap { retry_after: Duration },
    /// The prompt alone is more than the cap allows in a minute: no wait helps.
    BeyondCap { per_minute: u64 },
}

/// Decides for `tier` with `buckets` (`None`: no rates) and takes the prompt from
/// the input bucket when granted against it. Pure apart from `buckets`.
pub fn decide(tier: Tier, buckets: Option<&mut Buckets>, prompt_tokens: u64, now: Instant) -> Admission {
    let Some(b) = buckets else {
        return Admission::Granted { priority: Priority::Standard, drew: false };
    };
    // The output bucket must be above zero: a tenant still repaying an output
    // overshoot is over its rate even if its input bucket is full.
    let fits = b.input.level(now) >= prompt_tokens as f64 && b.output.level(now) > 0.0;
    match tier {
        Tier::Provisioned { .. } if fits => {
            b.input.charge(prompt_tokens, now);
            Admission::Granted { priority: Priority::Reserved, drew: true }
        }
        Tier::Provisioned { .. } => Admission::Granted { priority: Priority::Standard, drew: false },
        Tier::OnDemand if fits => {
            b.input.charge(prompt_tokens, now);
            Admission::Granted { priority: Priority::Standard, drew: true }
        }
        Tier::OnDemand => match b.input.time_to_hold(prompt_tokens, now) {
            None => Admission::BeyondCap { per_minute: b.input.per_minute() },
            Some(input_wait) => {
                // "Above zero": one token's worth past repaying the overshoot.
                let output_wait = b.output.time_to_hold(1, now).unwrap_or(Duration::ZERO);
                Admission::OverCap { retry_after: input_wait.max(output_wait) }
            }
        },
    }
}

/// The class the scheduler sees for a granted request of `tenant`.
pub fn class_of(tenant: &Tenant, priority: Priority) -> SchedClass {
    SchedClass { priority, share_key: tenant.share_key, weight: tenant.weight }
}

/// Whole seconds for `Retry-After`, rounded up so a client that waits exactly that
/// long finds room; at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

#[cfg(test)]
mod tests {
    use super::super::ledger::Rates;
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const PROVISIONED: Tier = Tier::Provisioned { input_tokens_per_minute: 60, output_tokens_per_minute: 60 };

    fn buckets(now: Instant) -> Buckets {
        Buckets::full(Rates { input_tokens_per_minute: 60, output_tokens_per_minute: 60 }, now)
    }

    #[test]
    fn provisioned_within_its_rate_is_reserved_and_over_it_falls_back_to_standard() {
        let t0 = Instant::now();
        let mut b = buckets(t0);
        let reserved = Admission::Granted { priority: Priority::Reserved, drew: true };
        let fallback = Admission::Granted { priority: Priority::Standard, drew: false };
        assert_eq!(decide(PROVISIONED, Some(&mut b), 40, t0), reserved);
        assert_eq!(b.input.level(t0), 20.0, "the prompt was taken");
        assert_eq!(decide(PROVISIONED, Some(&mut b), 40, t0), fallback, "never refused");
        assert_eq!(b.input.level(t0), 20.0, "a fallback takes nothing");
        assert_eq!(decide(PROVISIONED, Some(&mut b), 40, t0 + 20 * SEC), reserved, "refilled");
        // An output overshoot being repaid also means over the rate.
        b.output.charge(61, t0 + 20 * SEC);
        assert_eq!(decide(PROVISIONED, Some(&mut b), 1, t0 + 20 * SEC), fallback);
    }

    #[test]
    fn on_demand_without_rates_is_standard_and_with_a_cap_is_refused_over_it() {
        let t0 = Instant::now();
        let standard = Admission::Granted { priority: Priority::Standard, drew: false };
        assert_eq!(decide(Tier::OnDemand, None, 1_000_000, t0), standard);
        let mut b = buckets(t0);
        let drew = Admission::Granted { priority: Priority::Standard, drew: true };
        assert_eq!(decide(Tier::OnDemand, Some(&mut b), 50, t0), drew);
        assert_eq!(
            decide(Tier::OnDemand, Some(&mut b), 30, t0),
            Admission::OverCap { retry_after: 20 * SEC }
        );
        assert_eq!(decide(Tier::OnDemand, Some(&mut b), 61, t0), Admission::BeyondCap { per_minute: 60 });
        b.output.charge(70, t0);
        assert_eq!(
            decide(Tier::OnDemand, Some(&mut b), 5, t0),
            Admission::OverCap { retry_after: 11 * SEC },
            "the output bucket at -10 needs 11 s to be above zero"
        );
    }

    #[test]
    fn the_class_carries_the_tenants_share_key_and_weight() {
        let t = Tenant { share_key: 7, weight: 3, ..Tenant::anonymous() };
        assert_eq!(
            class_of(&t, Priority::Reserved),
            SchedClass { priority: Priority::Reserved, share_key: 7, weight: 3 }
        );
        assert_eq!(class_of(&Tenant::anonymous(), Priority::Standard), SchedClass::default());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(20 * SEC), 20);
        assert_eq!(retry_after_secs(Duration::from_millis(20_001)), 21);
    }
}
