//! Money: ISO 4217 currencies with their official exponent, and amounts as
//! integers in minor units.
//!
//! Amounts cross the public edge as decimal strings in the currency's major
//! unit (`"12.34"` USD is 1234 cents) and live everywhere else as `i64` minor
//! units. Nothing here ever touches a float.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, Rejection};

/// An ISO 4217 currency that exists: only codes from [`CURRENCIES`] parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    /// Index into [`CURRENCIES`]; keeps the type `Copy` and 2 bytes wide.
    index: u16,
}

/// Active ISO 4217 codes and the number of decimals of their minor unit.
pub const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

impl Currency {
    /// Parses an upper-case ISO 4217 code such as `USD`.
    pub fn parse(code: &str) -> Result<Self, Rejection> {
        CURRENCIES
            .iter()
            .position(|(c, _)| *c == code)
            .map(|index| Currency {
                index: index as u16,
            })
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::InvalidCurrency,
                    format!("{code:?} is not an ISO 4217 currency code"),
                )
            })
    }

    pub fn code(self) -> &'static str {
        CURRENCIES[self.index as usize].0
    }

    /// Number of decimals of the minor unit: 2 for USD, 0 for JPY, 3 for KWD.
    pub fn exponent(self) -> u8 {
        CURRENCIES[self.index as usize].1
    }

    /// Formats minor units as a decimal string in the major unit.
    pub fn format(self, minor: i64) -> String {
        let exp = self.exponent() as u32;
        if exp == 0 {
            return minor.to_string();
        }
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        let scale = 10u64.pow(exp);
        format!(
            "{sign}{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = exp as usize
        )
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl TryFrom<String> for Currency {
    type Error = Rejection;
    fn try_from(code: String) -> Result<Self, Rejection> {
        Currency::parse(&code)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

/// A strictly positive quantity of money in minor units. The currency travels
/// beside it; an `Amount` alone does not say which unit it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Amount(i64);

impl Amount {
    pub fn from_minor(minor: i64) -> Result<Self, Rejection> {
        if minor <= 0 {
            return Err(Rejection::new(
                ErrorCode::InvalidAmount,
                "amount must be greater than zero",
            ));
        }
        Ok(Amount(minor))
    }

    pub fn minor(self) -> i64 {
        self.0
    }

    /// Parses a decimal string in `currency`'s major unit: digits, then at most
    /// `exponent` decimals after a dot. No sign, no exponent, no spaces.
    pub fn parse(text: &str, currency: Currency) -> Result<Self, Rejection> {
        let invalid =
            |why: &str| Rejection::new(ErrorCode::InvalidAmount, format!("amount {text:?} {why}"));
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !digits(whole)
            || !digits(frac)
            || (text.contains('.') && frac.is_empty())
        {
            if text.starts_with('-') {
                return Err(invalid("is negative; amounts are positive"));
            }
            return Err(invalid("is not a decimal number such as \"12.34\""));
        }
        let exp = currency.exponent() as usize;
        if frac.len() > exp {
            return Err(invalid(&format!(
                "has more than {exp} decimals, the most {currency} allows"
            )));
        }
        let too_large = || invalid("is too large");
        let mut minor: i64 = 0;
        for b in whole
            .bytes()
            .chain(frac.bytes())
            .chain(std::iter::repeat_n(b'0', exp - frac.len()))
        {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(b - b'0')))
                .ok_or_else(too_large)?;
        }
        if minor == 0 {
            return Err(invalid("is zero; amounts must be greater than zero"));
        }
        Ok(Amount(minor))
    }
}

impl TryFrom<i64> for Amount {
    type Error = Rejection;
    fn try_from(minor: i64) -> Result<Self, Rejection> {
        Amount::from_minor(minor)
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn parses_major_units_into_minor_units() {
        assert_eq!(Amount::parse("12.34", usd()).unwrap().minor(), 1234);
        assert_eq!(Amount::parse("12.3", usd()).unwrap().minor(), 1230);
        assert_eq!(Amount::parse("12", usd()).unwrap().minor(), 1200);
        assert_eq!(Amount::parse("0.01", usd()).unwrap().minor(), 1);
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(Amount::parse("500", jpy).unwrap().minor(), 500);
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(Amount::parse("1.250", kwd).unwrap().minor(), 1250);
    }

    #[test]
    fn refuses_what_is_not_a_positive_amount() {
        for bad in [
            "", "0", "0.00", "-1", "+1", "1.", ".5", "1.234", "1e3", " 1", "1,00", "abc",
        ] {
            let err = Amount::parse(bad, usd()).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidAmount, "{bad:?}");
        }
        let jpy = Currency::parse("JPY").unwrap();
        assert!(Amount::parse("1.5", jpy).is_err());
        assert!(Amount::parse("92233720368547758.08", usd()).is_err());
        assert_eq!(
            Amount::parse("92233720368547758.07", usd())
                .unwrap()
                .minor(),
            i64::MAX
        );
    }

    #[test]
    fn formats_minor_units_with_the_currency_exponent() {
        assert_eq!(usd().format(1234), "12.34");
        assert_eq!(usd().format(5), "0.05");
        assert_eq!(usd().format(0), "0.00");
        assert_eq!(Currency::parse("JPY").unwrap().format(500), "500");
        assert_eq!(Currency::parse("KWD").unwrap().format(1250), "1.250");
    }

    #[test]
    fn only_iso_codes_are_currencies() {
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("XXX").is_err());
        assert_eq!(Currency::parse("EUR").unwrap().code(), "EUR");
        let mut codes: Vec<_> = CURRENCIES.iter().map(|(c, _)| c).collect();
        codes.dedup();
        assert_eq!(codes.len(), CURRENCIES.len(), "table is sorted and unique");
    }
}
