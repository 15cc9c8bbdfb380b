//! Guest side of the handshake (see [`crate::protocol::auth`]).

use super::{ServiceConfig, ServiceError, Transport};
use crate::protocol::auth::{fresh_nonce, guest_proof, verify_host_proof};
use crate::protocol::{Frame, FrameKind, Message, MAX_HANDSHAKE_BODY, PROTOCOL_VERSION};

fn send(t: &mut dyn Transport, m: &Message) -> Result<(), ServiceError> {
    Frame::data(0, FrameKind::Message, m.to_bytes()).write_to(t)?;
    Ok(())
}

/// Runs the handshake; on any failure logs it, tells the peer, and returns an error
/// (the caller then drops the connection). Nothing else is read before this succeeds.
pub fn accept(config: &ServiceConfig, t: &mut dyn Transport) -> Result<(), ServiceError> {
    let nonce = fresh_nonce();
    send(
        t,
        &Message::Hello {
            version: PROTOCOL_VERSION,
            nonce: nonce.clone(),
        },
    )?;
    t.set_read_timeout(Some(config.handshake_timeout))?;
    let result = read_auth(config, t, &nonce);
    t.set_read_timeout(None)?;
    match result {
        Ok(mac) => send(t, &Message::AuthOk { mac }),
        Err(e) => {
            tracing::warn!("rejecting connection: {e}");
            let _ = send(
                t,
                &Message::error(crate::protocol::ErrorCode::Protocol, e.to_string()),
            );
            t.shutdown();
            Err(e)
        }
    }
}

fn read_auth(
    config: &ServiceConfig,
    t: &mut dyn Transport,
    nonce: &str,
) -> Result<String, ServiceError> {
    let bad = |s: String| ServiceError::Handshake(s);
    let frame = Frame::read_from(t, MAX_HANDSHAKE_BODY)
        .map_err(|e| bad(format!("reading auth frame: {e}")))?;
    if frame.kind != FrameKind::Message {
        return Err(bad(format!(
            "{:?} data on stream {} before authentication",
            frame.kind, frame.stream
        )));
    }
    let msg = Message::from_bytes(&frame.payload)
        .map_err(|e| bad(format!("auth frame is not a message: {e}")))?;
    let (
        0,
        Message::Auth {
            version,
            client_nonce,
            mac,
        },
    ) = (frame.stream, msg)
    else {
        return Err(bad(format!(
            "request on stream {} before authentication",
            frame.stream
        )));
    };
    if version != PROTOCOL_VERSION {
        return Err(bad(format!(
            "protocol version {version} not supported (guest speaks {PROTOCOL_VERSION})"
        )));
    }
    verify_host_proof(&config.secret, version, nonce, &client_nonce, &mac)
        .map_err(|e| bad(e.to_string()))?;
    guest_proof(&config.secret, version, nonce, &client_nonce).map_err(|e| bad(e.to_string()))
}
