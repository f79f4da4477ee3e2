//! The copy of the workspace state kept in a registry (`storageConfig.registry`).
//!
//! oc-mirror v1 users keep their workspace metadata in an image so that any machine
//! can make the next imageset. Airlock does the same: after each `create`, the whole
//! [`WorkspaceState`] is pushed as a single-layer OCI artifact to `imageURL`; before
//! each `create`, it is read back, and when it is ahead of the local workspace (a
//! fresh machine, a lost disk) the local workspace continues from it.

use airlock_oci::reference::ImageRef;
use airlock_registry::{Pool, RegistryError};
use bytes::Bytes;

use crate::error::Error;
use crate::workspace::{STATE_FORMAT, WorkspaceState};

/// Media type of the state document and of the artifact.
pub const STATE_MEDIA_TYPE: &str = "application/vnd.airlock.connected-workspace.v1+json";

/// Largest state document read back: the shipped list of a workspace that moved a
/// few hundred thousand blobs.
const MAX_STATE: u64 = 256 << 20;

/// Where the state is kept, and how to reach it.
#[derive(Debug)]
pub struct RemoteState {
    image: ImageRef,
    pool: Pool,
}

impl RemoteState {
    /// The state image `image`, reached through `pool`.
    pub fn new(image: ImageRef, pool: Pool) -> Self {
        RemoteState { image, pool }
    }

    fn tag(&self) -> &str {
        self.image.tag().unwrap_or("latest")
    }

    /// Reads the state; `None` if the image does not exist yet.
    pub async fn pull(&self) -> Result<Option<WorkspaceState>, Error> {
        let client = self.pool.client(self.image.registry()).await?;
        let Some(bytes) = client
            .get_document(
                self.image.repository(),
                self.tag(),
                STATE_MEDIA_TYPE,
                MAX_STATE,
            )
            .await?
        else {
            return Ok(None);
        };
        let state: WorkspaceState = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Remote(format!(
                "workspace state at {} is not readable ({e}); fix or delete that image",
                self.image
            ))
        })?;
        if state.format != STATE_FORMAT {
            return Err(Error::Remote(format!(
                "workspace state at {} has format {:?}; this build reads {STATE_FORMAT:?}",
                self.image, state.format
            )));
        }
        Ok(Some(state))
    }

    /// Stores the state.
    pub async fn push(&self, state: &WorkspaceState) -> Result<(), RegistryError> {
        let client = self.pool.client(self.image.registry()).await?;
        let bytes = Bytes::from(serde_json::to_vec(state).expect("state serialises"));
        client
            .put_document(self.image.repository(), self.tag(), STATE_MEDIA_TYPE, bytes)
            .await?;
        tracing::info!(image = %self.image, uuid = %state.uuid, sequence = state.sequence, "workspace state stored in the registry");
        Ok(())
    }

    /// The image.
    pub fn image(&self) -> &ImageRef {
        &self.image
    }
}

/// Where to continue from, given the local and registry copies of the state. The
/// copy with the higher sequence wins; two different UUIDs are an error unless the
/// new imageset is `full` (a new UUID anyway).
pub fn reconcile(
    local: Option<WorkspaceState>,
    remote: Option<WorkspaceState>,
    full: bool,
    remote_name: &str,
) -> Result<(Option<WorkspaceState>, bool), Error> {
    match (local, remote) {
        (None, None) => Ok((None, false)),
        (Some(l), None) => Ok((Some(l), false)),
        (None, Some(r)) => Ok((Some(r), true)),
        (Some(l), Some(r)) if l.uuid == r.uuid => {
            if r.sequence > l.sequence {
                Ok((Some(r), true))
            } else {
                Ok((Some(l), false))
            }
        }
        (Some(l), Some(_)) if full => Ok((Some(l), false)),
        (Some(l), Some(r)) => Err(Error::Conflict(format!(
            "the local workspace follows workspace {} (sequence {}), but the state at {remote_name} is workspace {} (sequence {}); \
             use --full to start a new workspace, or point storageConfig.registry.imageURL or --workspace at the matching copy",
            l.uuid, l.sequence, r.uuid, r.sequence
        ))),
    }
}
