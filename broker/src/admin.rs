//! The admin JSON API on the operations listener, for operators and provisioning scripts:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/admin/tokens` | `{"user","device","ttl_secs"?}` | `{"token","expires_at"}` |
//! | `POST /v1/admin/groups` | `{"group_id","creator","members"}` | the group |
//! | `GET /v1/admin/groups/{id}` | | `{"group_id","conversation_id","members","read_fanout"}` |
//! | `POST /v1/admin/groups/{id}/members` | `{"add"?,"remove"?}` | `{"group_id","conversation_id","member_count","read_fanout"}` |
//! | `POST /v1/admin/rooms` | `{"room_id","members"}` | `{"room_id","conversation_id"}` |
//! | `GET /v1/admin/users/{user}` | | `{"user","online_devices","groups","unread_total"}` |
//!
//! Every call needs `Authorization: Bearer <admin key>`; `tern token admin` prints the key,
//! which is derived from the data directory's secret.

use serde::Deserialize;
use serde_json::{json, Value};
use tern_codec::ids::check_identifier;

use crate::server::Shared;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// An HTTP status and a JSON body.
#[derive(Debug)]
pub struct Reply {
    /// Status line text, e.g. `200 OK`.
    pub status: &'static str,
    /// JSON body.
    pub body: String,
}

fn reply(status: &'static str, body: Value) -> Reply {
    Reply { status, body: format!("{body}\n") }
}

fn error(status: &'static str, message: &str) -> Reply {
    reply(status, json!({ "error": message }))
}

/// The admin key for a broker secret: hex HMAC-SHA256 of a fixed label, so it can be
/// recomputed from the secret but not guessed from tokens.
pub fn admin_key(secret: &[u8; 32]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    hex::encode(ring::hmac::sign(&key, b"tern-admin-v1").as_ref())
}

fn authorised(shared: &Shared, authorization: Option<&str>) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else { return false };
    // Compare MACs rather than strings, so the comparison takes constant time.
    let Ok(given) = hex::decode(given.trim()) else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &shared.secret);
    ring::hmac::verify(&key, b"tern-admin-v1", &given).is_ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    device: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// Members to add and to remove (in that order), for groups larger than one request body:
/// the answer carries the member count, not the list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersRequest {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRequest {
    group_id: String,
    creator: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomRequest {
    room_id: String,
    #[serde(default)]
    members: Vec<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| error("400 Bad Request", &format!("invalid JSON body: {e}")))
}

fn identifiers<'a>(ids: impl IntoIterator<Item = &'a String>) -> Result<(), Reply> {
    for id in ids {
        check_identifier("id", id).map_err(|e| error("400 Bad Request", &format!("{id:?}: {e}")))?;
    }
    Ok(())
}

/// Handles one admin request.
pub(crate) fn handle(shared: &Shared, method: &str, path: &str, authorization: Option<&str>, body: &[u8]) -> Reply {
    if !authorised(shared, authorization) {
        return error("401 Unauthorized", "missing or wrong admin key (see `tern token admin`)");
    }
    let result = match (method, path.split('/').collect::<Vec<_>>().as_slice()) {
        ("POST", ["tokens"]) => tokens(shared, body),
        ("POST", ["groups"]) => create_group(shared, body),
        ("GET", ["groups", id]) => group(shared, id),
        ("POST", ["groups", id, "members"]) => change_members(shared, id, body),
        ("POST", ["rooms"]) => create_room(shared, body),
        ("GET", ["users", user]) => user_info(shared, user),
        _ => Err(error("404 Not Found", "no such admin endpoint")),
    };
    result.unwrap_or_else(|e| e)
}

fn tokens(shared: &Shared, body: &[u8]) -> Result<Reply, Reply> {
    let r: TokenRequest = parse(body)?;
    let expires_at = crate::unix_now() + r.ttl_secs.unwrap_or(30 * 24 * 3600);
    let token = shared.tokens.issue(&r.user, &r.device, expires_at).map_err(|e| error("400 Bad Request", &e))?;
    Ok(reply("200 OK", json!({ "token": token, "expires_at": expires_at })))
}

fn unavailable<E: std::fmt::Display>(e: E) -> Reply {
    error("503 Service Unavailable", &format!("store: {e}"))
}

fn create_group(shared: &Shared, body: &[u8]) -> Result<Reply, Reply> {
    let r: GroupRequest = parse(body)?;
    identifiers(std::iter::once(&r.group_id).chain(std::iter::once(&r.creator)).chain(&r.members))?;
    match shared.store.create_group(&r.group_id, &r.creator, &r.members).map_err(unavailable)? {
        Ok(_) => group(shared, &r.group_id),
        Err(reason) => Err(error("409 Conflict", reason.name())),
    }
}

fn group(shared: &Shared, id: &str) -> Result<Reply, Reply> {
    let conv = shared
        .store
        .group_conversation(id)
        .map_err(unavailable)?
        .ok_or_else(|| error("404 Not Found", "no such group"))?;
    let members = shared.store.members(conv).map_err(unavailable)?;
    let read_fanout = members.len() > shared.options.write_fanout_threshold;
    Ok(reply(
        "200 OK",
        json!({ "group_id": id, "conversation_id": conv, "members": members, "read_fanout": read_fanout }),
    ))
}

fn change_members(shared: &Shared, id: &str, body: &[u8]) -> Result<Reply, Reply> {
    let r: MembersRequest = parse(body)?;
    identifiers(std::iter::once(&id.to_owned()).chain(&r.add).chain(&r.remove))?;
    let mut conv = None;
    for (members, add) in [(&r.add, true), (&r.remove, false)] {
        if members.is_empty() {
            continue;
        }
        match shared.store.change_members(id, None, members, add).map_err(unavailable)? {
            Ok(c) => {
                shared.members.changed(c);
                conv = Some(c);
            }
            Err(reason) => return Err(error("404 Not Found", reason.name())),
        }
    }
    let conv = match conv {
        Some(c) => c,
        None => shared
            .store
            .group_conversation(id)
            .map_err(unavailable)?
            .ok_or_else(|| error("404 Not Found", "no such group"))?,
    };
    let member_count = shared.store.members(conv).map_err(unavailable)?.len();
    let read_fanout = member_count > shared.options.write_fanout_threshold;
    Ok(reply(
        "200 OK",
        json!({ "group_id": id, "conversation_id": conv, "member_count": member_count, "read_fanout": read_fanout }),
    ))
}

fn create_room(shared: &Shared, body: &[u8]) -> Result<Reply, Reply> {
    let r: RoomRequest = parse(body)?;
    identifiers(std::iter::once(&r.room_id).chain(&r.members))?;
    let conv =
        shared.store.room(&r.room_id, true).map_err(unavailable)?.ok_or_else(|| unavailable("room not created"))?;
    for m in &r.members {
        shared.store.join(conv, m).map_err(unavailable)?;
    }
    Ok(reply("200 OK", json!({ "room_id": r.room_id, "conversation_id": conv })))
}

fn user_info(shared: &Shared, user: &str) -> Result<Reply, Reply> {
    identifiers([&user.to_owned()])?;
    let online: Vec<String> = shared.router().live.get(user).map(|d| d.keys().cloned().collect()).unwrap_or_default();
    let groups = shared.store.groups_of(user).map_err(unavailable)?;
    let (_, unread_total) = shared.store.unread(user, &[]).map_err(unavailable)?;
    Ok(reply(
        "200 OK",
        json!({ "user": user, "online_devices": online, "groups": groups, "unread_total": unread_total }),
    ))
}
