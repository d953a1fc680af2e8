//! The protobuf codec of the loyalty services: prost's, except that a request
//! body that is not a valid message (bad UTF-8 in a string, a truncated varint,
//! a wrong wire type) is the caller's mistake, `INVALID_ARGUMENT` with a
//! `BadRequest` naming the field, where tonic's default answers `INTERNAL`.
//!
//! `build.rs` points the generated code at [`Codec`].

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::error::Error;

/// Encodes with prost; decodes with prost and reports malformed bodies as bad input.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes one message of type `U`.
#[derive(Debug, Clone)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| malformed(&error).into())
    }
}

/// The `INVALID_ARGUMENT` of an undecodable message. prost reports where it
/// failed as `Message.field: ` steps before the description; they become the
/// field path (`lines.unit_price`), the description stays as it is.
fn malformed(error: &prost::DecodeError) -> Error {
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut path = Vec::new();
    let mut rest = text;
    while let Some((step, tail)) = rest.split_once(": ") {
        match step.rsplit_once('.') {
            Some((message, field))
                if !message.is_empty()
                    && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !field.is_empty() =>
            {
                path.push(field);
                rest = tail;
            }
            _ => break,
        }
    }
    // prost lists the innermost message first.
    path.reverse();
    let field = if path.is_empty() {
        "body".to_owned()
    } else {
        path.join(".")
    };
    Error::invalid(field, format!("is not a valid protobuf message: {rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_wire_type_names_its_field() {
        // Field 1 (a string) sent as a varint.
        let body: &[u8] = &[0x08, 0x01];
        let error = crate::pb::GetBalanceRequest::decode(body).unwrap_err();
        let Error::InvalidArgument(violation) = malformed(&error) else {
            panic!("not an invalid argument");
        };
        assert_eq!(violation.field, "account_id");
    }

    #[test]
    fn a_bad_string_names_its_field() {
        // Field 1 (a string) holding the byte 0xff: not UTF-8.
        let body: &[u8] = &[0x0a, 0x01, 0xff];
        let error = crate::pb::GetBalanceRequest::decode(body).unwrap_err();
        let Error::InvalidArgument(violation) = malformed(&error) else {
            panic!("not an invalid argument");
        };
        assert_eq!(violation.field, "account_id");
        assert!(
            violation.description.contains("UTF-8"),
            "{}",
            violation.description
        );
    }

    #[test]
    fn a_truncated_key_is_bad_input_of_the_body() {
        // A key varint whose continuation bit promises a byte that never comes.
        let body: &[u8] = &[0xff];
        let error = crate::pb::GetBalanceRequest::decode(body).unwrap_err();
        let Error::InvalidArgument(violation) = malformed(&error) else {
            panic!("not an invalid argument");
        };
        assert_eq!(violation.field, "body");
    }
}
