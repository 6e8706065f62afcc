//! Tenant budgets: `budget = { daily_usd, monthly_usd, on_exceed }`, the UTC periods they run
//! over, and money as integer nano-dollars (so Redis can add it exactly with `INCRBY`).

use serde::Deserialize;

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// What happens to a remote-bound request the budget cannot cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnExceed {
    /// 429 `budget_exceeded` with `Retry-After` to the end of the period.
    #[default]
    Reject,
    /// Served by the local engine instead (where the privacy and residency guard allows it).
    Local,
}

/// A tenant's `budget`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Spend allowed per UTC day.
    pub daily_usd: Option<f64>,
    /// Spend allowed per UTC calendar month.
    pub monthly_usd: Option<f64>,
    /// `reject` (default) or `local`.
    #[serde(default)]
    pub on_exceed: OnExceed,
    /// Completion tokens reserved for a request that sets no `max_tokens` (its worst case).
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
}

const fn default_max_tokens() -> u32 {
    4096
}

impl BudgetConfig {
    /// What is wrong with it.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.daily_usd.is_none() && self.monthly_usd.is_none() {
            problems.push("budget needs daily_usd, monthly_usd or both".to_owned());
        }
        for (name, value) in [("daily_usd", self.daily_usd), ("monthly_usd", self.monthly_usd)] {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0) {
                    problems.push(format!("budget.{name} = {v} must be a non-negative amount"));
                }
            }
        }
        if self.default_max_tokens == 0 {
            problems.push("budget.default_max_tokens must be positive".to_owned());
        }
        problems
    }

    /// The limits in nano-dollars.
    pub fn limits(&self) -> BudgetLimits {
        BudgetLimits { daily_nusd: self.daily_usd.map(usd_to_nanos), monthly_nusd: self.monthly_usd.map(usd_to_nanos) }
    }
}

/// A budget's limits in nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetLimits {
    /// Per UTC day.
    pub daily_nusd: Option<u64>,
    /// Per UTC month.
    pub monthly_nusd: Option<u64>,
}

/// A tenant's money as a store last reported it.
#[allow(clippy::struct_field_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spend {
    /// Settled spend today (UTC).
    pub daily_nusd: u64,
    /// Settled spend this month (UTC).
    pub monthly_nusd: u64,
    /// Held by requests in flight.
    pub reserved_nusd: u64,
}

impl Spend {
    /// The share of the tightest limit already spent or reserved (0 without limits).
    pub fn used_share(&self, limits: BudgetLimits) -> f64 {
        let share = |spent: u64, limit: Option<u64>| match limit {
            None => 0.0,
            Some(0) => f64::INFINITY,
            #[allow(clippy::cast_precision_loss)]
            Some(limit) => (spent + self.reserved_nusd) as f64 / limit as f64,
        };
        share(self.daily_nusd, limits.daily_nusd).max(share(self.monthly_nusd, limits.monthly_nusd))
    }

    /// Dollars left per period (settled spend only), for `switchyard_budget_remaining_usd`.
    pub fn remaining_usd(&self, limits: BudgetLimits) -> [(&'static str, Option<f64>); 2] {
        let left = |spent: u64, limit: Option<u64>| limit.map(|l| nanos_to_usd(l.saturating_sub(spent)));
        [("daily", left(self.daily_nusd, limits.daily_nusd)), ("monthly", left(self.monthly_nusd, limits.monthly_nusd))]
    }
}

/// `usd` without the float noise of multiplying prices by token counts (1.7e-6, not
/// 1.7000000000000002e-6): rounded to a pico-dollar, far below any price's precision (a price
/// per million tokens with six decimals costs 1e-12 a token), so no real digit is lost.
pub fn without_float_noise(usd: f64) -> f64 {
    const PICOS_PER_USD: f64 = 1e12;
    if usd.is_finite() && usd.abs() < 1e3 {
        (usd * PICOS_PER_USD).round() / PICOS_PER_USD
    } else {
        usd
    }
}

/// Dollars to nano-dollars, to the nearest (a reservation and its settlement of the same usage
/// round alike, so they cancel exactly).
pub fn usd_to_nanos(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let nanos = (usd * NANOS_PER_USD).round() as u64;
        nanos.min(MAX_NANOS)
    } else {
        0
    }
}

