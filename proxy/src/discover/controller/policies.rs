//! The sidecar's policy subscription (cluster mode): one stream on the controller connection
//! ([`ControllerDiscover`]'s multiplexed HTTP/2 mTLS client), `GET /v1/policies`, on which the
//! controller sends the whole policy set of this sidecar's namespace (the namespace in its
//! certificate) and the root namespace, again at every change (JSON lines; protocol in
//! docs/kubernetes.md).
//!
//! Each set goes to [`PolicyStore::set_cluster`]: loaded together with the policy files by
//! the one loader, swapped in whole or not at all, counted and logged as a file reload is.
//! When the stream breaks, the last set stays in force and the sidecar subscribes again with
//! backoff, receiving the whole set first.

use std::sync::Arc;

use picket_common::backoff::Backoff;
use picket_common::policies::ClusterPolicies;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{ControllerDiscover, JsonLines, RETRY_MAX, RETRY_MIN, StreamError};
use crate::authz::{PolicyLoadError, PolicyStore};

/// The path of the policy subscription.
pub const POLICIES_PATH: &str = "/v1/policies";

/// Follows the controller's policy sets into `store` until `shutdown`. `first` gets the
/// outcome of loading the first set received (the sidecar starts serving only after it).
pub async fn follow(
    discover: Arc<ControllerDiscover>,
    store: Arc<PolicyStore>,
    first: oneshot::Sender<Result<(), PolicyLoadError>>,
    shutdown: CancellationToken,
) {
    let mut first = Some(first);
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let result = tokio::select! {
            r = stream_once(&discover, &store, &mut first, &mut backoff) => r,
            () = shutdown.cancelled() => return,
        };
        let wait = backoff.next_delay();
        if let Err(e) = result {
            tracing::warn!(
                controller = %discover.shared.address,
                error = %e,
                retry_in = ?wait,
                "policy subscription interrupted; keeping the last policy set"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One subscription stream: each line is a whole set, loaded at once.
async fn stream_once(
    discover: &ControllerDiscover,
    store: &Arc<PolicyStore>,
    first: &mut Option<oneshot::Sender<Result<(), PolicyLoadError>>>,
    backoff: &mut Backoff,
) -> Result<(), StreamError> {
    let mut lines = JsonLines::open(&discover.shared, POLICIES_PATH).await?;
    loop {
        let set: ClusterPolicies = lines.next().await?;
        tracing::info!(
            objects = set.policies.len(),
            "policy set from the controller"
        );
        let store = Arc::clone(store);
        // Compiling many policies takes a while: off the request-serving threads.
        let loaded = tokio::task::spawn_blocking(move || store.set_cluster(set.policies))
            .await
            .map_err(|e| StreamError::Broken(e.to_string()))?;
        if let Some(first) = first.take() {
            let _ = first.send(loaded);
        }
        *backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    }
}
