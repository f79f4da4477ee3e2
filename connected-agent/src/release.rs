//! `mirror.platform`: the OpenShift releases a configuration selects, and the images
//! each release is made of.
//!
//! Destinations follow oc-mirror v2, so existing mirror sets and install-configs keep
//! working: the release image goes to `openshift/release-images:<version>-<arch>`
//! and each component to `openshift/release:<version>-<arch>-<component>`, where
//! `<arch>` is the release tag suffix (`x86_64`, `aarch64`, `ppc64le`, `s390x`,
//! `multi`).

use std::path::PathBuf;

use airlock_config::schema::Platform;
use airlock_config::{ImageSpec, LoadedConfig, platform_filter};
use airlock_imageset::{ImageKind, ReleaseRecord};
use airlock_oci::reference::{ImageRef, valid_tag};
use airlock_registry::Pool;
use base64::Engine;
use futures::StreamExt;

use crate::cincinnati::UpdateService;
use crate::error::Error;
use crate::payload::{self, Payload};
use crate::release_signature::{self, Keyring, SignatureStore};
use crate::select::{self, SelectError, Selected};

/// Repository (under the mirror prefix) of release images.
pub const RELEASE_IMAGES_REPO: &str = "openshift/release-images";
/// Repository (under the mirror prefix) of release component images.
pub const RELEASE_REPO: &str = "openshift/release";

/// Release payloads read at once.
const PARALLEL_PAYLOADS: usize = 4;

/// The release tag suffix of an architecture, as the configuration spells it.
pub fn tag_suffix(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    }
}

/// `mirror.platform`, when it selects any release.
pub fn platform(loaded: &LoadedConfig) -> Option<&Platform> {
    loaded
        .config
        .mirror
        .as_ref()
        .and_then(|m| m.platform.as_ref())
        .filter(|p| !p.channels.is_empty() || p.release.is_some())
}

/// Puts the file and line of the configuration field an error is about in front.
fn locate(loaded: &LoadedConfig, e: SelectError) -> Error {
    match e {
        SelectError::Config { field, message } => Error::Select(SelectError::Config {
            field: format!("{}: {field}", loaded.locate(&field)),
            message,
        }),
        other => Error::Select(other),
    }
}

/// What `mirror.platform` selects, before any payload is read.
pub async fn list(
    loaded: &LoadedConfig,
    pool: &Pool,
    updates: &UpdateService,
) -> Result<Vec<Selected>, Error> {
    let Some(platform) = platform(loaded) else {
        return Ok(Vec::new());
    };
    if let Some(release) = &platform.release {
        let platforms = platform_filter(&platform.platforms);
        return Ok(vec![direct(release, pool, false, &platforms).await?.0]);
    }
    select::select(platform, "mirror", updates)
        .await
        .map_err(|e| locate(loaded, e))
}

/// `platform.release` names a release image without a graph: its version and
/// architecture come from the payload itself.
async fn direct(
    release: &str,
    pool: &Pool,
    kubevirt: bool,
    platforms: &[String],
) -> Result<(Selected, Payload), Error> {
    let image: ImageRef = release
        .parse()
        .map_err(|e| Error::Usage(format!("mirror.platform.release: {release:?}: {e}")))?;
    let payload = payload::read(pool, &image, kubevirt, platforms).await?;
    let selected = Selected {
        channel: String::new(),
        arch: payload.arch.clone(),
        version: payload.metadata.version.clone(),
        image: payload.image.to_string(),
    };
    Ok((selected, payload))
}

/// The selected releases with every image they need.
#[derive(Debug, Default)]
pub struct Releases {
    /// Release and component images, in selection order.
    pub images: Vec<ImageSpec>,
    /// One record per release.
    pub records: Vec<ReleaseRecord>,
}