/// The most one amount may be: 2^53 nano-USD (about $9 million), exact in Redis's Lua numbers,
/// and far from overflowing when a tenant's spend and every reservation it holds are added up
/// (an absurd `n` × `max_tokens` once saturated at 2^64 - 1 and wrapped that sum around).
pub const MAX_NANOS: u64 = 1 << 53;

/// Nano-dollars to dollars.
#[allow(clippy::cast_precision_loss)]
pub fn nanos_to_usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

const DAY_MS: u64 = 86_400_000;

/// The UTC day and month containing an instant, and when each ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// Days since 1970-01-01.
    pub day: u64,
    /// `year * 12 + month - 1`.
    pub month: u64,
    /// Unix ms at the next midnight.
    pub day_end_ms: u64,
    /// Unix ms at the first midnight of the next month.
    pub month_end_ms: u64,
}

impl Periods {
    /// The periods at `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        let day = now_ms / DAY_MS;
        let (year, month) = civil_from_days(day);
        let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        Self {
            day,
            month: year * 12 + (month - 1),
            day_end_ms: (day + 1) * DAY_MS,
            month_end_ms: days_from_civil(next_year, next_month) * DAY_MS,
        }
    }
}

/// Year and month (1–12) of a day count since the epoch (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month)
}

/// Days since the epoch of the first day of `year`-`month` (`days_from_civil`, day 1).
fn days_from_civil(year: u64, month: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_lose_their_float_noise_but_no_digit() {
        // 11 prompt tokens at $0.1/M and 3 completion tokens at $0.2/M.
        let noisy = (11.0 * 0.1 + 3.0 * 0.2) / 1e6;
        assert_eq!(noisy.to_string(), "0.0000017000000000000002");
        assert_eq!(without_float_noise(noisy).to_string(), "0.0000017");
        assert_eq!(usd_to_nanos(without_float_noise(noisy)), usd_to_nanos(noisy));
        // One token at $0.0375/M is 37.5 nano-dollars: kept as it is.
        assert_eq!(without_float_noise(0.0375 / 1e6).to_string(), "0.0000000375");
    }

    #[test]
    fn periods_follow_the_utc_calendar() {
        // 2026-11-30T23:59:59.999Z: last instant of November.
        let p = Periods::at(1_796_083_199_999);
        assert_eq!(p.day_end_ms, 1_796_083_200_000);
        assert_eq!(p.month_end_ms, 1_796_083_200_000, "December starts at that midnight");
        let q = Periods::at(1_796_083_200_000);
        assert_eq!(q.month, p.month + 1);
        assert_eq!(q.day, p.day + 1);
        // 2026-12-15 → January 2027 starts 2027-01-01T00:00Z = 1_798_761_600_000.
        assert_eq!(Periods::at(1_797_292_800_000).month_end_ms, 1_798_761_600_000);
        // Leap year: 2028-02-10 → March starts 2028-03-01 = 1_835_481_600_000.
        assert_eq!(Periods::at(1_833_753_600_000).month_end_ms, 1_835_481_600_000);
    }

    #[test]
    fn share_is_the_tightest_limit_and_counts_reservations() {
        let limits = BudgetConfig { daily_usd: Some(1.0), monthly_usd: Some(10.0), on_exceed: OnExceed::Reject, default_max_tokens: 1 }.limits();
        let spend = Spend { daily_nusd: 500_000_000, monthly_nusd: 9_000_000_000, reserved_nusd: 300_000_000 };
        assert!((spend.used_share(limits) - 0.93).abs() < 1e-12, "monthly 9.3/10 beats daily 0.8/1");
        assert!(spend.used_share(BudgetLimits::default()).abs() < f64::EPSILON);
        assert_eq!(spend.remaining_usd(limits), [("daily", Some(0.5)), ("monthly", Some(1.0))]);
    }

    #[test]
    fn money_rounds_to_whole_nanos() {
        assert_eq!(usd_to_nanos(2.5e-6), 2500);
        assert_eq!(usd_to_nanos(0.05), 50_000_000, "not 50_000_001 from 0.05's binary expansion");
        assert_eq!(usd_to_nanos(1e-10), 0);
        assert_eq!(usd_to_nanos(-1.0), 0);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        // An absurd worst case stays an amount that sums without wrapping.
        assert_eq!(usd_to_nanos(1.8e10), MAX_NANOS);
        assert_eq!(usd_to_nanos(f64::MAX), MAX_NANOS);
        assert!(MAX_NANOS.checked_mul(1024).is_some());
    }
}
