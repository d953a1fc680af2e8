//! Money: an integer number of minor units of an ISO 4217 currency. Never a float.
//!
//! The currency decides what a minor unit is: its ISO 4217 minor unit (the
//! exponent) says how many decimals the major unit has. 1999 minor units are
//! 19.99 USD, 1999 JPY (the yen has no minor unit) and 1.999 BHD. Only current
//! ISO 4217 codes with a minor unit are currencies here: codes that ISO does not
//! list, withdrawn codes, and the codes ISO gives no minor unit (precious
//! metals, units of account, the testing and no-currency codes) are refused,
//! since an integer amount of minor units means nothing for them.

use std::fmt;

/// The current ISO 4217 currencies and their minor units (the number of decimals
/// of the major unit), sorted by code: ISO 4217 list one as amended up to 2025
/// (ZWG and XCG in, ZWL, ANG, SLL, HRK, CUC and BGN withdrawn), less the codes in
/// [`NO_MINOR_UNIT`]. Changing it is a code change, reviewed like one.
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
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
    ("MXV", 2),
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
    ("USN", 2),
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
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// ISO 4217 codes without a minor unit: precious metals (XAU, XAG, XPT, XPD),
/// units of account (XDR, XUA, XSU, XBA to XBD, and XAD, the Arab Monetary
/// Fund's accounting dinar), the testing code XTS and XXX, "no currency".
/// Refused with a message of their own.
const NO_MINOR_UNIT: &[&str] = &[
    "XAD", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA", "XXX",
];

/// A current ISO 4217 currency with a minor unit, such as USD, JPY or BHD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: [u8; 3],
    /// Decimals of the major unit, from [`ISO_4217`].
    minor_units: u8,
}

