//! `agent_check`: arbitrary bytes as what a client (HAProxy or anyone) sends to the agent-check
//! responder, fed in reads of arbitrary size through the handler each accepted socket gets.
//!
//! Input: byte 0 picks the rotation state and health, byte 1 the read size, the rest is the
//! client's bytes. Beyond "no panic": the reply is exactly the mapped line whatever was sent,
//! and no more than the input cap is read.

#![no_main]

use hotdeploy_agent::rotation::agent_check::{exchange, MAX_INPUT};
use hotdeploy_agent::rotation::agent_check_reply;
use hotdeploy_common::proto::{Health, Rotation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, input @ ..] = data else {
        return;
    };
    let rotation = Rotation::try_from(i32::from(sel & 3)).expect("rotation 0..=3");
    let health = Health::try_from(i32::from((sel >> 2) & 3)).expect("health 0..=3");
    let ex = exchange(input, usize::from(*chunk), rotation, health).expect("runtime");
    let want = format!("{}\n", agent_check_reply(rotation, health));
    assert_eq!(ex.reply, want.as_bytes());
    assert!(ex.consumed as u64 <= MAX_INPUT);
    assert!(ex.consumed <= input.len());
});
