//! Conversions between wire types and domain types shared by every service.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, NaiveDate, Utc};

use crate::domain::calendar::check_not_future;
use crate::domain::members::Birthday;
use crate::domain::money::{Currency, Money};
use crate::error::{Error, FieldContext};
use crate::pb;

/// The first second of the supported range of instants: 1970-01-01T00:00:00Z.
pub const MIN_SECONDS: i64 = 0;
/// The last second of the supported range: 9999-12-31T23:59:59Z. Every instant
/// of the range, and its local date in any time zone, is one PostgreSQL and the
/// proto `Date` (whose year 0 means "no year") can hold.
pub const MAX_SECONDS: i64 = 253_402_300_799;

/// A `Timestamp` as an instant; a malformed one, or one outside 1970 to 9999,
/// is refused.
fn to_instant(timestamp: &prost_types::Timestamp) -> Result<DateTime<Utc>, String> {
    let nanos = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| format!("nanos must be 0 to 999999999 (got {})", timestamp.nanos))?;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&timestamp.seconds) {
        return Err(format!(
            "must be from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z (seconds {MIN_SECONDS} to {MAX_SECONDS}, got {})",
            timestamp.seconds
        ));
    }
    DateTime::from_timestamp(timestamp.seconds, nanos)
        .ok_or_else(|| format!("seconds out of range (got {})", timestamp.seconds))
}

