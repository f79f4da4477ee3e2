use std::path::Path;

use airlock_config::{load, parse_all};

use super::check_config;

#[test]
fn oc_mirrors_own_helm_examples_are_taken() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/real/oc-mirror/imageset-configs");
    for f in [
        "v1alpha2/imageset-config-ref.yaml",
        "v2alpha1/image-set-config.yaml",
    ] {
        let loaded = load(&dir.join(f)).unwrap();
        check_config(&loaded).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(super::any(&loaded), "{f}");
    }
}

#[test]
fn every_helm_problem_is_named_with_its_position() {
    let text = "\
kind: ImageSetConfiguration
apiVersion: mirror.openshift.io/v2alpha1
mirror:
  helm:
    local:
    - name: nopath
    repositories:
    - name: ftp
      url: ftp://charts.example.com
    - name: oci-all
      url: oci://quay.io/charts
    - name: oci
      url: oci://quay.io/charts
      charts:
      - name: redis
        imagePaths: [\"{.spec[}\"]
";
    let loaded = parse_all(Path::new("isc.yaml"), text).unwrap().remove(0);
    let err = check_config(&loaded).unwrap_err();
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "mirror.helm.local[0].path",
            "mirror.helm.repositories[0].url",
            "mirror.helm.repositories[1].charts",
            "mirror.helm.repositories[2].charts[0].version",
            "mirror.helm.repositories[2].charts[0].imagePaths[0]",
        ]
    );
    let msg = err.to_string();
    assert!(
        msg.contains("isc.yaml:9:7: mirror.helm.repositories[0].url"),
        "{msg}"
    );
    assert!(msg.contains("expected kubectl's form"), "{msg}");
}

/// A chart file that cannot be read keeps the file system's error as its typed
/// source, and the message still says what to give instead.
#[tokio::test]
async fn an_unreadable_local_chart_keeps_the_io_error_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent-1.0.0.tgz");
    let helm = airlock_config::schema::Helm {
        local: vec![airlock_config::schema::HelmChart {
            name: "absent".into(),
            path: Some(missing.display().to_string()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let pool = airlock_registry::Pool::new(Default::default());
    let e = super::source::fetch_all(&helm, &pool).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("mirror.helm.local[0]: ")
            && text.contains("give the path of a packaged chart"),
        "{text}"
    );
    let io = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .expect("an io::Error in the chain");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}
