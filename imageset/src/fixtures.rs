//! Manifests for tests, here and in the crates that consume the format: a genuine
//! one to forge field by field, and the strings a forger tries. Built only for
//! tests (feature `fixtures` for other crates' tests).

use proptest::prelude::*;
use uuid::Uuid;

use crate::{
    BLOCK, BlobRecord, CHUNK_ENTRY_LEN, ChunkRecord, FORMAT, ImageKind, ImageRecord,
    ImagesetManifest, PartRecord, ReleaseRecord, TRAILER_LEN, chunk_file_name,
};
use airlock_oci::digest::Digest;
use airlock_oci::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

/// Where the payload of [`genuine_manifest`]'s one chunk starts.
pub const PAYLOAD_OFFSET: u64 = 4096;

/// A small manifest that passes [`crate::validate::check`] at [`PAYLOAD_OFFSET`]:
/// one chunk holding an index, a manifest and a layer; a release, a referrer and
/// an image with a target repository. Tests forge it field by field.
pub fn genuine_manifest() -> ImagesetManifest {
    let uuid = Uuid::from_u128(0x3f2a9c1e_0000_4000_8000_000000000001);
    let blob = |n: u8, size: u64, media_type: Option<&str>| BlobRecord {
        digest: Digest::of(&[n]),
        size,
        media_type: media_type.map(str::to_string),
        repository: "quay.io/team/app".into(),
        parts: vec![],
    };
    let mut blobs = vec![
        blob(1, 300, Some(OCI_INDEX)),
        blob(2, 500, Some(OCI_MANIFEST)),
        blob(3, 700, None),
        blob(4, 400, Some(DOCKER_MANIFEST)),
    ];
    for b in &mut blobs {
        b.parts = vec![PartRecord {
            chunk: 1,
            offset: 0,
            length: b.size,
            sha256: None,
        }];
    }
    let size = PAYLOAD_OFFSET
        + CHUNK_ENTRY_LEN
        + TRAILER_LEN
        + blobs
            .iter()
            .map(|b| BLOCK + b.size.next_multiple_of(BLOCK))
            .sum::<u64>();
    let image = |digest: &Digest, kind: ImageKind| ImageRecord {
        source: "quay.io/team/app:1.0".into(),
        repository: "quay.io/team/app".into(),
        tag: Some("1.0".into()),
        by_digest: false,
        digest: digest.clone(),
        target_repository: None,
        kind,
        subject: None,
        catalog_source: None,
        platforms: Vec::new(),
    };
    let mut referrer = image(&blobs[3].digest, ImageKind::Referrer);
    referrer.subject = Some(blobs[0].digest.clone());
    referrer.tag = Some(blobs[0].digest.tag_form() + ".sig");
    let mut retargeted = image(&blobs[1].digest, ImageKind::Generic);
    retargeted.target_repository = Some("mirrored/app".into());
    ImagesetManifest {
        format: FORMAT.into(),
        uuid,
        sequence: 1,
        full: true,
        created: "2026-11-24T10:00:00Z".into(),
        limit: size,
        chunks: vec![ChunkRecord {
            index: 1,
            name: chunk_file_name(&uuid, 1, 1, 1),
            size,
            sha256: None,
        }],
        parity: vec![],
        images: vec![
            image(&blobs[0].digest, ImageKind::Release),
            referrer,
            retargeted,
        ],
        releases: vec![ReleaseRecord {
            version: "4.14.3".into(),
            arch: "amd64".into(),
            channels: vec!["stable-4.14".into()],
            image: format!(
                "quay.io/openshift-release-dev/ocp-release@{}",
                blobs[0].digest
            ),
            digest: blobs[0].digest.clone(),
            tag: "4.14.3-x86_64".into(),
            signature: Some("iQEcBAABAgAGBQJkAAoJEA==".into()),
        }],
        blobs,
        deletes: Vec::new(),
    }
}

/// Strings a forger writes into a manifest's fields: empty, path traversal,
/// absolute paths, names of other registries, huge, and arbitrary printable and
/// Unicode text.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("../x.tar".to_string()),
        Just("/tmp/x".to_string()),
        Just("quay.io/../../x".to_string()),
        Just("Example.com/UPPER".to_string()),
        Just("quay.io/team/other".to_string()),
        Just("localhost:5000/a".to_string()),
        Just("[::1]:5000/a".to_string()),
        Just("a".repeat(70_000)),
        "[ -~]{0,24}",
        "\\PC{0,12}",
    ]
}

/// Writes `value` into the string field number `which` (mod 12) of `m`: the
/// fields a forger controls that reach names, paths and cluster objects.
fn forge_field(m: &mut ImagesetManifest, which: usize, value: String) {
    match which % 12 {
        0 => m.images[0].repository = value,
        1 => m.images[2].target_repository = Some(value),
        2 => m.images[0].tag = Some(value),
        3 => m.images[0].source = value,
        4 => m.blobs[2].repository = value,
        5 => m.blobs[1].media_type = Some(value),
        6 => m.chunks[0].name = value,
        7 => m.releases[0].signature = Some(value),
        8 => m.releases[0].image = value,
        9 => m.releases[0].version = value,
        10 => m.created = value,
        _ => m.images[1].tag = Some(value),
    }
}

/// [`genuine_manifest`] with up to three of its string fields (see
/// [`forge_field`]) replaced by [`hostile_string`]s.
pub fn forged_manifest() -> impl Strategy<Value = ImagesetManifest> {
    proptest::collection::vec((0usize..12, hostile_string()), 0..4).prop_map(|fields| {
        let mut m = genuine_manifest();
        for (which, value) in fields {
            forge_field(&mut m, which, value);
        }
        m
    })
}
