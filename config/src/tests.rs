use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/real/oc-mirror/imageset-configs")
}

fn parse(text: &str) -> Result<Vec<LoadedConfig>, ConfigError> {
    parse_all(Path::new("isc.yaml"), text)
}

/// The rendered error must name the file, the line and the field.
fn assert_error(text: &str, step: fn(&LoadedConfig) -> Result<(), ConfigError>, want: &[&str]) {
    let err = match parse(text) {
        Err(e) => e,
        Ok(docs) => step(&docs[0]).expect_err("config must be refused"),
    };
    let msg = err.to_string();
    for w in want {
        assert!(msg.contains(w), "error {msg:?} lacks {w:?}");
    }
}

fn ok(_: &LoadedConfig) -> Result<(), ConfigError> {
    Ok(())
}

#[test]
fn every_real_oc_mirror_config_parses() {
    let mut files = Vec::new();
    for version in ["v1alpha2", "v2alpha1"] {
        for entry in std::fs::read_dir(fixtures().join(version)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    assert_eq!(files.len(), 6, "fixture set changed: {files:?}");
    let mut documents = 0;
    for file in &files {
        let docs = load_all(file).unwrap_or_else(|e| panic!("{e}"));
        for d in &docs {
            assert!(d.config.mirror.is_some(), "{}", file.display());
        }
        documents += docs.len();
    }
    // The filter-catalog example holds six documents.
    assert_eq!(documents, 11);
}

#[test]
fn real_configs_keep_their_fields() {
    let doc = load(&fixtures().join("v1alpha2/imageset-config-ref.yaml")).unwrap();
    let c = &doc.config;
    let sc = c
        .storage_config
        .as_ref()
        .unwrap()
        .registry
        .as_ref()
        .unwrap();
    assert_eq!(sc.image_url, "localhost:5000/test:latest");
    assert!(sc.skip_tls);
    let m = c.mirror.as_ref().unwrap();
    let p = m.platform.as_ref().unwrap();
    assert_eq!(p.architectures, ["s390x"]);
    assert_eq!(p.channels[1].min_version.as_deref(), Some("4.6.13"));
    assert!(p.graph);
    assert_eq!(
        m.operators[0].packages[2].channels[0]
            .max_version
            .as_deref(),
        Some("1.7.5")
    );
    assert_eq!(m.blocked_images.len(), 3);
    assert_eq!(
        m.helm.as_ref().unwrap().repositories[0].charts[0]
            .version
            .as_deref(),
        Some("5.0.0")
    );
    doc.validate().unwrap();

    let doc = load(&fixtures().join("v2alpha1/config-88132-target-repo-tag.yaml")).unwrap();
    doc.validate().unwrap();
    doc.check_supported().unwrap();
    let images = doc.additional_images().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(
        images[0].source.to_string(),
        "registry.redhat.io/ubi9/ubi-minimal:latest"
    );
    assert_eq!(images[0].target_repo.as_deref(), Some("ubi-repo"));
    assert_eq!(images[0].target_tag.as_deref(), Some("ubi-v9"));
}

#[test]
fn oc_mirror_rule_platforms_and_architectures_exclusive() {
    let doc = load(&fixtures().join("v2alpha1/isc-platforms-and-archs.yaml")).unwrap();
    let err = doc.validate().unwrap_err().to_string();
    assert!(err.contains("cannot be used together"), "{err}");
    assert!(
        err.contains("isc-platforms-and-archs.yaml:10:5: mirror.platform.platforms"),
        "{err}"
    );
}

#[test]
fn fields_not_acted_on_are_refused_with_their_positions() {
    // oc-mirror's own example, with Helm charts, is taken whole.
    let doc = load(&fixtures().join("v2alpha1/image-set-config.yaml")).unwrap();
    doc.check_supported().unwrap();
    let text = "kind: ImageSetConfiguration\napiVersion: mirror.openshift.io/v2alpha1\nmirror:\n  helm:\n    local:\n    - name: a\n      path: a.tgz\n  samples:\n  - name: quay.io/a/b:1\n";
    let err = parse(text).unwrap()[0].check_supported().unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["mirror.samples"]);
    assert!(
        err.to_string().contains("isc.yaml:8:3: mirror.samples"),
        "{err}"
    );
}

#[test]
fn multi_document_file_is_refused_for_one_run() {
    let err = load(&fixtures().join("v1alpha2/imageset-config-filter-catalog.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("holds 6 ImageSetConfiguration documents"),
        "{err}"
    );
}

const HEAD: &str = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\n";

#[test]
fn unknown_field_names_field_and_line() {
    let text =
        format!("{HEAD}mirror:\n  additionalImages:\n  - name: quay.io/a/b:1\n    targetTags: x\n");
    assert_error(
        &text,
        ok,
        &[
            "isc.yaml:6:5",
            "mirror.additionalImages[0]",
            "unknown field `targetTags`",
        ],
    );
}

#[test]
fn wrong_type_names_field_and_line() {
    let text = format!("{HEAD}archiveSize: big\nmirror: {{}}\n");
    assert_error(&text, ok, &["isc.yaml:3:14", "archiveSize", "invalid type"]);
    let text = format!("{HEAD}mirror:\n  additionalImages:\n    name: x\n");
    assert_error(
        &text,
        ok,
        &[
            "isc.yaml:5",
            "mirror.additionalImages",
            "expected a sequence",
        ],
    );
}

#[test]
fn wrong_api_version_and_kind() {
    assert_error(
        "apiVersion: mirror.openshift.io/v1\nkind: ImageSetConfiguration\nmirror: {}\n",
        ok,
        &["isc.yaml:1:1: apiVersion: unknown apiVersion \"mirror.openshift.io/v1\""],
    );
    assert_error(
        "apiVersion: mirror.openshift.io/v1alpha2\nkind: ImageSetConfig\nmirror: {}\n",
        ok,
        &[
            "isc.yaml:2:1: kind: unknown kind \"ImageSetConfig\"",
            "expected ImageSetConfiguration",
        ],
    );
    assert_error(
        "mirror: {}\n",
        ok,
        &["missing field `apiVersion`", "isc.yaml:1:1"],
    );
}

#[test]
fn field_of_the_other_schema_version() {
    let text = "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nstorageConfig:\n  local:\n    path: /x\nmirror: {}\n";
    assert_error(
        text,
        ok,
        &["isc.yaml:3:1: storageConfig: field exists only in mirror.openshift.io/v1alpha2"],
    );
    let text = "apiVersion: mirror.openshift.io/v1alpha2\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n  - name: a/b\n    targetRepo: c\n";
    assert_error(
        text,
        ok,
        &[
            "isc.yaml:6:5: mirror.additionalImages[0].targetRepo: field exists only in mirror.openshift.io/v2alpha1",
        ],
    );
}

#[test]
fn semantic_errors_name_field_and_line() {
    let text = format!(
        "{HEAD}mirror:\n  additionalImages:\n  - name: quay.io/a/b:1\n  - name: quay.io/UPPER/b\n"
    );
    assert_error(
        &text,
        LoadedConfig::validate,
        &[
            "isc.yaml:6:5: mirror.additionalImages[1].name",
            "must be lowercase",
        ],
    );
    let text = format!(
        "{HEAD}mirror:\n  platform:\n    channels:\n    - name: stable-4.14\n    - name: stable-4.14\n"
    );
    assert_error(
        &text,
        LoadedConfig::validate,
        &[
            "isc.yaml:7:7: mirror.platform.channels[1].name",
            "duplicate found",
        ],
    );
    // What the disconnected side would refuse is refused here, before create.
    let text = format!(
        "{HEAD}mirror:\n  operators:\n  - catalog: quay.io/a/index:v4.14\n    targetCatalog: ../UP\n    targetTag: -x\n"
    );
    assert_error(
        &text,
        LoadedConfig::validate,
        &[
            "mirror.operators[0].targetCatalog: invalid repository path \"../UP\"",
            "mirror.operators[0].targetTag: invalid tag \"-x\"",
        ],
    );
    let text = format!(
        "{HEAD}mirror:\n  additionalImages:\n  - name: quay.io/a/b:1\n    targetRepo: {}\n",
        "a".repeat(256)
    );
    assert_error(
        &text,
        LoadedConfig::validate,
        &["mirror.additionalImages[0].targetRepo: invalid repository path"],
    );
    let text = format!("{HEAD}archiveSize: -1\nmirror: {{}}\n");
    assert_error(
        &text,
        LoadedConfig::validate,
        &["isc.yaml:3:1: archiveSize: must be a whole number"],
    );
    assert_error(
        HEAD,
        LoadedConfig::validate,
        &["missing the `mirror` stanza"],
    );
    let text = "apiVersion: mirror.openshift.io/v1alpha2\nkind: ImageSetConfiguration\nmirror:\n  operators:\n  - catalog: c\n    packages:\n    - name: p\n      minVersion: 1.0.0\n      channels:\n      - name: stable\n        maxVersion: 2.0.0\n";
    assert_error(
        text,
        LoadedConfig::validate,
        &["isc.yaml:10:9", "mixing both filtering"],
    );
}

#[test]
fn additional_image_defaults_and_archive_size() {
    let text = format!(
        "{HEAD}archiveSize: 2\nmirror:\n  additionalImages:\n  - name: alpine\n  - name: docker://localhost:5000/a/b@sha256:d31c6ea5c50be93d6eb94d2b508f0208e84a308c011c6454ebf291d48b37df19\n"
    );
    let docs = parse(&text).unwrap();
    let d = &docs[0];
    d.validate().unwrap();
    d.check_supported().unwrap();
    assert_eq!(d.archive_size(), Some(ByteSize(2 << 30)));
    let images = d.additional_images().unwrap();
    assert_eq!(
        images[0].source.to_string(),
        "docker.io/library/alpine:latest"
    );
    assert_eq!(
        images[1].source.tag(),
        None,
        "a digest reference gets no default tag"
    );
}

#[test]
fn path_patterns_match_indices_only() {
    assert!(path_matches("a[*].b", "a[12].b"));
    assert!(!path_matches("a[*].b", "a[].b"));
    assert!(!path_matches("a[*].b", "a[1].bc"));
    assert!(path_matches("storageConfig", "storageConfig"));
    assert!(!path_matches("storageConfig", "storageConfig.local"));
}

/// A config with a 5 MB image name gets an error of a few hundred bytes (one with a
/// 50 MB name once made 150 MB of stderr).
#[test]
fn an_enormous_image_name_is_quoted_clipped() {
    let name = format!("quay.io/a/{}:1", "B".repeat(5_000_000));
    let text = format!(
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n  - name: {name}\n"
    );
    let docs = parse(&text).unwrap();
    let msg = docs[0].validate().unwrap_err().to_string();
    assert!(msg.len() < 1_000, "{} bytes of error", msg.len());
    assert!(
        msg.contains("mirror.additionalImages[0].name") && msg.contains("5000012 bytes"),
        "{msg}"
    );
}

#[test]
fn platforms_filter_images_sorted_once_and_a_malformed_one_is_refused_at_its_line() {
    let text = format!(
        "{HEAD}mirror:\n  additionalImages:\n  - name: quay.io/a/b:1\n    platforms:\n    - os: linux\n      architecture: s390x\n    - os: linux\n      architecture: amd64\n    - os: linux\n      architecture: s390x\n"
    );
    let docs = parse(&text).unwrap();
    docs[0].validate().unwrap();
    docs[0].check_supported().unwrap();
    let images = docs[0].additional_images().unwrap();
    assert_eq!(images[0].platforms, ["linux/amd64", "linux/s390x"]);

    for (at, body) in [
        (
            "isc.yaml:9:7: mirror.additionalImages[0].platforms[1]",
            "  additionalImages:\n  - name: quay.io/a/b:1\n    platforms:\n    - os: linux\n      architecture: amd64\n    - os: linux\n      architecture: arm/v8\n",
        ),
        (
            "isc.yaml:7:7: mirror.operators[0].platforms[0]",
            "  operators:\n  - catalog: quay.io/a/index:v1\n    platforms:\n    - os: Linux\n      architecture: amd64\n",
        ),
        (
            "isc.yaml:6:7: mirror.platform.platforms[0]",
            "  platform:\n    platforms:\n    - os: ''\n      architecture: amd64\n    channels:\n    - name: stable-4.21\n",
        ),
    ] {
        assert_error(
            &format!("{HEAD}mirror:\n{body}"),
            LoadedConfig::validate,
            &[at, "lowercase letters, digits or '_'"],
        );
    }
}
