//! `[[tenants]]` and virtual keys: the configuration holds only SHA-256 hashes of keys; a
//! request's key is hashed, looked up, and the stored hash compared in constant time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use router::TenantProfile;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::budgets::BudgetConfig;
use crate::limits::RateLimitConfig;

/// The tenant of requests when no tenant has keys (open mode).
pub const DEFAULT_TENANT: &str = "default";

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Shown in metrics, the audit log and the dashboard.
    pub name: String,
    /// `sha256:<64 hex digits>` of each virtual key (`switchyard keys new` prints them).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Allowed regions (`eu` allows `eu-west`); empty: anywhere.
    #[serde(default)]
    pub residency: Vec<String>,
    /// Privacy tags added to every request of this tenant.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The targets this tenant's requests may be served by: `provider/model`, `*` globs of them,
    /// `local` (every in-process model); empty: any.
    #[serde(default)]
    pub models: Vec<String>,
    /// Requests and tokens per minute.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Spend allowed per UTC day and month.
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
    /// `false`: this tenant's requests are never sampled for shadow evaluation (`[shadow]`).
    #[serde(default = "default_shadow")]
    pub shadow: bool,
    /// Its share of the local engine's slots and queue places relative to other tenants'.
    #[serde(default = "default_local_weight")]
    pub local_weight: u32,
}

const fn default_local_weight() -> u32 {
    1
}

/// Most `local_weight`: shares are ratios, and a larger one would only starve the others.
pub const MAX_LOCAL_WEIGHT: u32 = 100;

const fn default_shadow() -> bool {
    true
}

const HASH_PREFIX: &str = "sha256:";

/// `sha256:<hex>` of `key`.
pub fn key_hash_entry(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn parse_hash(entry: &str) -> Option<[u8; 32]> {
    let hex = entry.strip_prefix(HASH_PREFIX)?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// True when `name` holds a character a tenant name may not ([`hidden_or_control`]) or spaces
/// around it: one rule for the configuration and `keys new`.
pub fn unreadable_name(name: &str) -> bool {
    name.chars().any(hidden_or_control) || name.trim() != name
}

/// A character a tenant name may not hold: anything but letters and digits (of any script), ASCII
/// punctuation and the ASCII space — so no control, format, bidirectional, zero-width or other
/// whitespace character, which would make a name read as another — and the fillers and marks
/// that count as letters but show nothing.
fn hidden_or_control(c: char) -> bool {
    let visible = c.is_alphanumeric() || c.is_ascii_punctuation() || c == ' ';
    !visible || matches!(c, '\u{34f}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}' | '\u{3164}' | '\u{ffa0}')
}

impl TenantConfig {
    /// What is wrong with this entry (never echoing a key).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("tenant name must not be empty".to_owned());
        } else if unreadable_name(&self.name) {
            problems.push(format!("tenant {:?}: a tenant name must not hold control, format or bidirectional characters (it labels metrics, log lines and the dashboard)", self.name));
        }
        if !(1..=MAX_LOCAL_WEIGHT).contains(&self.local_weight) {
            problems.push(format!("tenant {:?}: local_weight = {} must be between 1 and {MAX_LOCAL_WEIGHT}", self.name, self.local_weight));
        }
        for (i, key) in self.keys.iter().enumerate() {
            if parse_hash(key).is_none() {
                problems.push(format!(
                    "tenant {:?}: keys[{i}] is not a \"sha256:<64 hex digits>\" hash (put hashes, never keys, in the configuration; `switchyard keys new` prints one)",
                    self.name
                ));
            }
        }
        // An empty region matches no region: likely a typo, and it would print as `[]`.
        if self.residency.iter().any(|r| r.trim().is_empty()) {
            problems.push(format!("tenant {:?}: residency lists an empty region (name regions or region prefixes, such as \"eu\")", self.name));
        }
        if let Some(budget) = &self.budget {
            problems.extend(budget.problems().into_iter().map(|p| format!("tenant {:?}: {p}", self.name)));
        }
        if let Some(rate) = &self.rate_limit {
            // 0 would read as "block" but a GCRA of 0 is no limit at all: refuse the ambiguity.
            for (key, limit) in [("rpm", rate.rpm), ("tpm", rate.tpm)] {
                if limit == Some(0) {
                    problems.push(format!("tenant {:?}: rate_limit.{key} must be at least 1 (leave it out for no limit)", self.name));
                }
            }
            if rate.rpm.is_none() && rate.tpm.is_none() {
                problems.push(format!("tenant {:?}: rate_limit needs rpm, tpm or both", self.name));
            }
        }
        problems
    }

    /// The router's view of this tenant.
    pub fn profile(&self) -> TenantProfile {
        let mut tags: Vec<String> = self.tags.iter().map(|t| t.trim().to_lowercase()).collect();
        tags.sort();
        tags.dedup();
        TenantProfile { name: self.name.clone(), residency: self.residency.clone(), tags, models: self.models.clone() }
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A key that matches no tenant.
    Unknown,
}

/// Virtual keys → tenants.
#[derive(Debug)]
pub struct Tenants {
    by_hash: HashMap<[u8; 32], Arc<TenantProfile>>,
    open: Arc<TenantProfile>,
}

impl Tenants {
    /// Builds the key table. Entries were checked by [`TenantConfig::problems`].
    pub fn new(configs: &[TenantConfig]) -> Self {
        let mut by_hash = HashMap::new();
        for config in configs {
            let profile = Arc::new(config.profile());
            for hash in config.keys.iter().filter_map(|k| parse_hash(k)) {
                by_hash.insert(hash, Arc::clone(&profile));
            }
        }
        // In open mode, a tenant named `default` lends its residency and tags to every request.
        let open = configs
            .iter()
            .find(|c| c.name == DEFAULT_TENANT)
            .map_or_else(|| TenantProfile { name: DEFAULT_TENANT.to_owned(), ..TenantProfile::default() }, TenantConfig::profile);
        Self { by_hash, open: Arc::new(open) }
    }

    /// True when no key is needed.
    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The tenant for a request's bearer token.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Arc<TenantProfile>, AuthFailure> {
        if self.is_open() {
            return Ok(Arc::clone(&self.open));
        }
        let key = bearer.ok_or(AuthFailure::Missing)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        match self.by_hash.get_key_value(&digest) {
            // The map found the entry by hash; the comparison itself runs in constant time.
            Some((stored, tenant)) if bool::from(stored.ct_eq(&digest)) => Ok(Arc::clone(tenant)),
            _ => Err(AuthFailure::Unknown),
        }
    }
}

