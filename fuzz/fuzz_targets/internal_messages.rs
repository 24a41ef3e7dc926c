//! Decoding of the messages a participant accepts: never a panic, whatever
//! the bytes; a message that decodes encodes and decodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wallet_shared::protocol::{
    BeginRequest, CompleteRequest, DecideRequest, ExecuteRequest, LegsRequest, MovementRequest,
    OpenAccount,
};

fn round_trip<T: DeserializeOwned + Serialize>(data: &[u8]) {
    if let Ok(message) = serde_json::from_slice::<T>(data) {
        let bytes = serde_json::to_vec(&message).expect("a decoded message encodes");
        serde_json::from_slice::<T>(&bytes).expect("an encoded message decodes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 7 {
        0 => round_trip::<BeginRequest>(rest),
        1 => round_trip::<LegsRequest>(rest),
        2 => round_trip::<DecideRequest>(rest),
        3 => round_trip::<CompleteRequest>(rest),
        4 => round_trip::<ExecuteRequest>(rest),
        5 => round_trip::<MovementRequest>(rest),
        _ => round_trip::<OpenAccount>(rest),
    }
});
