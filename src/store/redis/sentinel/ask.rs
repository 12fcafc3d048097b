//! The questions put to the Sentinels: which master (`SENTINEL get-master-addr-by-name`)
//! and, for the local cache, which replicas (`SENTINEL replicas`), over a connection kept
//! from one question to the next.

use std::collections::BTreeSet;

use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, ErrorKind, RedisError, Value};

use super::{Sentinel, master_info, timed_out};

impl Sentinel {
    /// The connection to Sentinel `i` kept from the last question, else a new one.
    pub(super) async fn to_sentinel(&self, i: usize) -> Result<MultiplexedConnection, RedisError> {
        let kept = match &self.lock().asked {
            Some((j, conn)) if *j == i => Some(conn.clone()),
            _ => None,
        };
        match kept {
            Some(conn) => Ok(conn),
            None => self.open(self.nodes[i].info.clone()).await,
        }
    }

    /// The master address Sentinel `i` gives, over a connection kept for the next
    /// question.
    pub(super) async fn ask(&self, i: usize) -> Result<(String, u16), RedisError> {
        let mut conn = self.to_sentinel(i).await?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&*self.name);
        let answer = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        let mut state = self.lock();
        match answer {
            Ok(Some(addr)) => {
                state.asked = Some((i, conn));
                Ok(addr)
            }
            Ok(None) => {
                state.asked = Some((i, conn));
                Err((
                    ErrorKind::MasterNameNotFoundBySentinel,
                    "monitors no master of that name",
                    format!("{:?}", self.name),
                )
                    .into())
            }
            Err(e) => {
                state.asked = None;
                Err(e)
            }
        }
    }

    /// The replicas Sentinel `i` lists for the master (`SENTINEL replicas`), down or not.
    async fn replicas(&self, i: usize) -> Result<BTreeSet<(String, u16)>, RedisError> {
        let mut conn = self.to_sentinel(i).await?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("replicas").arg(&*self.name);
        let answer = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        match answer {
            Ok(listed) => {
                self.lock().asked = Some((i, conn));
                replica_addrs(&listed)
            }
            Err(e) => {
                self.lock().asked = None;
                Err(e)
            }
        }
    }

    /// What the local cache tracks (see `tracking.rs`): the master the Sentinels name now
    /// and every replica the same Sentinel lists for it, asked in the order
    /// [`find`](Self::find) uses; with how to reach the master (the user, password, TLS
    /// and database of that Sentinel's URL, as for the store's own master connection),
    /// which serves for the replicas too.
    pub(in crate::store::redis) async fn members(
        &self,
    ) -> Result<(Members, ConnectionInfo), RedisError> {
        let first = self.lock().preferred;
        let mut failures = Vec::with_capacity(self.nodes.len());
        for k in 0..self.nodes.len() {
            let i = (first + k) % self.nodes.len();
            let asked = async {
                let master = self.ask(i).await?;
                let replicas = self.replicas(i).await?;
                Ok::<_, RedisError>(Members { master, replicas })
            };
            match asked.await {
                Ok(members) => {
                    self.lock().preferred = i;
                    let node = &self.nodes[i];
                    let (host, port) = &members.master;
                    let info = master_info(&node.info, host, *port, node.db);
                    return Ok((members, info));
                }
                Err(e) => failures.push(format!("{}: {e}", self.nodes[i].shown)),
            }
        }
        Err((
            ErrorKind::Client,
            "no sentinel listed the master and its replicas",
            failures.join("; "),
        )
            .into())
    }
}

/// The master the Sentinels name and the replicas they list for it, as `(host, port)`.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::store::redis) struct Members {
    pub(in crate::store::redis) master: (String, u16),
    pub(in crate::store::redis) replicas: BTreeSet<(String, u16)>,
}

/// The `ip` and `port` of each replica in an answer to `SENTINEL replicas`: one entry per
/// replica, its fields as a map (RESP3) or as a flat list of names and values (RESP2).
pub(super) fn replica_addrs(listed: &Value) -> Result<BTreeSet<(String, u16)>, RedisError> {
    let unexpected = || {
        RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected reply to SENTINEL replicas",
        ))
    };
    let Value::Array(entries) = listed else {
        return Err(unexpected());
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let mut addrs = BTreeSet::new();
    for entry in entries {
        let pairs: Vec<(&Value, &Value)> = match entry {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(flat) => flat.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
            _ => return Err(unexpected()),
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some(name))
                .and_then(|(_, v)| text(v))
        };
        let (Some(ip), Some(port)) = (field("ip"), field("port")) else {
            return Err(unexpected());
        };
        let port = port.parse::<u16>().map_err(|_| unexpected())?;
        addrs.insert((ip, port));
    }
    Ok(addrs)
}
