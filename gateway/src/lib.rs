//! The gateway: HTTP server, auth, limits, budgets, cache, accounting, metrics, dashboard. The
//! `switchyard` binary (`main.rs`) is its command line; fuzz targets and benches use the parts
//! that need no server (request parsing, configuration, the limits stores).
// No unsafe code but the two libc calls that raise the open-files limit (`open_files.rs`).
#![deny(unsafe_code)]

pub mod accounting;
pub mod admin_throttle;
pub mod admission;
pub mod app;
pub mod audit;
pub mod budgets;
pub mod cache;
pub mod calibrate;
pub mod catalog;
pub mod chat_request;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod handlers;
pub mod in_flight;
pub mod limits;
pub mod metrics;
pub mod middleware;
pub mod open_files;
pub mod privacy;
pub mod response_store;
pub mod responses;
pub mod serve;
pub mod shadow;
pub mod spill;
pub mod stalled_writes;
pub mod state;
pub mod stats;
pub mod store;
pub mod tenants;
