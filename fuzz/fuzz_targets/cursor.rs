//! The change feed's cursor (`node-1:120,node-2:98`): never a panic; a
//! cursor that parses prints as text that parses to the same cursor.
#![no_main]

use coordinator::feed::FeedCursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cursor) = FeedCursor::parse(text) {
        assert!(cursor.positions.values().all(|p| *p >= 0));
        let again = FeedCursor::parse(&cursor.to_string());
        assert_eq!(again.ok(), Some(cursor));
    }
});
