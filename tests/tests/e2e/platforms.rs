//! Platform filtering (`platforms`, oc-mirror v2's sparse manifest lists): only
//! the platforms asked for travel, each index byte for byte, and the site checks
//! that nothing the filter keeps is missing.

use std::collections::BTreeSet;

use airlock_tests::bins::{self, run};
use airlock_tests::forge;
use airlock_tests::images::{Format, Image, ImageBuilder, PushClient, index};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;
use serde_json::json;

use crate::util::*;

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

/// An image's manifest and every blob it references.
fn digests_of(image: &Image) -> Vec<&str> {
    std::iter::once(image.digest.as_str())
        .chain(image.blobs.iter().map(|b| b.digest.as_str()))
        .collect()
}

/// A source registry holding `team/app:1`, an index of three platforms
/// (amd64, arm64, s390x, layers from `seed`), and an `isc.yaml` naming it with
/// `platforms`.
struct Filtered {
    src: Registry,
    tmp: tempfile::TempDir,
    app: Image,
    config: std::path::PathBuf,
}

impl Filtered {
    fn new(seed: u64, platforms: &[&str]) -> Self {
        let src = Registry::plain().unwrap();
        let client = PushClient::new(&src).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let child = |arch: &str, seed: u64| {
            ImageBuilder::new(Format::Oci)
                .arch(arch)
                .layer(seed, 40_000)
                .build()
        };
        let app = index(
            Format::Oci,
            vec![
                child("amd64", seed),
                child("arm64", seed + 1),
                child("s390x", seed + 2),
            ],
            false,
        );
        app.push(&client, "team/app", Some("1")).unwrap();
        let config = tmp.path().join("isc.yaml");
        let listed: String = platforms
            .iter()
            .map(|arch| format!("    - os: linux\n      architecture: {arch}\n"))
            .collect();
        std::fs::write(
            &config,
            format!(
                "{HEAD}mirror:\n  additionalImages:\n  - name: {}/team/app:1\n    platforms:\n{listed}",
                src.addr()
            ),
        )
        .unwrap();
        Filtered {
            src,
            tmp,
            app,
            config,
        }
    }

    /// `create` into `out` with workspace `ws`, both under the temporary directory.
    fn create(&self, out: &str, ws: &str) -> (airlock_tests::bins::Output, std::path::PathBuf) {
        let out = self.tmp.path().join(out);
        let made = create(
            &self.config,
            &out,
            &self.tmp.path().join(ws),
            "1MiB",
            &self.src,
        );
        (made, out)
    }
}

#[test]
fn platforms_carry_only_what_is_asked_and_keep_the_index_byte_for_byte() {
    let f = Filtered::new(301, &["s390x", "amd64"]);
    let (tmp, app) = (&f.tmp, &f.app);
    let (amd, arm, s390x) = (&app.children[0], &app.children[1], &app.children[2]);
    let (made, out) = f.create("out", "ws");
    assert_eq!(made.code, 0, "{made}");
    let m = read_manifest(&out);
    assert_eq!(m.images[0].platforms, ["linux/amd64", "linux/s390x"]);
    assert_eq!(
        m.images[0].digest.to_string(),
        app.digest,
        "the index as it is"
    );
    let listed: BTreeSet<String> = m.blobs.iter().map(|b| b.digest.to_string()).collect();
    for d in digests_of(amd).into_iter().chain(digests_of(s390x)) {
        assert!(listed.contains(d), "{d} of a platform asked for travels");
    }
    for d in digests_of(arm) {
        assert!(!listed.contains(d), "{d} of arm64 does not travel");
    }
    let described = run(bins::disconnected().arg("describe").arg(&out));
    assert_eq!(described.code, 0, "{described}");
    assert!(
        described
            .stdout
            .contains(&format!("{} (only linux/amd64, linux/s390x)", app.digest)),
        "{described}"
    );

    // The test registry (distribution 2.8) refuses an index whose children it
    // does not all hold: the error says so and what to do; the platforms that
    // travelled are there byte for byte, and nothing is tagged.
    let dest = Registry::plain().unwrap();
    let refused = publish(&out, &dest, "m", &tmp.path().join("ws-d"));
    assert_ne!(refused.code, 0, "{refused}");
    assert!(
        refused.stderr.contains("MANIFEST_BLOB_UNKNOWN")
            && refused.stderr.contains("Allow sparse indexes")
            && refused.stderr.contains("remove platforms"),
        "{refused}"
    );
    for kept in [amd, s390x] {
        let at = inspect_raw_at(&dest, &format!("m/team/app@{}", kept.digest)).unwrap();
        assert_eq!(at, kept.manifest);
    }
    assert!(inspect_raw_at(&dest, &format!("m/team/app@{}", arm.digest)).is_err());
    assert!(inspect_raw_at(&dest, "m/team/app:1").is_err());

    // Without the filter every platform travels, and the same registry takes
    // it (a workspace of its own: at the site, a sequence that cannot be
    // published holds back those after it).
    std::fs::write(
        &f.config,
        format!(
            "{HEAD}mirror:\n  additionalImages:\n  - name: {}/team/app:1\n",
            f.src.addr()
        ),
    )
    .unwrap();
    let (made, whole) = f.create("whole", "ws2");
    assert_eq!(made.code, 0, "{made}");
    assert!(read_manifest(&whole).images[0].platforms.is_empty());
    let published = publish(&whole, &dest, "m", &tmp.path().join("ws-d2"));
    assert_eq!(published.code, 0, "{published}");
    assert_eq!(inspect_raw_at(&dest, "m/team/app:1").unwrap(), app.manifest);
}

