//! What the MQTT scenarios share: the broker they target and the MQTT 3.1.1 packet I/O (the
//! `mqttbytes` codec, the same one Tern's MQTT listener uses); and the non-blocking socket reads
//! and writes of every poll loop in the generator (`p2p` uses them too).

use std::net::SocketAddr;

use anyhow::bail;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The broker under test and how to log in to it.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// The broker's MQTT address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) addr: SocketAddr,
    /// Broker name for the result line (tern, mosquitto, rumqttd).
    #[arg(long, default_value = "tern")]
    pub(crate) broker: String,
    /// Tern: token command, run as `CMD <user> <device>` (password = token).
    #[arg(long)]
    pub(crate) provision_cmd: Option<String>,
    /// Tern: mint tokens with the secret in the broker's data directory. Without this or
    /// --provision-cmd, clients connect anonymously.
    #[arg(long)]
    pub(crate) data_dir: Option<std::path::PathBuf>,
    /// The broker's process id, for its CPU time and memory.
    #[arg(long)]
    pub(crate) broker_pid: Option<u32>,
}

/// Appends a packet's bytes.
pub(crate) fn encode(p: v4::Packet, out: &mut BytesMut) -> anyhow::Result<()> {
    p.write(out, usize::MAX).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Reads from `rd` into `input` until a whole packet is there.
pub(crate) async fn next_packet<R: AsyncRead + Unpin>(rd: &mut R, input: &mut BytesMut) -> anyhow::Result<v4::Packet> {
    loop {
        if let Some(p) = take_packet(input)? {
            return Ok(p);
        }
        if rd.read_buf(input).await? == 0 {
            bail!("connection closed");
        }
    }
}

/// Reads what a readable non-blocking socket holds into `input`, with as few reads as possible:
/// a read shorter than `scratch` emptied the socket, so the next one would only say WouldBlock
/// (an edge-triggered poller reports the next arrival anyway). Returns whether the peer closed.
pub(crate) fn read_available(
    socket: &mut impl std::io::Read,
    input: &mut BytesMut,
    scratch: &mut [u8],
) -> std::io::Result<bool> {
    loop {
        match socket.read(scratch) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                input.extend_from_slice(scratch.get(..n).unwrap_or_default());
                if n < scratch.len() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes what a non-blocking socket takes now; the rest of `out` waits for its next writable
/// event.
pub(crate) fn write_available(socket: &mut impl std::io::Write, out: &mut BytesMut) -> std::io::Result<()> {
    while !out.is_empty() {
        match socket.write(out) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let _ = out.split_to(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Takes the next whole packet out of `input`, if there is one.
pub(crate) fn take_packet(input: &mut BytesMut) -> anyhow::Result<Option<v4::Packet>> {
    match v4::Packet::read(input, 1 << 20) {
        Ok(p) => Ok(Some(p)),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => bail!("{e}"),
    }
}
