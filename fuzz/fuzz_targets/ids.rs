//! Account and transaction ids: never a panic; a valid id prints as text
//! that parses to the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_shared::{AccountId, TransactionId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = AccountId::parse(text) {
        assert!((1..=64).contains(&id.as_str().len()));
        assert_eq!(AccountId::parse(id.to_string()).ok(), Some(id));
    }
    if let Ok(id) = TransactionId::parse(text) {
        assert_eq!(TransactionId::parse(&id.to_string()).ok(), Some(id));
    }
});
