//! The trust boundary: an imageset manifest is checked completely, field by field,
//! before anything of its imageset is written, stored or pushed.
//!
//! Everything in a manifest crossed the air gap and may have been forged with every
//! checksum consistent (an unsigned imageset, or one signed by a stolen key). Code
//! after this check may rely on what it guarantees without checking again:
//!
//! - every string has the grammar of what it names (distribution's reference
//!   grammar for registries, repositories and tags; the four manifest media types;
//!   chunk and parity names exactly as [`super::chunk_file_name`] derives them) and a
//!   bounded length, so it can be parsed, put in a URL or quoted without surprise;
//! - every count and size is bounded, so sums cannot overflow and nothing computed
//!   from them outgrows memory;
//! - every cross-reference resolves: parts lie in listed chunks, contiguous and
//!   summing to their blob; chunks are exactly as large as their entries; every
//!   image, referrer subject and release names a listed manifest.
//!
//! Names from a manifest are still never used as paths: rebuilt chunks get names
//! Airlock derives from the UUID, sequence and index.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;

use super::{
    BLOCK, CHUNK_ENTRY_LEN, FORMAT_V1, FORMAT_V2, ImageKind, ImageRecord, ImagesetManifest,
    PARITY_EXTRA, RESERVED_REPOSITORY, TRAILER_LEN, Version, chunk_file_name, parity_file_name,
};
use airlock_oci::digest::Digest;
use airlock_oci::manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST,
};
use airlock_oci::quote::clipped;
use airlock_oci::reference::{ImageRef, valid_repository, valid_tag};

/// Most chunk files one imageset may have (at the smallest useful limit of 1 MiB,
/// 100 TiB).
pub const MAX_CHUNKS: usize = 100_000;
/// Most parity files (Reed–Solomon over GF(2^16) allows far more; no site needs
/// more than a few).
pub const MAX_PARITY: usize = 1_000;
/// Most images one imageset may list (a release is ~190, a filtered Red Hat
/// operator catalog a few thousand).
pub const MAX_IMAGES: usize = 200_000;
/// Most manifests and blobs one imageset may list.
pub const MAX_BLOBS: usize = 1_000_000;
/// Largest blob a manifest may list: 1 TiB. With [`MAX_BLOBS`], no sum of sizes can
/// overflow a `u64`.
pub const MAX_BLOB_SIZE: u64 = 1 << 40;
/// Longest source reference or repository name kept (distribution limits a name to
/// 255 characters; a source may add a tag and digest).
pub const MAX_NAME: usize = 512;
/// Deepest chain of referrers (a signature of an SBOM of an image is 2; discovery
/// follows 3). Bounds the publisher's ordering walk, which a forged cycle of
/// 200 000 subjects would otherwise make quadratic.
pub const MAX_SUBJECT_DEPTH: usize = 8;
/// Most releases, and most channels per release.
pub const MAX_RELEASES: usize = 10_000;
/// Largest release signature (decoded); real ones are under 1 KiB.
pub const MAX_RELEASE_SIGNATURE: usize = 64 << 10;

/// A manifest field that is not what the format allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    /// The field, as a path into the manifest's JSON (`images[3].repository`).
    pub field: String,
    /// What was found (clipped) and what was expected.
    pub problem: String,
}

