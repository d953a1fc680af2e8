//! Identifiers chosen by the calling services: accounts, orders, products, ...
//!
//! All share one format, 1 to 64 characters of `[A-Za-z0-9._:-]`, so they are safe
//! in logs, in idempotency keys and in a `grpcurl` command line.

use std::fmt;

/// The longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

/// Checks the shared identifier format; the error describes the problem.
fn validate(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "must contain only letters, digits, '.', '_', ':' and '-' (found {bad:?})"
        ));
    }
    Ok(())
}

macro_rules! external_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn parse(value: &str) -> Result<Self, String> {
                validate(value)?;
                Ok(Self(value.to_owned()))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

external_id!(
    /// A member's account, chosen by the user service.
    AccountId
);
external_id!(
    /// An order of the order service.
    OrderId
);
external_id!(
    /// A product of the catalogue.
    ProductId
);
external_id!(
    /// A product category of the catalogue.
    CategoryId
);
external_id!(
    /// A published product review.
    ReviewId
);
external_id!(
    /// A community post.
    PostId
);
external_id!(
    /// An admin campaign granting bonus points.
    CampaignId
);

external_id!(
    /// A seller of the marketplace.
    SellerId
);
external_id!(
    /// A line of an order at checkout.
    LineId
);
external_id!(
    /// A coupon template, chosen by the admin.
    TemplateId
);
external_id!(
    /// A caller's idempotency key for a coupon issuance.
    IssuanceId
);
external_id!(
    /// A refund of an order, chosen by the order service (its idempotency key).
    RefundId
);
external_id!(
    /// A caller's idempotency key for a batch of single-use codes (the
    /// `request_id` of `GenerateSingleUseCodes`).
    BatchRequestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_accepts_the_documented_alphabet_up_to_64_characters() {
        assert!(AccountId::parse("acct-1.A_b:9").is_ok());
        assert!(AccountId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn an_id_rejects_empty_oversized_and_foreign_characters() {
        assert!(AccountId::parse("").is_err());
        assert!(AccountId::parse(&"a".repeat(65)).is_err());
        assert!(AccountId::parse("a b").is_err());
        assert!(AccountId::parse("a/b").is_err());
        assert!(AccountId::parse("é").is_err());
    }
}
