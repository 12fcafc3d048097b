//! The Lua scripts of the per-user index, each one atomic step on one user's slot (the
//! parent module's docs say what each is for and why that makes revocation race-free),
//! and what they read and return: the device facts as stored, and taken members.

use redis::Value;

use super::super::unexpected;
use crate::session::SessionId;
use crate::store::StoreError;
use crate::store::seal::{KEY_HASH_TEXT_LEN, KeyHash};
use crate::store::users::NewDevice;

/// `KEYS` = members, facts. `ARGV` = handle, facts, now, prune cutoff, expiry seconds,
/// max_per_user, handle replaced ("" = none). 0 when the replaced handle is no member;
/// else the evicted members as (handle, score, facts) triples.
pub(super) const JOIN_SCRIPT: &str = r"
local z, d, h = KEYS[1], KEYS[2], ARGV[1]
if ARGV[7] ~= '' and not redis.call('ZSCORE', z, ARGV[7]) then
  return 0
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. ARGV[4])) do
  redis.call('ZREM', z, m)
  redis.call('HDEL', d, m)
end
redis.call('ZADD', z, ARGV[3], h)
redis.call('HSET', d, h, ARGV[2])
redis.call('EXPIRE', z, ARGV[5])
redis.call('EXPIRE', d, ARGV[5])
local out = {}
local max, n = tonumber(ARGV[6]), redis.call('ZCARD', z)
if ARGV[7] ~= '' then
  n = n - 1
end
if max > 0 and n > max then
  local all = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  local c = {}
  for i = 1, #all, 2 do
    if all[i] ~= h and all[i] ~= ARGV[7] then
      local f = redis.call('HGET', d, all[i]) or ''
      c[#c + 1] = {all[i], tonumber(all[i + 1]), tonumber(string.match(f, '^(%d+)|') or '0'), f, all[i + 1]}
    end
  end
  table.sort(c, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    if a[3] ~= b[3] then return a[3] < b[3] end
    return a[1] < b[1]
  end)
  for i = 1, n - max do
    redis.call('ZREM', z, c[i][1])
    redis.call('HDEL', d, c[i][1])
    out[#out + 1] = c[i][1]
    out[#out + 1] = c[i][5]
    out[#out + 1] = c[i][4]
  end
end
return out
";

/// `KEYS` = members, facts. `ARGV` = handle. Its (score, facts), removed; nil when it is
/// no member.
pub(super) const TAKE_SCRIPT: &str = r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then
  return false
end
local f = redis.call('HGET', KEYS[2], ARGV[1]) or ''
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return {s, f}
";

/// `KEYS` = members, facts. `ARGV` = handle kept ("" = none). Every other member as
/// (handle, score, facts) triples, removed.
pub(super) const REVOKE_SCRIPT: &str = r"
local out = {}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local m = all[i]
  if m ~= ARGV[1] then
    out[#out + 1] = m
    out[#out + 1] = all[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[2], m) or ''
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[2], m)
  end
end
return out
";

/// `KEYS` = members, facts. `ARGV` = handle, now, expiry seconds. 1 when it is a member
/// (its score raised to now, both keys' expiry reset), else 0.
pub(super) const REFRESH_SCRIPT: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
";

/// `KEYS` = members, facts. `ARGV` = expiry seconds, then (handle, score, facts) triples:
/// put back unless present.
pub(super) const RESTORE_SCRIPT: &str = r"
for i = 2, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'NX', ARGV[i + 1], ARGV[i])
  redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
";

/// `KEYS` = a handle key. `ARGV` = user. Deletes it while it names that user.
pub(super) const DROP_HANDLE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A member taken out of an index by a script.
pub(super) struct Taken {
    pub(super) handle: String,
    pub(super) score: String,
    pub(super) facts: String,
}

/// Device facts as stored: `created|key hash|ip|user agent`.
pub(super) struct Facts<'a> {
    pub(super) created: u64,
    pub(super) key_hash: &'a str,
    pub(super) ip: &'a str,
    pub(super) user_agent: &'a str,
}

impl<'a> Facts<'a> {
    pub(super) fn encode(device: &NewDevice, id: &SessionId) -> String {
        format!(
            "{}|{}|{}|{}",
            device.created,
            KeyHash::of(id),
            device.ip,
            device.user_agent
        )
    }

    pub(super) fn parse(text: &'a str) -> Option<Self> {
        let mut parts = text.splitn(4, '|');
        let created = parts.next()?.parse().ok()?;
        let key_hash = parts.next()?;
        let ip = parts.next()?;
        let user_agent = parts.next()?;
        let is_key_hash = key_hash.len() == KEY_HASH_TEXT_LEN
            && key_hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        is_key_hash.then_some(Self {
            created,
            key_hash,
            ip,
            user_agent,
        })
    }
}

/// The text of a reply item (a bulk or simple string).
pub(super) fn text(v: Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b)
            .map_err(|_| StoreError::Unavailable("a user index entry is not UTF-8".into())),
        Value::SimpleString(s) => Ok(s),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(unexpected("a user index script", &other)),
    }
}

/// (handle, score, facts) triples of a script's reply.
pub(super) fn taken(reply: Value) -> Result<Vec<Taken>, StoreError> {
    let Value::Array(items) = reply else {
        return Err(unexpected("a user index script", &reply));
    };
    let mut items = items.into_iter();
    let mut out = Vec::with_capacity(items.len() / 3);
    while let (Some(handle), Some(score), Some(facts)) = (items.next(), items.next(), items.next())
    {
        out.push(Taken {
            handle: text(handle)?,
            score: text(score)?,
            facts: text(facts)?,
        });
    }
    Ok(out)
}
