//! Amount and currency parsing: never a panic; an amount that parses
//! formats back to text that parses to the same amount, and its minor
//! units are positive and in range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wallet_shared::money::CURRENCIES;
use wallet_shared::{Amount, Currency};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // The currency code itself, as a client sends it.
    if let Ok(c) = Currency::parse(text) {
        assert_eq!(Currency::parse(c.code()).ok(), Some(c));
    }
    let (code, _) = CURRENCIES[pick as usize % CURRENCIES.len()];
    let currency = Currency::parse(code).expect("a listed currency parses");
    if let Ok(amount) = Amount::parse(text, currency) {
        assert!(amount.minor() > 0, "{text:?} parsed to {}", amount.minor());
        let shown = currency.format(amount.minor());
        let again = Amount::parse(&shown, currency)
            .unwrap_or_else(|e| panic!("{text:?} -> {shown:?} does not parse: {e:?}"));
        assert_eq!(again, amount, "{text:?} -> {shown:?}");
    }
});
