//! Classification and policy evaluation for Switchyard.
//!
//! Pure and synchronous: plain data in ([`RouteInput`], [`Policy`], [`Topology`]), a data-only [`Decision`] out.
//! This crate never does I/O: the gateway reads files and hands their text to [`Policy::parse`].
#![forbid(unsafe_code)]

mod complexity;
mod decide;
mod guard;
pub mod learned;
mod pii;
mod policy;
mod redact;
mod signals;

pub use complexity::{score_bare_prompt, BaselineScorer, ComplexityScore, ComplexityScorer};
pub use decide::{Decision, LocalOverload, PrivacySummary, RouteInput, Router, SpillReason, Tier, EXPLICIT_RULE};
pub use guard::{model_allowed, model_pattern_matches, model_violation, region_allowed, violation, Redacts, TargetInfo, TenantProfile, Topology};
pub use pii::{pii_counts, scan as scan_pii, scanner as pii_scanner, PiiKind, PiiScanner, PiiSpan};
pub use redact::{Redaction, Restorer};
pub use signals::{features, Features};
pub use policy::{
    Hardness, OnViolation, Policy, PolicyError, PolicyProblem, Rule, Strategy, When, FRONTIER_ALIAS, LOCAL_ALIAS,
};
