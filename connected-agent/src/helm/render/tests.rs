use super::*;
use crate::helm::chart::tests::fixture;

fn images_of(chart: &Chart, extra: &[&str]) -> Vec<String> {
    let extra: Vec<ImagePath> = extra.iter().map(|p| ImagePath::parse(p).unwrap()).collect();
    images(chart, "demo", &extra)
        .unwrap()
        .into_iter()
        .map(|f| f.image)
        .collect()
}

#[test]
fn the_demo_chart_names_its_enabled_images_only() {
    let chart = Chart::package_dir(&fixture()).unwrap().0;
    assert_eq!(
        images_of(&chart, &[]),
        [
            "REGISTRY/demo/app:2.1.0",
            "REGISTRY/demo/cache:3.0",
            "REGISTRY/demo/init:1.0"
        ]
    );
    let found = images(&chart, "demo", &[]).unwrap();
    assert_eq!(
        found[1].template,
        "demo/charts/cache/templates/statefulset.yaml"
    );
}

#[test]
fn image_paths_add_to_the_defaults() {
    let chart = Chart::package_dir(&fixture()).unwrap().0;
    let images = images_of(
        &chart,
        &["{.spec.jobTemplate.spec.template.spec.containers[*].image}"],
    );
    assert!(
        images.contains(&"REGISTRY/demo/backup:1.0".to_string()),
        "{images:?}"
    );
    assert!(images.contains(&"REGISTRY/demo/app:2.1.0".to_string()));
}

#[test]
fn values_enable_the_sidecar_and_the_subchart() {
    let mut chart = Chart::package_dir(&fixture()).unwrap().0;
    chart.values["sidecar"]["enabled"] = true.into();
    chart.values["global"]["metrics"] = serde_json::json!({"enabled": true});
    chart.values.as_object_mut().unwrap().remove("metrics");
    let images = images_of(&chart, &[]);
    assert!(
        images.contains(&"REGISTRY/demo/sidecar:1.0".to_string()),
        "{images:?}"
    );
    assert!(
        images.contains(&"REGISTRY/demo/metrics:1.0".to_string()),
        "{images:?}"
    );
}

#[test]
fn a_template_that_fails_names_chart_file_and_line() {
    let mut chart = Chart::package_dir(&fixture()).unwrap().0;
    chart.templates.insert(
        "templates/broken.yaml".into(),
        "a: 1\nb: {{ .Values.image.tag | required \"image.tag is required\" }}\n".into(),
    );
    let e = images(&chart, "demo", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "demo/templates/broken.yaml:2: image.tag is required"
    );
}

#[test]
fn output_that_is_not_yaml_names_the_template() {
    let mut chart = Chart::package_dir(&fixture()).unwrap().0;
    chart
        .templates
        .insert("templates/bad.yaml".into(), "a: [1\n".into());
    let e = images(&chart, "demo", &[]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("demo/templates/bad.yaml: the rendered output is not YAML"),
        "{e}"
    );
}

#[test]
fn coalesce_lets_the_parent_win_and_null_remove() {
    let d = serde_json::json!({"a": {"b": 1, "c": 2}, "d": 3});
    let o = serde_json::json!({"a": {"b": 9}, "d": null, "e": 4});
    assert_eq!(
        coalesce(&d, &o),
        serde_json::json!({"a": {"b": 9, "c": 2}, "e": 4})
    );
}

#[test]
fn kubectl_paths_with_and_without_braces() {
    for p in [
        "{.spec.containers[*].image}",
        ".spec.containers[*].image",
        "$.spec.containers[*].image",
    ] {
        let path = ImagePath::parse(p).unwrap();
        let obj = serde_json::json!({"spec": {"containers": [{"image": "a"}, {"image": "b"}]}});
        assert_eq!(path.path.query(&obj).all().len(), 2, "{p}");
    }
    assert!(ImagePath::parse("{.spec[}").is_err());
}

/// A parent with subchart `sub` under `dependencies` (`deps` YAML), the
/// subchart's values `sub_values`, and the parent's `values`.
fn with_sub(deps: &str, sub_values: &str, values: &str) -> Chart {
    let sub = "apiVersion: v2\nname: sub\nversion: 0.1.0\n";
    let pod = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: {{ .Values.image }}-{{ .Values.global.tag }}\n";
    let top = crate::helm::chart::tests::tgz(&[
        ("top/Chart.yaml", format!("apiVersion: v2\nname: top\nversion: 1.0.0\ndependencies:\n{deps}").as_bytes()),
        ("top/values.yaml", values.as_bytes()),
        (
            "top/templates/cm.yaml",
            b"apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: seen/{{ .Values.sub.image }}\n",
        ),
        ("top/charts/sub/Chart.yaml", sub.as_bytes()),
        ("top/charts/sub/values.yaml", sub_values.as_bytes()),
        ("top/charts/sub/templates/pod.yaml", pod.as_bytes()),
    ]);
    Chart::from_archive(&top, "top.tgz").unwrap()
}

#[test]
fn subchart_defaults_decide_conditions_and_reach_the_parent_and_aliases_render_each() {
    // The subchart's own default turns it off; the parent still sees its values.
    let chart = with_sub(
        "- name: sub\n  condition: sub.enabled\n",
        "enabled: false\nimage: q.io/sub\n",
        "global:\n  tag: g\n",
    );
    assert_eq!(images_of(&chart, &[]), ["seen/q.io/sub"]);
    // The parent turns it on.
    let chart = with_sub(
        "- name: sub\n  condition: sub.enabled\n",
        "enabled: false\nimage: q.io/sub\n",
        "global:\n  tag: g\nsub:\n  enabled: true\n",
    );
    assert_eq!(images_of(&chart, &[]), ["q.io/sub-g", "seen/q.io/sub"]);
    // Under two aliases, with values of their own.
    let chart = with_sub(
        "- name: sub\n  alias: one\n- name: sub\n  alias: two\n",
        "image: q.io/sub\n",
        "global:\n  tag: g\none:\n  image: q.io/one\n",
    );
    // (The parent has no `sub` values then: its own image renders empty.)
    assert_eq!(
        images_of(&chart, &[]),
        ["q.io/one-g", "q.io/sub-g", "seen/"]
    );
}

#[test]
fn tags_of_the_top_chart_enable_a_subchart_without_a_condition() {
    let off = with_sub(
        "- name: sub\n  tags: [extra]\n",
        "image: q.io/sub\n",
        "global:\n  tag: g\ntags:\n  extra: false\n",
    );
    assert_eq!(images_of(&off, &[]), ["seen/q.io/sub"]);
    let on = with_sub(
        "- name: sub\n  tags: [extra, other]\n",
        "image: q.io/sub\n",
        "global:\n  tag: g\ntags:\n  extra: false\n  other: true\n",
    );
    assert_eq!(images_of(&on, &[]), ["q.io/sub-g", "seen/q.io/sub"]);
}