/// A fresh virtual key: `sy-` and 256 random bits in hex.
pub fn new_key() -> String {
    format!("sy-{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, keys: Vec<String>) -> TenantConfig {
        TenantConfig {
            name: name.into(),
            keys,
            residency: vec!["eu".into()],
            tags: vec!["Confidential".into()],
            models: vec![],
            rate_limit: None,
            shadow: true,
            budget: None,
            local_weight: 1,
        }
    }

    #[test]
    fn local_weights_are_between_1_and_the_most() {
        for (weight, fine) in [(0, false), (1, true), (MAX_LOCAL_WEIGHT, true), (MAX_LOCAL_WEIGHT + 1, false)] {
            let entry = TenantConfig { local_weight: weight, ..tenant("acme", vec![]) };
            assert_eq!(entry.problems().is_empty(), fine, "{weight}: {:?}", entry.problems());
        }
    }

    #[test]
    fn tenant_names_are_non_empty_and_printable() {
        assert!(tenant("acme", vec![]).problems().is_empty());
        assert!(tenant(" ", vec![])
            .problems()
            .iter()
            .any(|p| p.contains("must not be empty")));
        assert!(tenant("a\nb", vec![]).problems().iter().any(|p| p.contains("control, format or bidirectional")));
        assert!(tenant("b\u{202e}x", vec![]).problems().iter().any(|p| p.contains("bidirectional")));
        for spoof in ["a\u{200b}b", "acme\u{61c}", "acme\u{e0041}", "ac\u{180e}me", "acme\u{fe0f}", "acme\u{3164}", "acme\u{a0}", "acme ", " acme", "ac\u{2028}me"] {
            assert!(tenant(spoof, vec![]).problems().iter().any(|p| p.contains("bidirectional")), "{spoof:?}");
        }
        for fine in ["acme-eu", "équipe données", "チーム_1", "team.a/b"] {
            assert!(tenant(fine, vec![]).problems().is_empty(), "{fine:?}");
        }
    }

    #[test]
    fn an_empty_residency_region_is_a_problem() {
        let mut t = tenant("acme", vec![]);
        t.residency = vec!["eu".into(), " ".into()];
        assert!(t.problems()[0].contains("residency lists an empty region"), "{:?}", t.problems());
    }

    #[test]
    fn open_mode_without_keys() {
        let t = Tenants::new(&[]);
        assert!(t.is_open());
        assert_eq!(t.authenticate(None).unwrap().name, DEFAULT_TENANT);
    }

    #[test]
    fn key_resolves_to_its_tenant_and_bad_keys_fail() {
        let key = new_key();
        let t = Tenants::new(&[tenant("acme", vec![key_hash_entry(&key)])]);
        let acme = t.authenticate(Some(&key)).unwrap();
        assert_eq!(acme.name, "acme");
        assert_eq!(acme.tags, vec!["confidential".to_owned()]);
        assert_eq!(t.authenticate(Some("sy-wrong")).unwrap_err(), AuthFailure::Unknown);
        assert_eq!(t.authenticate(None).unwrap_err(), AuthFailure::Missing);
    }

    #[test]
    fn malformed_hash_is_a_problem_that_does_not_echo_it() {
        let problems = tenant("acme", vec!["sy-plaintextkey".into()]).problems();
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains("plaintextkey"), "{}", problems[0]);
    }

    #[test]
    fn a_zero_or_empty_rate_limit_is_a_problem() {
        let with = |rate: &str| toml::from_str::<TenantConfig>(&format!("name = \"t\"\nrate_limit = {rate}\n")).unwrap().problems();
        assert!(with("{ rpm = 0 }")[0].contains("rate_limit.rpm must be at least 1"));
        assert!(with("{ rpm = 5, tpm = 0 }")[0].contains("rate_limit.tpm must be at least 1"));
        assert!(with("{}")[0].contains("rate_limit needs rpm, tpm or both"));
        assert!(with("{ tpm = 100 }").is_empty());
    }

    #[test]
    fn hash_entry_is_sha256_hex() {
        assert_eq!(key_hash_entry("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
