//! The connection through which store operations reach the master the Sentinels name,
//! and the rule that a write is acknowledged only once a replica holds it (see the
//! [parent module](super)).

use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use super::Sentinel;

/// Replicas that must hold a write before it is acknowledged.
const ACK_REPLICAS: u32 = 1;

/// Commands whose effect need not reach a replica before they answer: reads (of records
/// and of the per-user index), the expiry slide of a read, and connection housekeeping. Everything else is a write and
/// waits for [`ACK_REPLICAS`].
const NOT_WAITED: &[&[u8]] = &[
    b"GET", b"GETEX", b"MGET", b"EXISTS", b"TTL", b"PTTL", b"EXPIRE", b"PEXPIRE", b"PING", b"ROLE",
    b"INFO", b"SCRIPT", b"CLIENT", b"HELLO", b"SCAN", b"DBSIZE", b"WAIT", b"ZRANGE", b"HGETALL",
];

/// The connection a store operation uses: every command goes to the master in use.
#[derive(Clone)]
pub(in crate::store::redis) struct SentinelConn(pub(super) Arc<Sentinel>);

/// True when `cmd` is a write that must reach a replica before it is acknowledged.
pub(super) fn waited(cmd: &Cmd) -> bool {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => !NOT_WAITED.iter().any(|r| r.eq_ignore_ascii_case(name)),
        _ => true,
    }
}

/// True when `e` means the node may no longer be the master (or is gone).
pub(super) fn moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                | ErrorKind::Client
        )
}

/// The error in `reply`, when it is a server error.
fn server_error(reply: &Value) -> Option<RedisError> {
    match reply {
        Value::ServerError(e) => Some(e.clone().into()),
        _ => None,
    }
}

/// True when a reply is an error saying the node is no master (`READONLY`, `MASTERDOWN`).
fn demoted_reply(v: &Value) -> bool {
    server_error(v).is_some_and(|e| moved(&e))
}

/// `Ok` when the reply to `WAIT` counts [`ACK_REPLICAS`] replicas.
pub(super) fn confirmed(ack: Value, wait_ms: u64) -> Result<(), RedisError> {
    if let Some(e) = server_error(&ack) {
        return Err(e);
    }
    match ack {
        Value::Int(n) if n >= i64::from(ACK_REPLICAS) => Ok(()),
        Value::Int(n) => Err((
            ErrorKind::Client,
            "write not confirmed by a replica",
            format!("WAIT {ACK_REPLICAS} {wait_ms} answered {n}; the master may be failing over"),
        )
            .into()),
        _ => Err((ErrorKind::UnexpectedReturnType, "unexpected reply to WAIT").into()),
    }
}

fn wait_cmd(wait_ms: u64) -> Cmd {
    let mut wait = redis::cmd("WAIT");
    wait.arg(ACK_REPLICAS).arg(wait_ms);
    wait
}

/// Sends `cmd` and `WAIT` in one round trip: the reply to `cmd` once a replica holds its
/// effect, else an error.
async fn send_waited(
    mut conn: MultiplexedConnection,
    cmd: &Cmd,
    wait_ms: u64,
) -> Result<Value, RedisError> {
    let mut pipe = Pipeline::with_capacity(2);
    pipe.add_command(cmd.clone()).add_command(wait_cmd(wait_ms));
    let mut replies = conn.req_packed_commands(&pipe, 0, 2).await?.into_iter();
    let (Some(reply), Some(ack)) = (replies.next(), replies.next()) else {
        return Err((
            ErrorKind::UnexpectedReturnType,
            "missing reply to a write or WAIT",
        )
            .into());
    };
    if !matches!(reply, Value::ServerError(_)) {
        confirmed(ack, wait_ms)?;
    }
    Ok(reply)
}

/// Sends `pipeline`, then, when it holds a write and every command succeeded, `WAIT`.
async fn send_pipeline_waited(
    mut conn: MultiplexedConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
    wait_ms: u64,
) -> Result<Vec<Value>, RedisError> {
    let replies = conn.req_packed_commands(pipeline, offset, count).await?;
    let failed = replies.iter().any(|r| matches!(r, Value::ServerError(_)));
    if !failed && pipeline.cmd_iter().any(waited) {
        confirmed(conn.req_packed_command(&wait_cmd(wait_ms)).await?, wait_ms)?;
    }
    Ok(replies)
}

impl SentinelConn {
    /// Runs `send` on the master's connection; forgets that master when the outcome says
    /// it may no longer be the master (or is gone).
    async fn on_master<T, Fut>(
        &self,
        send: impl FnOnce(MultiplexedConnection) -> Fut,
        demoted: impl Fn(&T) -> bool,
    ) -> Result<T, RedisError>
    where
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let master = self.0.master().await?;
        let result = send(master.conn.clone()).await;
        let stale = match &result {
            Ok(v) => demoted(v),
            Err(e) => moved(e),
        };
        if stale {
            self.0.forget(master.generation);
        }
        result
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let wait_ms = self.0.wait_ms;
        Box::pin(self.on_master(
            move |mut conn| async move {
                if waited(cmd) {
                    send_waited(conn, cmd, wait_ms).await
                } else {
                    conn.req_packed_command(cmd).await
                }
            },
            demoted_reply,
        ))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let wait_ms = self.0.wait_ms;
        Box::pin(self.on_master(
            move |conn| send_pipeline_waited(conn, pipeline, offset, count, wait_ms),
            |replies: &Vec<Value>| replies.iter().any(demoted_reply),
        ))
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}
