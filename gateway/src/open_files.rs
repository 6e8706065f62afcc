//! The open-files limit. Every client connection is a file descriptor, and so is every provider
//! connection it leads to: with the soft limit many systems start processes with (1024), the
//! descriptors run out long before `server.max_connections` (8192), and what then fails is the
//! next provider connect ("Too many open files"), blamed on the provider. So the soft limit is
//! raised to the hard one at start, as servers commonly do, and a `max_connections` the result
//! still cannot carry is warned about. The two calls are the only unsafe code in the crate.
#![allow(unsafe_code)]

/// The soft limit after raising it to the hard limit (capped: an unlimited hard limit cannot be
/// a soft one everywhere); `None` where it cannot be read.
#[cfg(unix)]
#[allow(clippy::useless_conversion)] // `rlim_t` is `u64` on Linux, not on every Unix
pub fn raise_to_hard_limit() -> Option<u64> {
    const CAP: libc::rlim_t = 1 << 20;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable `rlimit` for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return None;
    }
    let wanted = limit.rlim_max.min(CAP);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a valid `rlimit`; a refusal leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return Some(u64::from(wanted));
        }
    }
    Some(u64::from(limit.rlim_cur))
}

#[cfg(not(unix))]
pub fn raise_to_hard_limit() -> Option<u64> {
    None
}

/// Raises the limit and warns when `max_connections` would still run out of descriptors.
pub fn raise_for(max_connections: usize) {
    match raise_to_hard_limit() {
        Some(open_files) if open_files < needed_for(max_connections) => tracing::warn!(
            open_files,
            max_connections,
            "the open-files limit is below what server.max_connections needs (two descriptors per connection): raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower max_connections, or provider connects fail with \"Too many open files\" under load"
        ),
        Some(open_files) => tracing::debug!(open_files, "open-files limit"),
        None => {}
    }
}

/// Descriptors a full house of client connections may need: one each, one more each for a
/// provider connection, and some for listeners, Redis, the audit log and the model files.
pub fn needed_for(max_connections: usize) -> u64 {
    (max_connections as u64).saturating_mul(2).saturating_add(64)
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn the_soft_limit_ends_at_least_where_it_started() {
        let before = std::fs::read_to_string("/proc/self/limits").ok();
        let after = super::raise_to_hard_limit().expect("readable");
        assert!(after >= 64, "{after}");
        // Raising it twice changes nothing more.
        assert_eq!(super::raise_to_hard_limit(), Some(after), "{before:?}");
    }
}
