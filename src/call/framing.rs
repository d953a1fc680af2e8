//! Reads a unary request body and checks its gRPC framing: exactly one
//! length-prefixed message, not compressed (the service accepts no compression),
//! no larger than the limit.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use tonic::body::Body;

use crate::error::Error;

/// The gRPC message prefix: a compression flag byte and a 4-byte length.
const PREFIX: usize = 5;

/// The whole body, once it holds exactly one well-framed message of at most
/// `max_message` bytes.
pub async fn read_message(body: Body, max_message: usize) -> Result<Bytes, Error> {
    let too_large = || Error::ResourceExhausted {
        reason: "REQUEST_TOO_LARGE",
        message: format!("the request message is larger than the limit of {max_message} bytes"),
        retry_after: None,
    };
    let bytes = match Limited::new(body, max_message.saturating_add(PREFIX))
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        // The stream was reset or broke: the caller has gone.
        Err(_) => {
            return Err(Error::invalid(
                "body",
                "the request stream ended before its message",
            ));
        }
    };
    let Some((&flag, rest)) = bytes.split_first() else {
        return Err(Error::invalid("body", "the request carries no message"));
    };
    let Some((length, message)) = rest.split_first_chunk::<4>() else {
        return Err(Error::invalid("body", "the message prefix is cut short"));
    };
    match flag {
        0 => {}
        1 => return Err(Error::invalid("body", "compressed messages are not accepted")),
        _ => return Err(Error::invalid("body", format!("unknown compression flag {flag}"))),
    }
    let length = usize::try_from(u32::from_be_bytes(*length)).unwrap_or(usize::MAX);
    if length > max_message {
        return Err(too_large());
    }
    if message.len() != length {
        return Err(Error::invalid(
            "body",
            format!(
                "the body holds {} bytes after a prefix announcing {length}: one message expected",
                message.len()
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &'static [u8], max: usize) -> Result<Bytes, &'static str> {
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(bytes)));
        read_message(body, max).await.map_err(|e| e.reason())
    }

    #[tokio::test]
    async fn one_plain_message_passes() {
        assert!(read(&[0, 0, 0, 0, 2, 8, 1], 10).await.is_ok());
        assert!(read(&[0, 0, 0, 0, 0], 10).await.is_ok());
    }

    #[tokio::test]
    async fn broken_framing_is_bad_input() {
        for bytes in [
            &[][..],
            &[0, 0, 0],
            &[2, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0],
            &[0, 0, 0, 0, 3, 8, 1],
            &[0, 0, 0, 0, 1, 8, 1],
        ] {
            let body = Body::new(http_body_util::Full::new(Bytes::copy_from_slice(bytes)));
            let result = read_message(body, 10).await.map_err(|e| e.reason());
            assert_eq!(result.err(), Some("INVALID_ARGUMENT"), "{bytes:?}");
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_resource_exhausted() {
        assert_eq!(
            read(&[0, 0, 0, 0, 4, 1, 2, 3, 4], 3).await.err(),
            Some("REQUEST_TOO_LARGE")
        );
        assert_eq!(read(&[0, 0, 0, 1, 0], 3).await.err(), Some("REQUEST_TOO_LARGE"));
    }
}
