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