/// The filter decides which children may be absent, so a forged one is
/// checked against the index itself before anything is accepted.
#[test]
fn a_filter_that_would_leave_out_a_child_it_keeps_is_refused_at_ingest() {
    let f = Filtered::new(311, &["amd64"]);
    let (tmp, app) = (&f.tmp, &f.app);
    let (arm, s390x) = (&app.children[1], &app.children[2]);
    let (made, out) = f.create("out", "ws");
    assert_eq!(made.code, 0, "{made}");
    let amd = app.children[0].digest.clone();
    type Forgery<'a> = (&'a str, Box<dyn Fn(&mut serde_json::Value)>, String);
    let forgeries: [Forgery<'_>; 3] = [
        (
            "wider",
            Box::new(|m| m["images"][0]["platforms"] = json!(["linux/amd64", "linux/s390x"])),
            format!(
                "{} for linux/amd64, linux/s390x, which the imageset does not list",
                s390x.digest
            ),
        ),
        (
            "child-as-blob",
            Box::new(move |m| {
                for b in m["blobs"].as_array_mut().unwrap() {
                    if b["digest"] == amd.as_str() {
                        b.as_object_mut().unwrap().remove("mediaType");
                    }
                }
            }),
            format!(
                "{} as a child manifest, which the imageset lists as a blob",
                app.children[0].digest
            ),
        ),
        (
            "whole-too",
            Box::new(|m| {
                let mut whole = m["images"][0].clone();
                whole.as_object_mut().unwrap().remove("platforms");
                whole["tag"] = json!("2");
                m["images"].as_array_mut().unwrap().push(whole);
            }),
            format!("{}, which the imageset does not list", arm.digest),
        ),
    ];
    for (name, edit, missing) in forgeries {
        let forged = tmp.path().join(name);
        copy_dir(&out, &forged);
        forge::rewrite(&forged, edit).unwrap();
        let dest = Registry::plain().unwrap();
        let refused = publish(&forged, &dest, "m", &tmp.path().join(format!("ws-{name}")));
        assert_eq!(refused.code, EX_DATA, "{name}: {refused}");
        assert!(
            refused
                .stderr
                .contains(&format!("manifest {} references {missing}", app.digest)),
            "{name}: {refused}"
        );
        assert!(catalog(&dest).is_empty(), "{name}: {:?}", catalog(&dest));
    }
}

/// A platform no image of the index has: the entry cannot be honoured.
#[test]
fn an_index_without_any_platform_asked_for_is_named_with_those_it_has() {
    let f = Filtered::new(321, &["ppc64le"]);
    let (refused, out) = f.create("out", "ws");
    assert_ne!(refused.code, 0, "{refused}");
    assert!(
        refused.stderr.contains(
            "has no image for linux/ppc64le (it has linux/amd64, linux/arm64, linux/s390x)"
        ),
        "{refused}"
    );
    assert!(!out.exists() || chunk_files(&out).is_empty());
}
