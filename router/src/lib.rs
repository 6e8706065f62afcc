//! Classification and policy evaluation for Switchyard.
//!
//! Pure and synchronous: plain data in ([`RouteInput`], [`Policy`]), a data-only [`Decision`] out.
//! This crate never does I/O: the gateway reads files and hands their text to [`Policy::parse`].
#![forbid(unsafe_code)]

mod complexity;
mod decide;
mod policy;

pub use complexity::{score_complexity, ComplexityScore};
pub use decide::{decide, Decision, PrivacySummary, RouteInput, Tier};
pub use policy::{
    Hardness, OnViolation, Policy, PolicyError, PolicyProblem, Rule, Strategy, When, LOCAL_ALIAS,
};
