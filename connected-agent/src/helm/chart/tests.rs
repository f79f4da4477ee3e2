use super::*;

pub(crate) fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/helm/demo")
}

/// A gzipped tar of `entries` (name, bytes), each a regular file unless the
/// name ends in `@link`.
pub(crate) fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if let Some(target) = name.strip_suffix("@link") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, target, "/etc/passwd").unwrap();
            continue;
        }
        // `append_data` refuses `..`; write the name into the header directly.
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_chart_directory_with_its_subcharts_honouring_helmignore() {
    let (c, archive) = Chart::package_dir(&fixture()).unwrap();
    assert_eq!(
        (c.metadata.name.as_str(), c.metadata.version.as_str()),
        ("demo", "1.0.0")
    );
    assert_eq!(c.metadata.app_version.as_deref(), Some("2.1.0"));
    assert!(c.templates.contains_key("templates/_helpers.tpl"));
    assert!(c.templates.contains_key("templates/deployment.yaml"));
    assert!(c.files.contains_key("files/app.conf"));
    assert!(!c.files.contains_key("notes.orig"), "{:?}", c.files.keys());
    let subs: Vec<&str> = c
        .subcharts
        .iter()
        .map(|s| s.metadata.name.as_str())
        .collect();
    assert_eq!(subs, ["cache", "metrics"]);
    assert_eq!(c.values["image"]["repository"], "demo/app");
    // The package reads back as the same chart, and is the same every time.
    let again = Chart::from_archive(&archive, "demo.tgz").unwrap();
    assert_eq!(again.templates, c.templates);
    assert_eq!(again.files, c.files);
    assert_eq!(Chart::package_dir(&fixture()).unwrap().1, archive);
}

#[test]
fn a_packaged_chart_with_a_packaged_subchart() {
    let sub = tgz(&[
        (
            "sub/Chart.yaml",
            b"apiVersion: v2\nname: sub\nversion: 0.1.0\n",
        ),
        ("sub/templates/a.yaml", b"a: 1\n"),
    ]);
    let top = tgz(&[
        (
            "top/Chart.yaml",
            b"apiVersion: v1\nname: top\nversion: 2.0.0\n",
        ),
        (
            "top/requirements.yaml",
            b"dependencies:\n- name: sub\n  condition: sub.on\n",
        ),
        ("top/charts/sub-0.1.0.tgz", &sub),
    ]);
    let c = Chart::from_archive(&top, "top-2.0.0.tgz").unwrap();
    assert_eq!(
        c.metadata.dependencies[0].condition.as_deref(),
        Some("sub.on")
    );
    assert_eq!(c.subcharts[0].metadata.name, "sub");
    assert!(c.subcharts[0].templates.contains_key("templates/a.yaml"));
    assert_eq!(c.values, serde_json::json!({}));
}

#[test]
fn forged_archives_are_refused_naming_the_entry() {
    let chart = b"apiVersion: v2\nname: x\nversion: 1.0.0\n".as_slice();
    type Entries<'a> = &'a [(&'a str, &'a [u8])];
    let cases: [(Entries<'_>, &str); 5] = [
        (
            &[("x/Chart.yaml", chart), ("x/../../etc/cron.d/evil", b"x")],
            "not a plain relative path",
        ),
        (
            &[("x/Chart.yaml", chart), ("/etc/passwd", b"x")],
            "not a plain relative path",
        ),
        (
            &[("x/Chart.yaml", chart), ("x/templates/l@link", b"")],
            "link or device",
        ),
        (
            &[("x/Chart.yaml", chart), ("y/values.yaml", b"a: 1")],
            "one top directory",
        ),
        (&[("x/values.yaml", b"a: 1")], "no Chart.yaml"),
    ];
    for (entries, want) in cases {
        let e = Chart::from_archive(&tgz(entries), "forged.tgz").unwrap_err();
        assert!(e.to_string().starts_with("forged.tgz"), "{e}");
        assert!(e.message.contains(want), "{e} (wanted {want})");
    }
    let e = Chart::from_archive(b"not gzip at all", "junk.tgz").unwrap_err();
    assert!(e.message.contains("not a gzipped tar"), "{e}");
    let e = Chart::from_archive(&tgz(&[("x/Chart.yaml", b"name: [")]), "bad.tgz").unwrap_err();
    assert_eq!(e.origin, "bad.tgz: Chart.yaml");
}