/// Selects the releases of the configuration and reads each payload.
pub async fn resolve(
    loaded: &LoadedConfig,
    pool: &Pool,
    updates: &UpdateService,
) -> Result<Releases, Error> {
    let Some(platform) = platform(loaded) else {
        return Ok(Releases::default());
    };
    let kubevirt = platform.kube_virt_container;
    let platforms = platform_filter(&platform.platforms);
    let selected = if let Some(release) = &platform.release {
        vec![direct(release, pool, kubevirt, &platforms).await?]
    } else {
        let selected = select::select(platform, "mirror", updates)
            .await
            .map_err(|e| locate(loaded, e))?;
        let payloads: Vec<Result<Payload, Error>> = futures::stream::iter(&selected)
            .map(|s| {
                let platforms = &platforms;
                async move {
                let image: ImageRef = s.image.parse().map_err(|e| {
                    Error::Usage(format!(
                        "the update graph of channel {} names release {} as {:?}, which is not an image reference: {e}",
                        s.channel, s.version, s.image
                    ))
                })?;
                Ok(payload::read(pool, &image, kubevirt, platforms).await?)
            }})
            .buffered(PARALLEL_PAYLOADS)
            .collect()
            .await;
        selected
            .into_iter()
            .zip(payloads)
            .map(|(s, p)| p.map(|p| (s, p)))
            .collect::<Result<_, _>>()?
    };
    let mut out = Releases::default();
    for (s, payload) in selected {
        check_identity(&s, &payload)?;
        let tag = format!("{}-{}", s.version, tag_suffix(&s.arch));
        let source = payload.image.clone();
        out.images.push(ImageSpec {
            name: source.to_string(),
            source: source.clone(),
            target_repo: Some(RELEASE_IMAGES_REPO.into()),
            target_tag: Some(tag.clone()),
            kind: ImageKind::Release,
            subject: None,
            platforms: platforms.clone(),
        });
        let kubevirt_images = if kubevirt {
            kubevirt_components(&s, &payload, &platforms)?
        } else {
            Vec::new()
        };
        for c in payload.components.iter().chain(&kubevirt_images) {
            let component_tag = format!("{tag}-{}", c.name);
            if !valid_tag(&component_tag) {
                return Err(Error::Usage(format!(
                    "release {}: component {:?} would be tagged {component_tag:?}, which is not a valid tag (at most 128 characters of [A-Za-z0-9_.-])",
                    s.version, c.name
                )));
            }
            out.images.push(ImageSpec {
                name: c.image.to_string(),
                source: c.image.clone().with_default_tag(),
                target_repo: Some(RELEASE_REPO.into()),
                target_tag: Some(component_tag),
                kind: ImageKind::ReleaseComponent,
                subject: None,
                platforms: platforms.clone(),
            });
        }
        tracing::info!(version = %s.version, arch = %s.arch, digest = %payload.digest, components = payload.components.len(), "release payload read");
        out.records.push(ReleaseRecord {
            version: s.version.clone(),
            arch: s.arch.clone(),
            channels: if s.channel.is_empty() {
                Vec::new()
            } else {
                vec![s.channel.clone()]
            },
            image: source.to_string(),
            digest: payload.digest.clone(),
            tag,
            signature: None,
        });
    }
    Ok(out)
}

/// The KubeVirt container images of release `s` (`kubeVirtContainer`), as
/// components named as oc-mirror v2 names them: `kube-virt-container`, with the
/// stream's architecture appended for a multi-architecture release, which
/// carries one per architecture that has one (of `platforms`, when it names
/// any). They are then tagged, owned, pruned and deleted with the release,
/// like any component.
fn kubevirt_components(
    s: &Selected,
    payload: &Payload,
    platforms: &[String],
) -> Result<Vec<payload::Component>, Error> {
    const NAME: &str = "kube-virt-container";
    let invalid = |problem: String| {
        Error::Payload(payload::PayloadError::Invalid {
            image: payload.image.to_string(),
            problem,
        })
    };
    let named: Vec<payload::Component> = if s.arch == "multi" {
        let named: Vec<payload::Component> = payload
            .kubevirt
            .iter()
            .filter(|(arch, _)| {
                platforms.is_empty()
                    || platforms.iter().any(|p| {
                        p.split_once('/')
                            .is_some_and(|(_, a)| tag_suffix(a) == arch.as_str())
                    })
            })
            .map(|(arch, image)| payload::Component {
                name: format!("{NAME}-{arch}"),
                image: image.clone(),
            })
            .collect();
        if named.is_empty() && !platforms.is_empty() {
            let has: Vec<&str> = payload.kubevirt.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "kubeVirtContainer: its boot-image stream names a KubeVirt image for {} but for none of {} (Red Hat builds them for x86_64 and s390x); remove mirror.platform.kubeVirtContainer, or add those platforms",
                has.join(", "),
                platforms.join(", ")
            )));
        }
        named
    } else {
        let key = tag_suffix(&s.arch);
        let image = payload.kubevirt.get(key).ok_or_else(|| {
            let has: Vec<&str> = payload.kubevirt.keys().map(String::as_str).collect();
            invalid(format!(
                "kubeVirtContainer: its boot-image stream names a KubeVirt image for {} but not for {key}, this release's architecture (Red Hat builds them for x86_64 and s390x); remove mirror.platform.kubeVirtContainer, or select those architectures",
                has.join(", ")
            ))
        })?;
        vec![payload::Component {
            name: NAME.into(),
            image: image.clone(),
        }]
    };
    if let Some(c) = named
        .iter()
        .find(|k| payload.components.iter().any(|c| c.name == k.name))
    {
        return Err(invalid(format!(
            "kubeVirtContainer: the payload already has a component named {:?}",
            c.name
        )));
    }
    Ok(named)
}

