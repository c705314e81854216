//! `ready`: arbitrary bytes as an HTTP request to the readiness endpoint, fed in reads of
//! arbitrary size through the handler (hyper's HTTP/1 parser and our router) each accepted
//! socket gets.
//!
//! Input: byte 0 picks the rotation state and health, byte 1 the read size, the rest is the
//! client's bytes. Beyond "no panic" (and no hang: a hang would show as a timeout): at most one
//! response, always HTTP/1.x, and a 200 only when the host is in rotation and healthy, a 503 only
//! when it is not.

#![no_main]

use hotdeploy_agent::rotation::readiness;
use hotdeploy_agent::rotation::ready::exchange;
use hotdeploy_common::proto::{Health, Rotation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, input @ ..] = data else {
        return;
    };
    let rotation = Rotation::try_from(i32::from(sel & 3)).expect("rotation 0..=3");
    let health = Health::try_from(i32::from((sel >> 2) & 3)).expect("health 0..=3");
    let out = exchange(input, usize::from(*chunk), rotation, health).expect("runtime");
    if out.is_empty() {
        return;
    }
    // hyper answers an HTTP/1.0 request in kind.
    let is_status = |w: &[u8]| w == b"HTTP/1.1 " || w == b"HTTP/1.0 ";
    assert!(
        is_status(&out[..9.min(out.len())]),
        "not a response: {out:?}"
    );
    let responses = out.windows(9).filter(|w| is_status(w)).count();
    assert_eq!(responses, 1, "more than one response: {out:?}");
    match &out[9..12] {
        b"200" => assert_eq!(readiness(rotation, health), Ok(())),
        b"503" => assert!(readiness(rotation, health).is_err()),
        _ => {}
    }
});
