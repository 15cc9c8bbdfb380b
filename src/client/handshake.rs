//! Host side of the handshake (see `voidbox_guest_agent::protocol::auth`).

use super::ClientError;
use std::time::Duration;
use voidbox_guest_agent::protocol::auth::{fresh_nonce, host_proof, verify_guest_proof, Secret};
use voidbox_guest_agent::protocol::{
    Frame, FrameKind, Message, MAX_HANDSHAKE_BODY, PROTOCOL_VERSION,
};
use voidbox_guest_agent::service::Transport;

fn read_msg(t: &mut dyn Transport, timeout: Duration) -> Result<Message, ClientError> {
    let f = Frame::read_from(t, MAX_HANDSHAKE_BODY).map_err(|e| match e {
        voidbox_guest_agent::protocol::FrameError::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            ClientError::Timeout {
                what: "the guest agent's handshake".into(),
                after: timeout,
            }
        }
        e => ClientError::Auth(format!("reading the handshake: {e}")),
    })?;
    if f.stream != 0 || f.kind != FrameKind::Message {
        return Err(ClientError::Protocol(
            "handshake frame on the wrong stream".into(),
        ));
    }
    Message::from_bytes(&f.payload)
        .map_err(|e| ClientError::Protocol(format!("handshake message: {e}")))
}

/// Runs the handshake with a read timeout on the transport.
pub(super) fn run(
    t: &mut dyn Transport,
    secret: &Secret,
    timeout: Duration,
) -> Result<(), ClientError> {
    t.set_read_timeout(Some(timeout))
        .map_err(|e| ClientError::io("setting a read timeout", e))?;
    let Message::Hello { version, nonce } = read_msg(t, timeout)? else {
        return Err(ClientError::Protocol(
            "the guest did not start with hello".into(),
        ));
    };
    if version != PROTOCOL_VERSION {
        return Err(ClientError::Auth(format!(
            "guest speaks protocol {version}, this host {PROTOCOL_VERSION}"
        )));
    }
    let client_nonce = fresh_nonce();
    let mac = host_proof(secret, version, &nonce, &client_nonce)
        .map_err(|e| ClientError::Auth(e.to_string()))?;
    let auth = Message::Auth {
        version,
        client_nonce: client_nonce.clone(),
        mac,
    };
    Frame::data(0, FrameKind::Message, auth.to_bytes())
        .write_to(t)
        .map_err(|e| ClientError::io("sending the handshake", e))?;
    match read_msg(t, timeout)? {
        Message::AuthOk { mac } => verify_guest_proof(secret, version, &nonce, &client_nonce, &mac)
            .map_err(|e| ClientError::Auth(format!("the guest's proof: {e}")))?,
        Message::Error(e) => return Err(ClientError::Auth(e.message)),
        m => {
            return Err(ClientError::Protocol(format!(
                "expected auth_ok, got {m:?}"
            )))
        }
    }
    t.set_read_timeout(None)
        .map_err(|e| ClientError::io("clearing the read timeout", e))?;
    Ok(())
}
