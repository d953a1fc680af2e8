//! Calls with raw message bytes (a pass-through codec) or a raw HTTP/2 body.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use tonic::Code;
use tonic::transport::Channel;
use tower::ServiceExt;

use super::CALL_TIMEOUT;
use crate::helpers::RawCodec;

/// How a call ended.
pub(super) enum Answer {
    /// The server's answer.
    Status(Code, String),
    /// The client got no answer: the connection failed (the server reset it, or
    /// answered with more than an HTTP/2 client accepts).
    Transport(String),
    /// No answer within [`CALL_TIMEOUT`].
    Timeout,
}

impl From<tonic::Status> for Answer {
    fn from(status: tonic::Status) -> Self {
        // Only the client's own errors carry a source; the server's come from trailers.
        if std::error::Error::source(&status).is_some() {
            Answer::Transport(format!("{:?}: {}", status.code(), status.message()))
        } else {
            Answer::Status(status.code(), status.message().to_owned())
        }
    }
}

/// Sends `body` as the request message of `path`, as is.
/// A streaming method's answer is its first message (or its status): a sane
/// request opens a stream that lasts.
pub(super) async fn call(channel: Channel, path: &str, body: Bytes, streaming: bool) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    let path = PathAndQuery::try_from(path).expect("a method path");
    let call = async {
        if let Err(e) = grpc.ready().await {
            return Answer::Transport(format!("the channel is not ready: {e}"));
        }
        if streaming {
            let mut stream = match grpc
                .server_streaming(tonic::Request::new(body), path, RawCodec)
                .await
            {
                Ok(response) => response.into_inner(),
                Err(status) => return status.into(),
            };
            return match stream.message().await {
                Ok(_) => Answer::Status(Code::Ok, String::new()),
                Err(status) => status.into(),
            };
        }
        match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
            Ok(_) => Answer::Status(Code::Ok, String::new()),
            Err(status) => status.into(),
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or(Answer::Timeout)
}

/// Sends `body` as the whole HTTP/2 request body, without gRPC framing.
pub(super) async fn call_raw(channel: Channel, path: &str, body: Bytes) -> Answer {
    let request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(body)))
        .expect("a valid request");
    let call = async {
        let response = match channel.oneshot(request).await {
            Ok(response) => response,
            Err(e) => return Answer::Transport(e.to_string()),
        };
        let status = match tonic::Status::from_header_map(response.headers()) {
            Some(status) => status,
            None => match response.into_body().collect().await {
                Ok(body) => body
                    .trailers()
                    .and_then(tonic::Status::from_header_map)
                    .unwrap_or_else(|| tonic::Status::unknown("no grpc-status in the response")),
                Err(status) => return status.into(),
            },
        };
        Answer::Status(status.code(), status.message().to_owned())
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or(Answer::Timeout)
}
