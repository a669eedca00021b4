//! The one bounded retry loop. The allocator wraps each read-modify-write step in it and
//! loops on conflicts nowhere else.

use crate::error::{IpamError, Result};

/// Calico's `datastoreRetries`.
pub const DATASTORE_RETRIES: u32 = 100;

/// Runs `step` until it succeeds, fails with something other than a write conflict
/// (`Conflict`/`AlreadyExists`), or has been tried `attempts` times. Each attempt must start
/// from fresh reads. Running out of attempts is [`IpamError::RetriesExhausted`], which callers
/// see as "contended, try again later".
pub async fn retry_on_conflict<T>(
    attempts: u32,
    op: &str,
    mut step: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    for _ in 0..attempts {
        match step().await {
            Err(e) if e.is_conflict() => continue,
            other => return other,
        }
    }
    Err(IpamError::RetriesExhausted {
        op: op.to_owned(),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::DatastoreError;
    use crate::error::ErrorKind;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn retries_only_conflicts() {
        let mut calls = 0;
        let r = block_on(retry_on_conflict(5, "op", async || {
            calls += 1;
            if calls < 3 {
                Err(IpamError::conflict("x"))
            } else {
                Ok(calls)
            }
        }));
        assert_eq!(r.expect("ok"), 3);

        let mut calls = 0;
        let r: Result<()> = block_on(retry_on_conflict(5, "op", async || {
            calls += 1;
            Err(IpamError::Datastore {
                op: "x".into(),
                source: DatastoreError::Unavailable("down".into()),
            })
        }));
        assert_eq!(calls, 1);
        assert_eq!(r.expect_err("err").kind(), ErrorKind::Unavailable);

        let mut calls = 0;
        let r: Result<()> = block_on(retry_on_conflict(4, "claim block", async || {
            calls += 1;
            Err(IpamError::Datastore {
                op: "x".into(),
                source: DatastoreError::AlreadyExists,
            })
        }));
        assert_eq!(calls, 4);
        let e = r.expect_err("err");
        assert_eq!(e.kind(), ErrorKind::Contended);
        assert!(
            e.to_string()
                .starts_with("claim block: gave up after 4 attempts")
        );
    }
}