/// A required instant.
pub fn required_instant(
    timestamp: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<DateTime<Utc>, Error> {
    let timestamp = timestamp.ok_or_else(|| Error::invalid(field, "is required"))?;
    to_instant(&timestamp).field(field)
}

/// An optional instant.
pub fn optional_instant(
    timestamp: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<DateTime<Utc>>, Error> {
    timestamp.map(|t| to_instant(&t)).transpose().field(field)
}

/// A required instant of an event: not more than 5 minutes after `now`.
pub fn event_instant(
    timestamp: Option<prost_types::Timestamp>,
    field: &str,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Error> {
    let instant = required_instant(timestamp, field)?;
    check_not_future(instant, now).field(field)?;
    Ok(instant)
}

/// An optional instant of an event: when given, not more than 5 minutes after `now`.
pub fn optional_instant_not_future(
    timestamp: Option<prost_types::Timestamp>,
    field: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, Error> {
    let instant = optional_instant(timestamp, field)?;
    if let Some(instant) = instant {
        check_not_future(instant, now).field(field)?;
    }
    Ok(instant)
}

/// An instant on the wire.
pub fn timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A calendar date on the wire.
pub fn date(date: NaiveDate) -> pb::Date {
    pb::Date {
        year: date.year(),
        month: i32::try_from(date.month()).unwrap_or(0),
        day: i32::try_from(date.day()).unwrap_or(0),
    }
}

/// A birthday from the wire (`year` 0 = unknown).
pub fn birthday(date: &pb::Date) -> Result<Birthday, String> {
    let year = (date.year != 0).then_some(date.year);
    let month =
        u32::try_from(date.month).map_err(|_| format!("month must be 1 to 12 (got {})", date.month))?;
    let day = u32::try_from(date.day).map_err(|_| format!("day must be 1 to 31 (got {})", date.day))?;
    Birthday::new(year, month, day)
}

/// A birthday on the wire.
pub fn birthday_pb(birthday: &Birthday) -> pb::Date {
    pb::Date {
        year: birthday.year().unwrap_or(0),
        month: i32::try_from(birthday.month()).unwrap_or(0),
        day: i32::try_from(birthday.day()).unwrap_or(0),
    }
}

/// A required amount of money: a current ISO 4217 currency (else the error
/// names `{field}.currency_code`) and an amount that is not negative (else
/// `{field}.amount_minor`).
pub fn money(money: Option<pb::Money>, field: &str) -> Result<Money, Error> {
    let money = money.ok_or_else(|| Error::invalid(field, "is required"))?;
    let currency = Currency::parse(&money.currency_code).field(&format!("{field}.currency_code"))?;
    Money::new(money.amount_minor, currency).field(&format!("{field}.amount_minor"))
}

/// An optional amount of money; absent is `None`.
pub fn optional_money(money: Option<pb::Money>, field: &str) -> Result<Option<Money>, Error> {
    money.map(|m| self::money(Some(m), field)).transpose()
}

/// A required amount that must be in `currency`, the currency the request
/// names in `currency_field` (an order's or a template's `currency_code`):
/// another currency is refused naming `{field}.currency_code`.
pub fn money_in(
    money: Option<pb::Money>,
    field: &str,
    currency: Currency,
    currency_field: &str,
) -> Result<Money, Error> {
    let money = self::money(money, field)?;
    if money.currency() != currency {
        return Err(Error::invalid(
            format!("{field}.currency_code"),
            format!(
                "must be {currency}, the currency of {currency_field} (got {})",
                money.currency()
            ),
        ));
    }
    Ok(money)
}

/// An optional amount that must be in `currency` when given (see [`money_in`]).
pub fn optional_money_in(
    money: Option<pb::Money>,
    field: &str,
    currency: Currency,
    currency_field: &str,
) -> Result<Option<Money>, Error> {
    money
        .map(|m| money_in(Some(m), field, currency, currency_field))
        .transpose()
}

/// An amount on the wire: `minor` minor units of `currency`.
pub fn money_pb(minor: i64, currency: Currency) -> pb::Money {
    pb::Money {
        amount_minor: minor,
        currency_code: currency.to_string(),
    }
}

/// A required enum value: known and not `*_UNSPECIFIED` (which is value 0).
pub fn required_enum<E: TryFrom<i32>>(value: i32, field: &str) -> Result<E, Error> {
    if value == 0 {
        return Err(Error::invalid(field, "is required"));
    }
    E::try_from(value).map_err(|_| Error::invalid(field, format!("unknown value {value}")))
}

/// Entries per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// The most entries per page.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The page size of a request: 0 means the default, more than the maximum means
/// the maximum (Google AIP-158), a negative size is refused.
pub fn page_size(requested: i32) -> Result<u32, Error> {
    match u32::try_from(requested) {
        Err(_) => Err(Error::invalid(
            "page_size",
            format!("must not be negative (got {requested})"),
        )),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

/// An opaque page token carrying the last id of a page; `kind` keeps the tokens
/// of two listings apart.
pub fn page_token(kind: &str, last_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{last_id}"))
}

/// An opaque page token carrying the last text key of a page.
pub fn text_page_token(kind: &str, last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{last_key}"))
}

/// The last text key of the previous page; `None` for the first page.
pub fn parse_text_page_token(kind: &str, token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| Some(text.strip_prefix(kind)?.strip_prefix(':')?.to_owned()))
        .map(Some)
        .ok_or_else(|| Error::invalid("page_token", "is not a token this service issued"))
}

/// The last id of the previous page; `None` for the first page.
pub fn parse_page_token(kind: &str, token: &str) -> Result<Option<i64>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(kind)?.strip_prefix(':')?.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| Error::invalid("page_token", "is not a token this service issued"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_token_round_trips_and_garbage_is_refused() {
        assert_eq!(
            parse_page_token("entries.v1", &page_token("entries.v1", 42)).ok(),
            Some(Some(42))
        );
        assert_eq!(parse_page_token("entries.v1", "").ok(), Some(None));
        assert!(parse_page_token("entries.v1", "42").is_err());
        assert!(parse_page_token("entries.v1", &page_token("coupons.v1", 42)).is_err());
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn wire(amount_minor: i64, currency_code: &str) -> Option<pb::Money> {
        Some(pb::Money {
            amount_minor,
            currency_code: currency_code.to_owned(),
        })
    }

    fn bad_field(error: Error) -> String {
        match error {
            Error::InvalidArgument(violation) => violation.field,
            other => panic!("not a bad request: {other:?}"),
        }
    }

    #[test]
    fn money_round_trips_and_names_the_bad_part() {
        let amount = money(wire(1999, "USD"), "amount").unwrap();
        assert_eq!((amount.minor(), amount.currency()), (1999, usd()));
        assert_eq!(
            money_pb(amount.minor(), amount.currency()),
            wire(1999, "USD").unwrap()
        );
        assert_eq!(bad_field(money(None, "amount").unwrap_err()), "amount");
        assert_eq!(
            bad_field(money(wire(-1, "USD"), "amount").unwrap_err()),
            "amount.amount_minor"
        );
        for code in ["", "usd", "ABC", "XAU", "XXX"] {
            assert_eq!(
                bad_field(money(wire(1, code), "amount").unwrap_err()),
                "amount.currency_code",
                "{code:?}"
            );
        }
    }

    #[test]
    fn money_in_a_currency_refuses_another_one() {
        let field = "order.lines[2].unit_price";
        assert_eq!(
            money_in(wire(500, "USD"), field, usd(), "order.currency_code")
                .unwrap()
                .minor(),
            500
        );
        let error = money_in(wire(500, "EUR"), field, usd(), "order.currency_code").unwrap_err();
        assert_eq!(bad_field(error), "order.lines[2].unit_price.currency_code");
        assert_eq!(
            optional_money_in(None, "template.min_purchase", usd(), "template.currency_code").unwrap(),
            None
        );
        assert!(
            optional_money_in(
                wire(1, "JPY"),
                "template.min_purchase",
                usd(),
                "template.currency_code"
            )
            .is_err()
        );
        assert_eq!(optional_money(None, "limit").unwrap(), None);
    }

    #[test]
    fn instants_outside_1970_to_9999_are_refused() {
        let at = |seconds| to_instant(&prost_types::Timestamp { seconds, nanos: 0 });
        assert!(at(0).is_ok());
        assert!(at(MAX_SECONDS).is_ok());
        assert_eq!(at(MAX_SECONDS).unwrap().to_rfc3339(), "9999-12-31T23:59:59+00:00");
        for seconds in [
            -1,
            MAX_SECONDS + 1,
            -210_866_803_201,
            -62_135_596_800,
            i64::MIN,
            i64::MAX,
        ] {
            assert!(at(seconds).is_err(), "{seconds}");
        }
    }

    #[test]
    fn page_size_defaults_and_is_coerced() {
        assert_eq!(page_size(0).ok(), Some(20));
        assert_eq!(page_size(7).ok(), Some(7));
        assert_eq!(page_size(1000).ok(), Some(100));
        assert!(page_size(-1).is_err());
    }
}
