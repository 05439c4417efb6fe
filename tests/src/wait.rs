//! Waiting with a deadline: poll until a condition holds, or fail with the last reason.

use std::time::Duration;

use tokio::time::Instant;

/// How long a process may take to come up and write its ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a one-shot command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `attempt` until it succeeds or `timeout` has passed, backing off from 10 ms to 200 ms
/// between attempts. On timeout the last error is returned, with the time waited.
pub async fn eventually<T>(
    timeout: Duration,
    mut attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still not true after {timeout:?}")));
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// Polls a boolean condition (which may `.await`) until it holds, or returns an error from the
/// enclosing function after the deadline: `assert_eventually!(timeout, cond, "format", args..)`.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr $(,)?) => {
        $crate::assert_eventually!($timeout, $cond, "{}", stringify!($cond))
    };
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {
        $crate::eventually($timeout, async || {
            if $cond {
                Ok(())
            } else {
                Err(::anyhow::anyhow!($($msg)+))
            }
        })
        .await?
    };
}
