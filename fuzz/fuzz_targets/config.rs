//! `config`: arbitrary text as both daemons' config files, through the same parse-and-check
//! entry points `load` uses after reading the file.
//!
//! Beyond "no panic": errors render, and an accepted config's derived values (peer map,
//! budgets, HAProxy server name) can be computed.

#![no_main]

use hotdeploy_common::config::{AgentConfig, CoordinatorConfig};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // `load` reads the file with `read_to_string`: only UTF-8 ever reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("<fuzz>");
    match CoordinatorConfig::from_toml_str(text, origin) {
        Ok(cfg) => {
            let peers = cfg.peer_map();
            assert_eq!(
                peers.len(),
                cfg.peers.len(),
                "a checked peer id did not parse"
            );
            for g in cfg.groups.values() {
                for size in [0, 1, 3, 10_000] {
                    assert!(g.max_unavailable.budget(size) >= 1);
                }
                let _ = g.max_unavailable.to_string();
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match AgentConfig::from_toml_str(text, origin) {
        Ok(cfg) => {
            let _ = cfg.haproxy_server();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
