//! Conversions between wire types and domain types shared by every service.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

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
    let currency = Currency::parse(&money.currency_code).field_with(|| format!("{field}.currency_code"))?;
    Money::new(money.amount_minor, currency).field_with(|| format!("{field}.amount_minor"))
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

/// Where a page ends, as a page token carries it: the sort key of the page's
/// last item (an id, a text key, an instant).
pub trait PageCursor: Sized {
    /// The cursor as text.
    fn encode(&self) -> String;
    /// The cursor back from its text; `None` when it is not one.
    fn decode(text: &str) -> Option<Self>;
}

impl PageCursor for i64 {
    fn encode(&self) -> String {
        self.to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl PageCursor for String {
    fn encode(&self) -> String {
        self.clone()
    }

    fn decode(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
}

/// An instant to the microsecond, PostgreSQL's precision, within the supported
/// range ([`MIN_SECONDS`] to [`MAX_SECONDS`]): a forged one beyond it would
/// reach PostgreSQL as a value it cannot store.
impl PageCursor for DateTime<Utc> {
    fn encode(&self) -> String {
        self.timestamp_micros().to_string()
    }

    fn decode(text: &str) -> Option<Self> {
        DateTime::from_timestamp_micros(text.parse().ok()?)
            .filter(|instant| (MIN_SECONDS..=MAX_SECONDS).contains(&instant.timestamp()))
    }
}

/// Bytes of the query digest a page token carries (96 bits).
const QUERY_DIGEST_BYTES: usize = 12;

/// The longest page token accepted. The tokens issued carry a kind, the digest
/// and a cursor of at most an id's 64 characters: well under this. A longer
/// one is refused before it is decoded.
const MAX_PAGE_TOKEN_CHARS: usize = 256;

/// A paged request's query: the listing (`kind`) and the request's account and
/// filters, everything but the page size and the token. Its page tokens carry a
/// digest of it next to the cursor, so a token used with another listing,
/// another account or other filters is refused (`INVALID_ARGUMENT` on
/// `page_token`) instead of silently paging through another result.
///
/// A token is `base64url("{kind}:{digest}:{cursor}")`: opaque to callers, and
/// every listing builds and checks its tokens with this one type.
#[derive(Clone)]
pub struct PageQuery {
    kind: &'static str,
    /// The names of the bound parts, for the error message.
    parts: Vec<&'static str>,
    digest: Sha256,
}

impl PageQuery {
    /// The query of listing `kind` (`"coupons.v1"`), before its parts.
    pub fn new(kind: &'static str) -> Self {
        let mut query = Self {
            kind,
            parts: Vec::new(),
            digest: Sha256::new(),
        };
        query.update(kind.as_bytes());
        query
    }

    fn update(&mut self, bytes: &[u8]) {
        // Length-prefixed, so no two sequences of parts hash alike.
        self.digest.update((bytes.len() as u64).to_le_bytes());
        self.digest.update(bytes);
    }

    /// Binds a part of the query: the request field `name` and its value, as
    /// parsed (absent values give `""`). Parts are bound in a fixed order.
    pub fn with(mut self, name: &'static str, value: impl fmt::Display) -> Self {
        self.parts.push(name);
        self.update(name.as_bytes());
        self.update(value.to_string().as_bytes());
        self
    }

    /// Binds a set-valued filter (`statuses`, `sources`): its order and its
    /// repeats do not matter.
    pub fn with_set<T: AsRef<str>>(self, name: &'static str, values: impl IntoIterator<Item = T>) -> Self {
        let set: BTreeSet<String> = values.into_iter().map(|v| v.as_ref().to_owned()).collect();
        let joined = set.into_iter().collect::<Vec<_>>().join(",");
        self.with(name, joined)
    }

    /// Binds an optional instant filter (`start_time`), to the nanosecond.
    pub fn with_instant(self, name: &'static str, instant: Option<DateTime<Utc>>) -> Self {
        let value = instant.map_or_else(String::new, |i| i.to_rfc3339_opts(SecondsFormat::Nanos, true));
        self.with(name, value)
    }

    fn digest(&self) -> String {
        let digest = self.digest.clone().finalize();
        URL_SAFE_NO_PAD.encode(&digest[..QUERY_DIGEST_BYTES])
    }

    /// The token of the page after the one ending at `cursor`.
    pub fn token(&self, cursor: &impl PageCursor) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}:{}", self.kind, self.digest(), cursor.encode()))
    }

    /// The cursor a request's `page_token` carries; `None` for the first page
    /// (an empty token). A token of another listing or another query, or one
    /// this service did not issue, is `INVALID_ARGUMENT` on `page_token`.
    pub fn parse<C: PageCursor>(&self, token: &str) -> Result<Option<C>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let not_issued = || Error::invalid("page_token", "is not a page token this service issued");
        if token.len() > MAX_PAGE_TOKEN_CHARS {
            return Err(not_issued());
        }
        let text = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(not_issued)?;
        let mut fields = text.splitn(3, ':');
        let (Some(kind), Some(digest), Some(cursor)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(not_issued());
        };
        if kind != self.kind {
            return Err(Error::invalid(
                "page_token",
                "is a page token of another listing: leave it empty to start this one",
            ));
        }
        if digest != self.digest() {
            if self.parts.is_empty() {
                return Err(not_issued());
            }
            return Err(Error::invalid(
                "page_token",
                format!(
                    "was issued for another {}: a page token only continues the listing of the \
                     request that returned it, with the same {} (page_size may change); leave it \
                     empty to start over",
                    self.parts.join(" or "),
                    self.parts.join(" and "),
                ),
            ));
        }
        C::decode(cursor).map(Some).ok_or_else(not_issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_and_description(error: Error) -> (String, String) {
        match error {
            Error::InvalidArgument(violation) => (violation.field, violation.description),
            other => panic!("not a bad request: {other:?}"),
        }
    }

    fn coupons_of(account: &str, statuses: &[&str]) -> PageQuery {
        PageQuery::new("coupons.v1")
            .with("account_id", account)
            .with_set("statuses", statuses)
    }

    #[test]
    fn a_page_token_round_trips_its_cursor() {
        let query = coupons_of("alice", &["valid"]);
        assert_eq!(query.parse::<i64>(&query.token(&42)).ok(), Some(Some(42)));
        assert_eq!(query.parse::<i64>("").ok(), Some(None));
        let templates = PageQuery::new("templates.v1");
        let key = "a:b.c".to_owned();
        assert_eq!(
            templates.parse::<String>(&templates.token(&key)).ok(),
            Some(Some(key))
        );
        let instant: DateTime<Utc> = "2026-11-08T00:00:00.123456Z".parse().unwrap();
        let levels = PageQuery::new("levels.v1").with("account_id", "alice");
        assert_eq!(levels.parse(&levels.token(&instant)).ok(), Some(Some(instant)));
    }

    #[test]
    fn garbage_is_not_a_page_token() {
        let query = coupons_of("alice", &[]);
        let forged = URL_SAFE_NO_PAD.encode(format!("coupons.v1:{}:x", query.digest()));
        for garbage in [
            "42",
            "not-a-token",
            "%%%",
            &URL_SAFE_NO_PAD.encode("coupons.v1:42"),
            &forged,
        ] {
            let (field, description) = field_and_description(query.parse::<i64>(garbage).unwrap_err());
            assert_eq!(field, "page_token", "{garbage:?}");
            assert!(
                description.contains("not a page token"),
                "{garbage:?}: {description}"
            );
        }
    }

    #[test]
    fn an_oversized_token_or_an_instant_out_of_range_is_not_a_page_token() {
        let templates = PageQuery::new("templates.v1");
        let long_key = "t".repeat(MAX_PAGE_TOKEN_CHARS);
        let levels = PageQuery::new("levels.v1").with("account_id", "alice");
        let forged_instant =
            |micros: i64| URL_SAFE_NO_PAD.encode(format!("levels.v1:{}:{micros}", levels.digest()));
        let (field, description) = field_and_description(
            templates
                .parse::<String>(&templates.token(&long_key))
                .unwrap_err(),
        );
        assert_eq!(field, "page_token");
        assert!(description.contains("not a page token"), "{description}");
        for micros in [-1, (MAX_SECONDS + 1) * 1_000_000, -8_000_000_000_000_000] {
            let (field, description) = field_and_description(
                levels
                    .parse::<DateTime<Utc>>(&forged_instant(micros))
                    .unwrap_err(),
            );
            assert_eq!(field, "page_token", "{micros}");
            assert!(
                description.contains("not a page token"),
                "{micros}: {description}"
            );
        }
        assert!(
            levels
                .parse::<DateTime<Utc>>(&forged_instant(MAX_SECONDS * 1_000_000))
                .is_ok()
        );
        // The longest id still makes a token.
        let longest_id = "t".repeat(crate::domain::ids::MAX_ID_LEN);
        assert_eq!(
            templates.parse::<String>(&templates.token(&longest_id)).ok(),
            Some(Some(longest_id))
        );
    }

    #[test]
    fn a_page_token_is_bound_to_its_listing_account_and_filters() {
        let token = coupons_of("alice", &["valid", "used"]).token(&42);
        assert_eq!(
            coupons_of("alice", &["used", "valid", "used"])
                .parse::<i64>(&token)
                .ok(),
            Some(Some(42)),
            "a set filter's order and repeats do not matter"
        );
        for other in [
            coupons_of("bob", &["valid", "used"]),
            coupons_of("alice", &["valid"]),
            coupons_of("alice", &[]),
        ] {
            let (field, description) = field_and_description(other.parse::<i64>(&token).unwrap_err());
            assert_eq!(field, "page_token");
            assert!(description.contains("account_id or statuses"), "{description}");
        }
        let (_, description) = field_and_description(
            PageQuery::new("entries.v1")
                .with("account_id", "alice")
                .parse::<i64>(&token)
                .unwrap_err(),
        );
        assert!(description.contains("another listing"), "{description}");
        // Parts are told apart: ("ab", "") is not ("a", "b").
        let split = |a: &str, b: &str| {
            PageQuery::new("x")
                .with("account_id", a)
                .with("filter", b)
                .digest()
        };
        assert_ne!(split("ab", ""), split("a", "b"));
        let at = |instant: &str| {
            PageQuery::new("x")
                .with_instant("start_time", instant.parse().ok())
                .digest()
        };
        assert_ne!(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:00.000000001Z"));
        assert_ne!(at("2026-01-01T00:00:00Z"), at(""));
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