/// A list of at most `max` entries.
fn at_most(field: &str, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max {
        return Err(invalid(
            field,
            format!("{len} entries, more than the {max} allowed"),
        ));
    }
    Ok(())
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// The media types a manifest blob may have: exactly the ones Airlock mirrors.
pub fn is_manifest_media_type(media_type: &str) -> bool {
    [
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
    ]
    .contains(&media_type)
}

/// Checks `m` completely; `payload_offset` is the metadata length of the chunk it
/// was read from (header, manifest, checksum and signature entries), on which every
/// chunk's size depends.
pub fn check(m: &ImagesetManifest, payload_offset: u64) -> Result<(), Invalid> {
    check_content(m)?;
    chunks(m, payload_offset)
}

/// Checks everything but the chunk list, which only a chunk file's metadata length
/// can check: for a manifest accepted earlier and loaded from the workspace, whose
/// chunks are gone.
pub fn check_content(m: &ImagesetManifest) -> Result<(), Invalid> {
    check_header(m)?;
    let manifests = blobs(m)?;
    images(m, &manifests)?;
    subject_chains(m)?;
    releases(m)
}

/// A `format` this build reads. Checked first of the fields, and by
/// `read_head` on `format` alone when a manifest does not parse: a later
/// version's fields would otherwise be reported as unknown, and not the
/// version as unsupported.
pub fn check_format(format: &str) -> Result<(), Invalid> {
    match Version::of(format) {
        Some(_) => Ok(()),
        None => Err(invalid(
            "format",
            format!(
                "{} is not supported; this build reads {FORMAT_V1:?} and {FORMAT_V2:?}",
                clipped(format)
            ),
        )),
    }
}

/// The fields the chunk's tar headers are compared against (`format`, `created`),
/// and the sequence fields; checked first, so that a forged time is reported as
/// such and not as a header that differs.
pub fn check_header(m: &ImagesetManifest) -> Result<(), Invalid> {
    check_format(&m.format)?;
    if m.sequence == 0 {
        return Err(invalid("sequence", "0; sequences start at 1"));
    }
    if m.full != (m.sequence == 1) {
        return Err(invalid(
            "full",
            format!(
                "{} at sequence {}; an imageset is full exactly when it starts a workspace (sequence 1)",
                m.full, m.sequence
            ),
        ));
    }
    let canonical = chrono::DateTime::parse_from_rfc3339(&m.created)
        .ok()
        .filter(|t| t.offset().local_minus_utc() == 0 && t.timestamp() >= 0)
        .map(|t| {
            t.to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
    if canonical.as_deref() != Some(m.created.as_str()) {
        return Err(invalid(
            "created",
            format!(
                "{}; expected RFC 3339 UTC with whole seconds after 1970 (2026-11-24T10:00:00Z)",
                clipped(&m.created)
            ),
        ));
    }
    Ok(())
}

/// Checks the blob list; returns the manifests' digests with their media types.
fn blobs(m: &ImagesetManifest) -> Result<HashMap<&Digest, &str>, Invalid> {
    at_most("blobs", m.blobs.len(), MAX_BLOBS)?;
    let mut seen = HashSet::with_capacity(m.blobs.len());
    let mut manifests = HashMap::new();
    for (i, b) in m.blobs.iter().enumerate() {
        let field = |f: &str| format!("blobs[{i}].{f}");
        if !seen.insert(&b.digest) {
            return Err(invalid(
                field("digest"),
                format!("{} is listed twice", b.digest),
            ));
        }
        if b.size > MAX_BLOB_SIZE {
            return Err(invalid(
                field("size"),
                format!("{} bytes, more than the 1 TiB allowed", b.size),
            ));
        }
        source_repository(&b.repository).map_err(|p| invalid(field("repository"), p))?;
        if let Some(t) = &b.media_type {
            if !is_manifest_media_type(t) {
                return Err(invalid(
                    field("mediaType"),
                    format!(
                        "{}; expected one of {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}",
                        clipped(t)
                    ),
                ));
            }
            if b.size > MAX_MANIFEST_BYTES as u64 {
                return Err(invalid(
                    field("size"),
                    format!(
                        "{} bytes for a manifest; registries accept at most {MAX_MANIFEST_BYTES}",
                        b.size
                    ),
                ));
            }
            manifests.insert(&b.digest, t.as_str());
        }
        if m.full && !b.carried() {
            return Err(invalid(
                field("parts"),
                format!(
                    "blob {} is not carried, but a full imageset carries every blob",
                    b.digest
                ),
            ));
        }
    }
    Ok(manifests)
}

/// Chunks numbered 1..=K within the limit, named as derived, and each exactly as large
/// as its entries; parity files sized as the format says; every blob's parts
/// contiguous, in listed chunks, summing to its size.
fn chunks(m: &ImagesetManifest, payload_offset: u64) -> Result<(), Invalid> {
    let count = m.chunks.len();
    if count == 0 || count > MAX_CHUNKS {
        return Err(invalid(
            "chunks",
            format!("{count} entries; expected 1 to {MAX_CHUNKS}"),
        ));
    }
    let overflow = |f: String| invalid(f, "sizes overflow");
    let v1 = m.version() == Version::V1;
    let base = payload_offset
        .checked_add(CHUNK_ENTRY_LEN + TRAILER_LEN)
        .ok_or_else(|| overflow("chunks".into()))?;
    let mut sizes = vec![Some(base); count];
    for (i, c) in m.chunks.iter().enumerate() {
        let field = |f: &str| format!("chunks[{i}].{f}");
        if c.index as usize != i + 1 {
            return Err(invalid(
                field("index"),
                format!("{}; chunks are listed in order from 1", c.index),
            ));
        }
        let name = chunk_file_name(&m.uuid, m.sequence, c.index, count as u32);
        if c.name != name {
            return Err(invalid(
                field("name"),
                format!("{}; expected {name:?}", clipped(&c.name)),
            ));
        }
        if c.size > m.limit {
            return Err(invalid(
                field("size"),
                format!(
                    "{} bytes, more than the imageset's limit of {}",
                    c.size, m.limit
                ),
            ));
        }
        hash_field(&c.sha256, v1, "a data chunk").map_err(|p| invalid(field("sha256"), p))?;
    }
    for (i, b) in m.blobs.iter().enumerate() {
        let mut next = 0u64;
        for (j, p) in b.parts.iter().enumerate() {
            let field = format!("blobs[{i}].parts[{j}]");
            let what = match b.parts.len() {
                1 => "a blob in one part",
                _ => "a part of a split blob",
            };
            hash_field(&p.sha256, !v1 && b.parts.len() > 1, what)
                .map_err(|e| invalid(format!("{field}.sha256"), e))?;
            if p.offset != next || p.chunk == 0 || p.chunk as usize > count {
                return Err(invalid(
                    field,
                    format!(
                        "chunk {} offset {}; expected offset {next} in a chunk from 1 to {count}",
                        p.chunk, p.offset
                    ),
                ));
            }
            next = next
                .checked_add(p.length)
                .ok_or_else(|| overflow(field.clone()))?;
            let size = &mut sizes[p.chunk as usize - 1];
            *size = size
                .and_then(|s| s.checked_add(BLOCK))
                .and_then(|s| s.checked_add(p.length.checked_next_multiple_of(BLOCK)?));
        }
        if !b.parts.is_empty() && next != b.size {
            return Err(invalid(
                format!("blobs[{i}].parts"),
                format!(
                    "the parts of {} add up to {next} bytes; its size is {}",
                    b.digest, b.size
                ),
            ));
        }
    }
    for (i, (c, size)) in m.chunks.iter().zip(sizes).enumerate() {
        if size != Some(c.size) {
            return Err(invalid(
                format!("chunks[{i}].size"),
                format!(
                    "{} bytes, but its entries make {}",
                    c.size,
                    size.map_or("more than 2^64".to_string(), |s| s.to_string())
                ),
            ));
        }
    }
    at_most("parity", m.parity.len(), MAX_PARITY)?;
    let largest = m
        .chunks
        .iter()
        .map(|c| c.size.saturating_sub(payload_offset))
        .max()
        .unwrap_or(0);
    let parity_size = payload_offset
        .checked_add(PARITY_EXTRA)
        .and_then(|s| s.checked_add(largest))
        .ok_or_else(|| overflow("parity".into()))?;
    for (i, p) in m.parity.iter().enumerate() {
        let field = |f: &str| format!("parity[{i}].{f}");
        if p.index as usize != i + 1 {
            return Err(invalid(
                field("index"),
                format!("{}; parity files are listed in order from 1", p.index),
            ));
        }
        let name = parity_file_name(&m.uuid, m.sequence, p.index, m.parity.len() as u32);
        if p.name != name {
            return Err(invalid(
                field("name"),
                format!("{}; expected {name:?}", clipped(&p.name)),
            ));
        }
        if p.size != parity_size || p.size > m.limit {
            return Err(invalid(
                field("size"),
                format!(
                    "{} bytes; expected {parity_size} (the largest chunk payload and three blocks), within the limit of {}",
                    p.size, m.limit
                ),
            ));
        }
        hash_field(&p.sha256, true, "a parity file").map_err(|e| invalid(field("sha256"), e))?;
    }
    Ok(())
}

/// A sha256 field that `wanted` says the format has for `what` in this
/// version, and nothing where it has none: an extra hash would check nothing
/// and read as if it did.
fn hash_field(value: &Option<String>, wanted: bool, what: &str) -> Result<(), String> {
    match (value, wanted) {
        (Some(h), true) => sha256_hex(h),
        (None, false) => Ok(()),
        (None, true) => Err(format!(
            "missing; the format has one for {what} in this version"
        )),
        (Some(_), false) => Err(format!(
            "present; the format has none for {what} in this version"
        )),
    }
}

fn images(m: &ImagesetManifest, manifests: &HashMap<&Digest, &str>) -> Result<(), Invalid> {
    at_most("images", m.images.len(), MAX_IMAGES)?;
    for (i, image) in m.images.iter().enumerate() {
        let field = |f: &str| format!("images[{i}].{f}");
        record(image, &field)?;
        if !manifests.contains_key(&image.digest) {
            return Err(invalid(
                field("digest"),
                format!(
                    "{} is not listed in blobs[] as a manifest (with a manifest mediaType)",
                    image.digest
                ),
            ));
        }
        if let (ImageKind::Referrer, Some(s)) = (&image.kind, &image.subject)
            && !manifests.contains_key(s)
        {
            return Err(invalid(
                field("subject"),
                format!("{s} is not listed in blobs[] as a manifest"),
            ));
        }
    }
    // What a delete imageset removes is no longer in blobs[]: only its fields are
    // checked. They become registry paths of DELETE requests, so they are held to
    // the same grammar as the images that are pushed. (That each is an image of
    // the sequence before is checked where that sequence is known.)
    if !m.deletes.is_empty() && (m.full || m.sequence == 1) {
        return Err(invalid(
            "deletes",
            format!(
                "{} entries in a full imageset at sequence {}; only a later sequence deletes what an earlier one listed",
                m.deletes.len(),
                m.sequence
            ),
        ));
    }
    at_most("deletes", m.deletes.len(), MAX_IMAGES)?;
    for (i, image) in m.deletes.iter().enumerate() {
        record(image, &|f: &str| format!("deletes[{i}].{f}"))?;
    }
    Ok(())
}

/// The fields of one image record that stand on their own.
fn record(image: &ImageRecord, field: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    if image.source.len() > MAX_NAME {
        return Err(invalid(
            field("source"),
            format!(
                "{}: {} bytes, more than the {MAX_NAME} allowed",
                clipped(&image.source),
                image.source.len()
            ),
        ));
    }
    image
        .source
        .parse::<ImageRef>()
        .map_err(|e| invalid(field("source"), format!("{e}")))?;
    source_repository(&image.repository).map_err(|p| invalid(field("repository"), p))?;
    let placed_at = match &image.target_repository {
        Some(t) => t.as_str(),
        None => image
            .repository
            .split_once('/')
            .map_or("", |(_, path)| path),
    };
    if placed_at == RESERVED_REPOSITORY {
        return Err(invalid(
            field("repository"),
            format!(
                "{}: would be published to {RESERVED_REPOSITORY}, where the disconnected side keeps its state",
                clipped(&image.repository)
            ),
        ));
    }
    if let Some(tag) = &image.tag
        && !valid_tag(tag)
    {
        return Err(invalid(
            field("tag"),
            format!(
                "{}; expected 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                clipped(tag)
            ),
        ));
    }
    if let Some(t) = &image.target_repository
        && (t.len() > 255 || !valid_repository(t))
    {
        return Err(invalid(
            field("targetRepository"),
            format!(
                "{}; expected a repository path of at most 255 characters: lowercase letters and digits separated by '.', '_', '__', '-' or '/'",
                clipped(t)
            ),
        ));
    }
    platforms(image, field)?;
    if let Some(t) = &image.catalog_source {
        if image.kind != ImageKind::Catalog {
            return Err(invalid(
                field("catalogSource"),
                "set on an image that is not a catalog",
            ));
        }
        catalog_source_template(t).map_err(|p| invalid(field("catalogSource"), p))?;
    }
    match (&image.kind, &image.subject) {
        (ImageKind::Referrer, None) => Err(invalid(
            field("subject"),
            "missing; a referrer names its subject",
        )),
        (ImageKind::Referrer, Some(_)) | (_, None) => Ok(()),
        (_, Some(_)) => Err(invalid(
            field("subject"),
            "set on an image that is not a referrer",
        )),
    }
}

/// Most platforms an image's filter may name; an index of every platform Go
/// knows has fewer than 50.
const MAX_PLATFORMS: usize = 64;

/// A platform filter, which decides which children of an index may be absent:
/// each `os/architecture` well formed, sorted and named once (as the connected
/// side writes them, so that two spellings of one filter cannot differ), and
/// none on a referrer, which is published whole after its subject.
fn platforms(image: &ImageRecord, field: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    if image.platforms.is_empty() {
        return Ok(());
    }
    if image.kind == ImageKind::Referrer {
        return Err(invalid(
            field("platforms"),
            "set on a referrer; only an image's own index is filtered",
        ));
    }
    at_most(&field("platforms"), image.platforms.len(), MAX_PLATFORMS)?;
    for (i, p) in image.platforms.iter().enumerate() {
        if !airlock_oci::manifest::valid_platform(p) {
            return Err(invalid(
                field(&format!("platforms[{i}]")),
                format!(
                    "{}; expected os/architecture, each 1 to 32 lowercase letters, digits or '_'",
                    clipped(p)
                ),
            ));
        }
        if i > 0 && image.platforms[i - 1] >= *p {
            return Err(invalid(
                field(&format!("platforms[{i}]")),
                "not sorted or named twice; the list is sorted, each platform once",
            ));
        }
    }
    Ok(())
}

/// A `CatalogSource` template's serialised size limit: real ones are a few
/// hundred bytes; an icon is the largest part.
pub const MAX_CATALOG_SOURCE_TEMPLATE: usize = 64 << 10;

/// A carried `CatalogSource` template is applied to clusters as it is: every
/// value must be one the Kubernetes API takes (a refused object would stop the
/// agent's pass over that cluster), no key may steer OLM itself (an
/// `olm.catalogImageTemplate` annotation would make OLM pull another image),
/// and its size is bounded.
pub fn catalog_source_template(t: &super::CatalogSourceTemplate) -> Result<(), String> {
    let size = serde_json::to_vec(t).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_CATALOG_SOURCE_TEMPLATE {
        return Err(format!(
            "{size} bytes, more than the {MAX_CATALOG_SOURCE_TEMPLATE} allowed"
        ));
    }
    for (what, map) in [("labels", &t.labels), ("annotations", &t.annotations)] {
        for k in map.keys() {
            if !qualified_name(k) {
                return Err(format!(
                    "{what}: {} is not a Kubernetes key ([PREFIX/]NAME: PREFIX a DNS subdomain, NAME 1 to 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit)",
                    clipped(k)
                ));
            }
            let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
            if name.starts_with("olm.")
                || prefix.starts_with("olm.")
                || ["operatorframework.io", "operators.coreos.com"]
                    .iter()
                    .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")))
            {
                return Err(format!(
                    "{what}: {} is OLM's own; a template does not set it",
                    clipped(k)
                ));
            }
        }
    }
    if let Some((k, _)) = t.labels.iter().find(|(_, v)| !label_value(v)) {
        return Err(format!(
            "labels: the value of {} is not a label value (at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit)",
            clipped(k)
        ));
    }
    if let Some(s) = t.secrets.iter().find(|s| !dns_subdomain(s)) {
        return Err(format!(
            "secrets: {} is not a Secret name (a DNS subdomain)",
            clipped(s)
        ));
    }
    if let Some(i) = &t.icon
        && (i.mediatype.len() > 255 || !i.mediatype.contains('/'))
    {
        return Err(format!(
            "icon.mediatype: {} is not a media type",
            clipped(&i.mediatype)
        ));
    }
    if let Some(interval) = t
        .update_strategy
        .as_ref()
        .and_then(|u| u.registry_poll.as_ref())
        .and_then(|p| p.interval.as_deref())
        && !go_duration(interval)
    {
        return Err(format!(
            "updateStrategy.registryPoll.interval: {} is not a duration (30m, 1h30m)",
            clipped(interval)
        ));
    }
    if let Some(g) = &t.grpc_pod_config {
        if let Some(k) = g
            .node_selector
            .iter()
            .find(|(k, v)| !qualified_name(k) || !label_value(v))
            .map(|(k, _)| k)
        {
            return Err(format!(
                "grpcPodConfig.nodeSelector: {} is not a label selector entry",
                clipped(k)
            ));
        }
        if let Some(p) = g
            .priority_class_name
            .as_deref()
            .filter(|p| !dns_subdomain(p))
        {
            return Err(format!(
                "grpcPodConfig.priorityClassName: {} is not an object name",
                clipped(p)
            ));
        }
        if let Some(c) = g
            .security_context_config
            .as_deref()
            .filter(|c| !["restricted", "legacy"].contains(c))
        {
            return Err(format!(
                "grpcPodConfig.securityContextConfig: {}; expected restricted or legacy",
                clipped(c)
            ));
        }
        if let Some(m) = g.memory_target.as_deref().filter(|m| !quantity(m)) {
            return Err(format!(
                "grpcPodConfig.memoryTarget: {} is not a quantity (30Mi)",
                clipped(m)
            ));
        }
        for (i, tol) in g.tolerations.iter().enumerate() {
            let at = format!("grpcPodConfig.tolerations[{i}]");
            if tol
                .key
                .as_deref()
                .is_some_and(|k| !k.is_empty() && !qualified_name(k))
            {
                return Err(format!("{at}.key: not a taint key"));
            }
            if tol
                .operator
                .as_deref()
                .is_some_and(|o| !["Exists", "Equal"].contains(&o))
            {
                return Err(format!("{at}.operator: expected Exists or Equal"));
            }
            if tol.value.as_deref().is_some_and(|v| !label_value(v)) {
                return Err(format!("{at}.value: not a taint value"));
            }
            if tol
                .effect
                .as_deref()
                .is_some_and(|e| !["", "NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&e))
            {
                return Err(format!(
                    "{at}.effect: expected NoSchedule, PreferNoSchedule or NoExecute"
                ));
            }
        }
        if let Some(e) = &g.extract_content {
            for (field, dir) in [("cacheDir", &e.cache_dir), ("catalogDir", &e.catalog_dir)] {
                if !dir.starts_with('/') || dir.len() > 4096 || dir.contains('\0') {
                    return Err(format!(
                        "grpcPodConfig.extractContent.{field}: {} is not an absolute path",
                        clipped(dir)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A DNS subdomain as Kubernetes names objects: at most 253 characters, labels
/// of lowercase letters, digits and '-' joined by '.', each beginning and ending
/// with a letter or digit.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// A label or annotation key: `[PREFIX/]NAME`.
fn qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let alnum = |c: char| c.is_ascii_alphanumeric();
    prefix.is_none_or(dns_subdomain)
        && (1..=63).contains(&name.len())
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.')
}

/// A label value: empty, or a qualified name's NAME part.
fn label_value(v: &str) -> bool {
    v.is_empty() || qualified_name(v) && !v.contains('/')
}

/// A Go duration: one or more number-and-unit pairs (`30m`, `1h30m`, `1.5h`).
fn go_duration(s: &str) -> bool {
    let mut rest = s;
    let mut pairs = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .filter(|u| rest.starts_with(**u))
            .max_by_key(|u| u.len())
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        pairs += 1;
    }
    pairs > 0 && s.len() <= 64
}

/// A Kubernetes quantity as memory is written (`30Mi`, `1G`, `512000`).
fn quantity(s: &str) -> bool {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    digits > 0
        && s.len() <= 32
        && ["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"].contains(&&s[digits..])
}

/// Every chain of subjects through the images ends within [`MAX_SUBJECT_DEPTH`]
/// steps (so none is a cycle).
fn subject_chains(m: &ImagesetManifest) -> Result<(), Invalid> {
    let subject_of: HashMap<&Digest, &Digest> = m
        .images
        .iter()
        .filter_map(|i| i.subject.as_ref().map(|s| (&i.digest, s)))
        .collect();
    for (i, image) in m.images.iter().enumerate() {
        let mut at = image.subject.as_ref();
        for _ in 0..=MAX_SUBJECT_DEPTH {
            match at {
                Some(d) => at = subject_of.get(d).copied(),
                None => break,
            }
        }
        if at.is_some() {
            return Err(invalid(
                format!("images[{i}].subject"),
                format!(
                    "the chain of subjects from {} is deeper than {MAX_SUBJECT_DEPTH} or a cycle",
                    image.digest
                ),
            ));
        }
    }
    Ok(())
}

fn releases(m: &ImagesetManifest) -> Result<(), Invalid> {
    at_most("releases", m.releases.len(), MAX_RELEASES)?;
    let release_images: HashSet<&Digest> = m
        .images
        .iter()
        .filter(|i| i.kind == ImageKind::Release)
        .map(|i| &i.digest)
        .collect();
    for (i, r) in m.releases.iter().enumerate() {
        let field = |f: &str| format!("releases[{i}].{f}");
        let word = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
        };
        if !word(&r.version, b".+-_") {
            return Err(invalid(
                field("version"),
                format!(
                    "{}; expected a release version such as 4.14.3",
                    clipped(&r.version)
                ),
            ));
        }
        if !word(&r.arch, b"_") {
            return Err(invalid(
                field("arch"),
                format!(
                    "{}; expected an architecture such as amd64 or multi",
                    clipped(&r.arch)
                ),
            ));
        }
        at_most(&field("channels"), r.channels.len(), 64)?;
        for (j, c) in r.channels.iter().enumerate() {
            if !word(c, b".-_") {
                return Err(invalid(
                    format!("releases[{i}].channels[{j}]"),
                    format!("{}; expected a channel such as stable-4.14", clipped(c)),
                ));
            }
        }
        let by_digest = r
            .image
            .parse::<ImageRef>()
            .ok()
            .filter(|i| i.digest() == Some(&r.digest) && i.tag().is_none());
        if r.image.len() > MAX_NAME || by_digest.is_none() {
            return Err(invalid(
                field("image"),
                format!(
                    "{}; expected the release image's pull spec by digest, REGISTRY/REPOSITORY@{}",
                    clipped(&r.image),
                    r.digest
                ),
            ));
        }
        if !release_images.contains(&r.digest) {
            return Err(invalid(
                field("digest"),
                format!("{} is not an image of kind release", r.digest),
            ));
        }
        if !valid_tag(&r.tag) {
            return Err(invalid(
                field("tag"),
                format!("{}; expected a tag such as 4.14.3-x86_64", clipped(&r.tag)),
            ));
        }
        if let Some(s) = &r.signature {
            release_signature(s).map_err(|p| invalid(field("signature"), p))?;
        }
    }
    Ok(())
}

/// A source repository as the connected side records it: `registry/path`, exactly
/// as [`ImageRef::name`] spells it, without tag or digest.
fn source_repository(repository: &str) -> Result<(), String> {
    let expected = "expected REGISTRY/PATH as distribution names it (quay.io/team/app: a host, then lowercase path components)";
    if repository.len() > MAX_NAME {
        return Err(format!(
            "{}: {} bytes; {expected}",
            clipped(repository),
            repository.len()
        ));
    }
    match repository.parse::<ImageRef>() {
        Ok(r) if r.tag().is_none() && r.digest().is_none() && r.name() == repository => Ok(()),
        Ok(_) => Err(format!("{}; {expected}", clipped(repository))),
        Err(e) => Err(format!("{e}; {expected}")),
    }
}

fn sha256_hex(s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!("{}; expected 64 lowercase hex digits", clipped(s)))
    }
}

/// A release signature as the signature store serves it: base64 of an OpenPGP
/// message, which goes into the signature ConfigMap and from there to the cluster
/// version operator; anything else would be written into a cluster unchecked.
fn release_signature(s: &str) -> Result<(), String> {
    let expected = "expected base64 of an OpenPGP signature";
    if s.len() > MAX_RELEASE_SIGNATURE * 2 {
        return Err(format!("{} bytes; {expected}", s.len()));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("{}: not base64 ({e}); {expected}", clipped(s)))?;
    if bytes.len() > MAX_RELEASE_SIGNATURE || bytes.first().is_none_or(|b| b & 0x80 == 0) {
        return Err(format!(
            "{} decoded bytes that do not start an OpenPGP packet; {expected}",
            bytes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{PAYLOAD_OFFSET as OFFSET, forged_manifest, genuine_manifest as genuine};
    use proptest::prelude::*;

    #[test]
    fn the_genuine_manifest_passes() {
        check(&genuine(), OFFSET).unwrap();
    }

    /// A delete imageset's removed images are not in blobs[]; their fields are
    /// checked like those of images[], and only a later sequence may delete.
    #[test]
    fn deletes_are_checked_field_by_field_and_only_after_the_first_sequence() {
        let gone = || {
            let mut m = genuine();
            let mut d = m.images[2].clone();
            d.digest = Digest::of(b"gone");
            m.deletes = vec![d];
            m
        };
        let later = |mut m: ImagesetManifest| {
            m.sequence = 2;
            m.full = false;
            m
        };
        check_content(&later(gone())).unwrap();
        let e = check_content(&gone()).unwrap_err().to_string();
        assert!(
            e.starts_with("deletes: 1 entries in a full imageset at sequence 1"),
            "{e}"
        );
        type Forge = fn(&mut ImagesetManifest);
        let cases: &[(Forge, &str)] = &[
            (
                |m| m.deletes[0].repository = "host.io/../../x".into(),
                "deletes[0].repository: ",
            ),
            (
                |m| m.deletes[0].tag = Some("a/b".into()),
                "deletes[0].tag: ",
            ),
            (
                |m| m.deletes[0].kind = ImageKind::Referrer,
                "deletes[0].subject: missing",
            ),
            (
                |m| m.deletes[0].target_repository = Some("airlock-state".into()),
                "deletes[0].repository: ",
            ),
        ];
        for (forge, expected) in cases {
            let mut m = later(gone());
            forge(&mut m);
            let e = check_content(&m).unwrap_err().to_string();
            assert!(e.starts_with(expected), "expected {expected:?}, got {e:?}");
        }
    }

    /// A `CatalogSource` template crosses the gap and is applied to clusters:
    /// only on a catalog, within its bound, with keys Kubernetes takes.
    #[test]
    fn a_forged_catalog_source_template_is_refused() {
        type Forge = fn(&mut ImagesetManifest);
        let with = |t: crate::CatalogSourceTemplate| {
            move |m: &mut ImagesetManifest| {
                m.images[2].kind = ImageKind::Catalog;
                m.images[2].catalog_source = Some(t.clone());
            }
        };
        let mut fine = genuine();
        with(crate::CatalogSourceTemplate {
            display_name: Some("Site operators".into()),
            ..Default::default()
        })(&mut fine);
        check_content(&fine).unwrap();
        let cases: &[(Forge, &str)] = &[
            (
                |m| m.images[1].catalog_source = Some(Default::default()),
                "images[1].catalogSource: set on an image that is not a catalog",
            ),
            (
                |m| {
                    m.images[2].kind = ImageKind::Catalog;
                    m.images[2].catalog_source = Some(crate::CatalogSourceTemplate {
                        icon: Some(crate::CatalogIcon {
                            base64data: "A".repeat(70_000),
                            mediatype: "image/png".into(),
                        }),
                        ..Default::default()
                    });
                },
                "images[2].catalogSource: ",
            ),
            (
                |m| {
                    m.images[2].kind = ImageKind::Catalog;
                    m.images[2].catalog_source = Some(crate::CatalogSourceTemplate {
                        annotations: [("../../etc".to_string(), "x".to_string())].into(),
                        ..Default::default()
                    });
                },
                "images[2].catalogSource: annotations: ",
            ),
            (
                |m| {
                    m.images[2].kind = ImageKind::Catalog;
                    m.images[2].catalog_source = Some(crate::CatalogSourceTemplate {
                        secrets: vec!["a b".into()],
                        ..Default::default()
                    });
                },
                "images[2].catalogSource: secrets: ",
            ),
            (
                |m| {
                    m.images[2].kind = ImageKind::Catalog;
                    m.images[2].catalog_source = Some(crate::CatalogSourceTemplate {
                        annotations: [(
                            "olm.catalogImageTemplate".to_string(),
                            "evil.example/{kube_major_version}".to_string(),
                        )]
                        .into(),
                        ..Default::default()
                    });
                },
                "images[2].catalogSource: annotations: \"olm.catalogImageTemplate\" is OLM's own",
            ),
            (
                |m| {
                    m.images[2].kind = ImageKind::Catalog;
                    m.images[2].catalog_source = Some(crate::CatalogSourceTemplate {
                        grpc_pod_config: Some(crate::GrpcPodConfig {
                            security_context_config: Some("privileged".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                },
                "images[2].catalogSource: grpcPodConfig.securityContextConfig: ",
            ),
        ];
        for (forge, expected) in cases {
            let mut m = genuine();
            forge(&mut m);
            let e = check_content(&m).unwrap_err().to_string();
            assert!(e.starts_with(expected), "expected {expected:?}, got {e:?}");
        }
    }

    /// A platform filter decides which children of an index may be absent at
    /// the site, so it is held to the form the connected side writes.
    #[test]
    fn a_forged_platform_filter_is_refused() {
        type Forge = fn(&mut ImagesetManifest);
        let mut fine = genuine();
        fine.images[0].platforms = vec!["linux/amd64".into(), "linux/s390x".into()];
        check_content(&fine).unwrap();
        let cases: &[(Forge, &str)] = &[
            (
                |m| m.images[0].platforms = vec!["linux/../../x".into()],
                "images[0].platforms[0]: ",
            ),
            (
                |m| m.images[0].platforms = vec!["linux/s390x".into(), "linux/amd64".into()],
                "images[0].platforms[1]: not sorted or named twice",
            ),
            (
                |m| m.images[0].platforms = vec!["linux/amd64".into(), "linux/amd64".into()],
                "images[0].platforms[1]: not sorted or named twice",
            ),
            (
                |m| m.images[0].platforms = (0..65).map(|i| format!("linux/a{i:03}")).collect(),
                "images[0].platforms: 65 entries, more than the 64 allowed",
            ),
            (
                |m| {
                    let i = m
                        .images
                        .iter()
                        .position(|i| i.kind == ImageKind::Referrer)
                        .unwrap();
                    m.images[i].platforms = vec!["linux/amd64".into()];
                },
                "images[",
            ),
        ];
        for (forge, expected) in cases {
            let mut m = genuine();
            forge(&mut m);
            let e = check_content(&m).unwrap_err().to_string();
            assert!(e.starts_with(expected), "expected {expected:?}, got {e:?}");
        }
        let mut on_referrer = genuine();
        cases[4].0(&mut on_referrer);
        assert!(
            check_content(&on_referrer)
                .unwrap_err()
                .to_string()
                .contains("platforms: set on a referrer")
        );
    }

    #[test]
    fn each_forged_field_is_named() {
        type Forge = fn(&mut ImagesetManifest);
        let cases: &[(Forge, &str)] = &[
            (|m| m.format = "x".repeat(10_000), "format: \"xxx"),
            (|m| m.full = false, "full: false at sequence 1"),
            (
                |m| m.images[2].target_repository = Some("airlock-state".into()),
                "images[2].repository: \"quay.io/team/app\": would be published to airlock-state",
            ),
            (|m| m.created = "yesterday".into(), "created: \"yesterday\""),
            (
                |m| m.created = "2026-11-24T10:00:00+01:00".into(),
                "created: ",
            ),
            (
                |m| m.chunks[0].name = "/etc/passwd".into(),
                "chunks[0].name: \"/etc/passwd\"",
            ),
            (
                |m| m.chunks[0].sha256 = Some("0".repeat(64)),
                "chunks[0].sha256: present; the format has none for a data chunk",
            ),
            (
                |m| m.format = crate::FORMAT_V1.into(),
                "chunks[0].sha256: missing; the format has one for a data chunk",
            ),
            (
                |m| {
                    m.format = crate::FORMAT_V1.into();
                    m.chunks[0].sha256 = Some("G".repeat(64));
                },
                "chunks[0].sha256: \"GGG",
            ),
            (
                |m| m.blobs[2].parts[0].sha256 = Some("0".repeat(64)),
                "blobs[2].parts[0].sha256: present; the format has none for a blob in one part",
            ),
            (
                |m| m.images[0].repository = String::new(),
                "images[0].repository: ",
            ),
            (
                |m| m.images[0].repository = "Example.com/UPPER".into(),
                "images[0].repository: ",
            ),
            (
                |m| m.images[0].repository = "host.io/../../x".into(),
                "images[0].repository: ",
            ),
            (
                |m| m.images[0].repository = "ubi8/ubi".into(),
                "images[0].repository: \"ubi8/ubi\"; expected REGISTRY/PATH",
            ),
            (
                |m| m.images[0].repository = "quay.io/a/b:tag".into(),
                "images[0].repository: ",
            ),
            (
                |m| m.images[0].repository = "bad host.io/a".into(),
                "images[0].repository: ",
            ),
            (
                |m| m.images[0].tag = Some("-x".into()),
                "images[0].tag: \"-x\"",
            ),
            (|m| m.images[0].tag = Some("a/b".into()), "images[0].tag: "),
            (
                |m| m.images[0].source = "a".repeat(MAX_NAME + 1),
                "images[0].source: ",
            ),
            (
                |m| m.images[0].source = "NOT A REF".into(),
                "images[0].source: ",
            ),
            (
                |m| m.images[2].target_repository = Some("../x".into()),
                "images[2].targetRepository: \"../x\"",
            ),
            (
                |m| m.images[2].target_repository = Some("/abs".into()),
                "images[2].targetRepository: ",
            ),
            (
                |m| m.images[2].subject = Some(Digest::of(b"1")),
                "images[2].subject: set on an image that is not a referrer",
            ),
            (|m| m.images[1].subject = None, "images[1].subject: missing"),
            (
                // A referrer whose subject is itself: a cycle.
                |m| m.images[1].subject = Some(m.images[1].digest.clone()),
                "images[1].subject: the chain of subjects from",
            ),
            (
                |m| m.images[1].subject = Some(Digest::of(b"zz")),
                "images[1].subject: ",
            ),
            (
                |m| m.images[0].digest = m.blobs[2].digest.clone(),
                "images[0].digest: ",
            ),
            (
                |m| m.blobs[2].media_type = Some("application/vnd.oci.image.layer.v1.tar".into()),
                "blobs[2].mediaType: ",
            ),
            (
                |m| m.blobs[1].size = 5 << 20,
                "blobs[1].size: 5242880 bytes for a manifest",
            ),
            (
                |m| m.blobs[2].repository = "x".into(),
                "blobs[2].repository: ",
            ),
            (
                |m| m.blobs[2].digest = m.blobs[1].digest.clone(),
                "blobs[2].digest: ",
            ),
            (|m| m.blobs[2].parts.clear(), "blobs[2].parts: blob"),
            (
                |m| m.releases[0].signature = Some("not base64!".into()),
                "releases[0].signature: \"not base64!\": not base64",
            ),
            (
                |m| m.releases[0].signature = Some("aGVsbG8=".into()),
                "releases[0].signature: 5 decoded bytes that do not start an OpenPGP packet",
            ),
            (
                |m| m.releases[0].version = "4.14.3; rm -rf /".into(),
                "releases[0].version: ",
            ),
            (
                |m| m.releases[0].arch = "../amd64".into(),
                "releases[0].arch: ",
            ),
            (
                |m| m.releases[0].channels = vec!["stable 4.14".into()],
                "releases[0].channels[0]: ",
            ),
            (
                |m| m.releases[0].image = "quay.io/x/y:4.14".into(),
                "releases[0].image: ",
            ),
            (
                |m| m.releases[0].digest = m.blobs[1].digest.clone(),
                "releases[0].image: ",
            ),
            (|m| m.releases[0].tag = "4.14/3".into(), "releases[0].tag: "),
        ];
        for (i, (forge, want)) in cases.iter().enumerate() {
            let mut m = genuine();
            forge(&mut m);
            let err = check(&m, OFFSET).expect_err(want).to_string();
            assert!(
                err.starts_with(want),
                "case {i}: want {want:?}, got {err:?}"
            );
            assert!(err.len() < 600, "case {i}: {} bytes of message", err.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a forger writes into the string fields, the check answers
        /// without panicking, and a manifest it passes names its chunks as
        /// Airlock does. (What publishing makes of a passed manifest is checked
        /// where publishing is: airlock-common's publish tests.)
        #[test]
        fn the_check_never_panics_and_passes_only_airlock_s_chunk_names(m in forged_manifest()) {
            if check(&m, OFFSET).is_ok() {
                prop_assert_eq!(&m.chunks[0].name, &chunk_file_name(&m.uuid, 1, 1, 1));
            }
        }
    }
}