/// How releases are selected, checked and completed.
#[derive(Debug, Clone, Default)]
pub struct ReleaseOptions {
    /// Update service instead of Red Hat's (else `UPDATE_URL_OVERRIDE`).
    pub update_url: Option<String>,
    /// Signature store instead of Red Hat's (else `OCP_SIGNATURE_URL`).
    pub signature_url: Option<String>,
    /// Keys release signatures must be made with (else
    /// `OCP_SIGNATURE_VERIFICATION_PK`, else Red Hat's).
    pub keyring: Option<PathBuf>,
    /// Mirror releases without their signatures (oc-mirror's
    /// `--ignore-release-signature`): clusters then need signature checks relaxed.
    pub ignore_signatures: bool,
    /// Graph data tarball instead of Red Hat's (`platform.graph`).
    pub graph_data_url: Option<String>,
    /// Base image of the graph image instead of UBI 9.
    pub graph_base: Option<String>,
}

/// Where release signatures come from and what they must be made with.
pub struct SignatureCheck {
    store: SignatureStore,
    keyring: Keyring,
}

impl SignatureCheck {
    /// Loads the keys and checks the store URL, before anything is pulled; `None`
    /// when the user opted out.
    pub fn new(opts: &ReleaseOptions) -> Result<Option<SignatureCheck>, Error> {
        if opts.ignore_signatures {
            tracing::warn!(
                "release signatures are not fetched (--ignore-release-signature): clusters cannot verify these releases"
            );
            return Ok(None);
        }
        let keyring = Keyring::load(opts.keyring.as_deref())?;
        let store = SignatureStore::new(opts.signature_url.clone())?;
        Ok(Some(SignatureCheck { store, keyring }))
    }

    /// Fetches and verifies the signature of every release, and records it.
    pub async fn sign(&self, records: &mut [ReleaseRecord]) -> Result<(), Error> {
        let fetched: Vec<Result<String, Error>> = futures::stream::iter(records.iter())
            .map(|r| async move {
                let name = format!("{} {}", r.version, r.arch);
                let sig = self.store.fetch(&r.digest, &name).await?;
                let v = release_signature::verify(&self.keyring, &sig, &r.digest, &name)?;
                tracing::info!(version = %r.version, arch = %r.arch, digest = %r.digest, key = %v.key, signed_as = %v.docker_reference, "release signature verified");
                Ok(base64::engine::general_purpose::STANDARD.encode(sig))
            })
            .buffered(PARALLEL_PAYLOADS)
            .collect()
            .await;
        for (r, sig) in records.iter_mut().zip(fetched) {
            r.signature = Some(sig?);
        }
        Ok(())
    }
}

/// The graph and the payload must agree on what the release is: a graph entry that
/// points at another release's image would publish it under the wrong tag.
fn check_identity(s: &Selected, payload: &Payload) -> Result<(), Error> {
    if payload.metadata.version != s.version {
        return Err(Error::Usage(format!(
            "release {} ({}): the update graph says version {}, the payload's release-metadata says {}",
            s.image, s.arch, s.version, payload.metadata.version
        )));
    }
    if payload.arch != s.arch {
        return Err(Error::Usage(format!(
            "release {} {}: the update graph for {} names an image for {}",
            s.version, s.image, s.arch, payload.arch
        )));
    }
    Ok(())
}