impl Currency {
    /// Validates a currency code such as `"USD"`: a current ISO 4217 code with a
    /// minor unit.
    pub fn parse(code: &str) -> Result<Self, String> {
        let code_bytes = match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => [a, b, c],
            _ => {
                return Err(format!(
                    "must be an ISO 4217 code of three upper-case letters (got {code:?})"
                ));
            }
        };
        if NO_MINOR_UNIT.contains(&code) {
            return Err(format!(
                "{code} has no minor unit in ISO 4217 (a metal, a unit of account, or a \
                 testing or no-currency code): an amount in minor units means nothing for it"
            ));
        }
        match ISO_4217.binary_search_by(|(known, _)| (*known).cmp(code)) {
            Ok(index) => Ok(Self {
                code: code_bytes,
                minor_units: ISO_4217[index].1,
            }),
            Err(_) => Err(format!("is not a current ISO 4217 currency code (got {code:?})")),
        }
    }

    /// A code read back from the database: any three upper-case letters. Rows
    /// written before the ISO 4217 table (or in a currency ISO has withdrawn
    /// since) stay readable; their minor unit is the table's, else 2. Requests
    /// go through [`Currency::parse`].
    pub fn stored(code: &str) -> Result<Self, String> {
        match Self::parse(code) {
            Ok(currency) => Ok(currency),
            Err(_) => match code.as_bytes() {
                &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self {
                    code: [a, b, c],
                    minor_units: 2,
                }),
                _ => Err(format!(
                    "stored currency {code:?} is not three upper-case letters"
                )),
            },
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from three ASCII letters.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// The ISO 4217 minor unit: how many decimals the major unit has (2 for USD,
    /// 0 for JPY, 3 for BHD, 4 for CLF). An amount of `n` minor units is
    /// `n / 10^minor_units()` major units.
    pub fn minor_units(&self) -> u32 {
        u32::from(self.minor_units)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-negative amount of money in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// An amount; negative amounts are refused.
    pub fn new(minor: i64, currency: Currency) -> Result<Self, String> {
        if minor < 0 {
            return Err(format!("must not be negative (got {minor})"));
        }
        Ok(Self { minor, currency })
    }

    /// The amount in minor units.
    pub fn minor(&self) -> i64 {
        self.minor
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }
}

/// `minor` minor units written in major units with `decimals` decimals:
/// `1999` is `"19.99"` with 2, `"1999"` with 0, `"-0.05"` for `-5` with 2.
fn major_units(minor: i64, decimals: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let digits = minor.unsigned_abs().to_string();
    let decimals = decimals as usize;
    if decimals == 0 {
        return format!("{sign}{digits}");
    }
    let digits = format!("{digits:0>width$}", width = decimals + 1);
    let (whole, fraction) = digits.split_at(digits.len() - decimals);
    format!("{sign}{whole}.{fraction}")
}

impl fmt::Display for Money {
    /// The amount in major units with the currency's decimals: `19.99 USD`,
    /// `1999 JPY`, `1.234 BHD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amount = major_units(self.minor, self.currency.minor_units());
        write!(f, "{amount} {}", self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn a_currency_is_a_current_iso_4217_code() {
        assert_eq!(currency("EUR").as_str(), "EUR");
        for bad in ["", "eur", "EURO", "E1R", "€UR", " EUR"] {
            let error = Currency::parse(bad).unwrap_err();
            assert!(error.contains("three upper-case letters"), "{bad:?}: {error}");
        }
        for unknown in ["ABC", "ZZZ", "QQQ"] {
            let error = Currency::parse(unknown).unwrap_err();
            assert!(error.contains("not a current ISO 4217"), "{unknown}: {error}");
        }
    }

    #[test]
    fn withdrawn_codes_are_refused() {
        for withdrawn in ["HRK", "ZWL", "ANG", "SLL", "CUC", "BGN", "DEM", "FRF", "VEF"] {
            assert!(Currency::parse(withdrawn).is_err(), "{withdrawn} accepted");
        }
        for successor in ["ZWG", "XCG", "SLE", "VES", "VED"] {
            assert!(Currency::parse(successor).is_ok(), "{successor} refused");
        }
    }

    #[test]
    fn codes_without_a_minor_unit_are_refused() {
        for code in NO_MINOR_UNIT {
            let error = Currency::parse(code).unwrap_err();
            assert!(error.contains("no minor unit"), "{code}: {error}");
        }
    }

    #[test]
    fn each_currency_has_its_iso_minor_unit() {
        let cases = [
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("VND", 0),
            ("CLP", 0),
            ("XOF", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("TND", 3),
            ("CLF", 4),
            ("UYW", 4),
            ("MGA", 2),
        ];
        for (code, minor_units) in cases {
            assert_eq!(currency(code).minor_units(), minor_units, "{code}");
        }
    }

    #[test]
    fn the_table_is_sorted_unique_and_apart_from_the_refused_codes() {
        assert!(ISO_4217.windows(2).all(|pair| pair[0].0 < pair[1].0));
        for (code, minor_units) in ISO_4217 {
            assert!(
                code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()),
                "{code}"
            );
            assert!(*minor_units <= 4, "{code}");
            assert!(!NO_MINOR_UNIT.contains(code), "{code}");
            assert_eq!(currency(code).as_str(), *code);
        }
        assert_eq!(ISO_4217.len() + NO_MINOR_UNIT.len(), 178);
    }

    #[test]
    fn a_stored_code_reads_back_even_when_iso_no_longer_lists_it() {
        assert_eq!(Currency::stored("JPY").unwrap().minor_units(), 0);
        assert_eq!(Currency::stored("HRK").unwrap().as_str(), "HRK");
        assert!(Currency::parse("HRK").is_err());
        assert!(Currency::stored("usd").is_err());
    }

    #[test]
    fn money_refuses_negative_amounts() {
        let usd = currency("USD");
        assert!(Money::new(-1, usd).is_err());
        assert_eq!(Money::new(0, usd).unwrap().minor(), 0);
    }

    #[test]
    fn money_reads_in_major_units_with_the_currency_decimals() {
        let shown = |minor, code| Money::new(minor, currency(code)).unwrap().to_string();
        assert_eq!(shown(1999, "USD"), "19.99 USD");
        assert_eq!(shown(1999, "JPY"), "1999 JPY");
        assert_eq!(shown(1234, "BHD"), "1.234 BHD");
        assert_eq!(shown(5, "USD"), "0.05 USD");
        assert_eq!(shown(0, "EUR"), "0.00 EUR");
        assert_eq!(shown(10_000, "CLF"), "1.0000 CLF");
        assert_eq!(shown(0, "KRW"), "0 KRW");
        assert_eq!(shown(i64::MAX, "USD"), "92233720368547758.07 USD");
    }

    #[test]
    fn negative_amounts_read_with_their_sign() {
        assert_eq!(major_units(-5, 2), "-0.05");
        assert_eq!(major_units(-1999, 2), "-19.99");
        assert_eq!(major_units(-1999, 0), "-1999");
        assert_eq!(major_units(-1, 3), "-0.001");
        assert_eq!(major_units(i64::MIN, 2), "-92233720368547758.08");
    }
}
