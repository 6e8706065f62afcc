//! The configuration and policy loader: any text gives a configuration or a list of problems,
//! never a panic. The input is the config file, then a NUL byte, then the policy file.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (config, policy) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"[[rule]]\nname = \"all\"\nroute = \"local\"\n"[..]),
    };
    let (Ok(config), Ok(policy)) = (std::str::from_utf8(config), std::str::from_utf8(policy)) else { return };
    let read_policy = |_: &Path| Ok(policy.to_owned());
    let _ = gateway::config::GatewayConfig::from_text(config, "fuzz.toml", Some("127.0.0.1:0"), &read_policy);
    if let Ok(parsed) = router::Policy::parse(policy) {
        let _ = parsed.problems(policy, &|_| true);
    }
});
