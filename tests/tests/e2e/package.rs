//! What a site installs: `scripts/package` makes the .deb and the .rpm from the
//! binaries this suite runs. The .deb is unpacked into a scratch root (`dpkg -x`),
//! its postinst run there as dpkg runs it for another root (`DPKG_ROOT`), and its
//! units verified by systemd; the .rpm, read by rpm and unpacked by rpm2archive,
//! must carry the same files, byte for byte.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_tests::bins::{self, run, run_ok};

use crate::util::systemd_analyze_verify;

const BINARIES: [&str; 3] = ["airlock-connected", "airlock-disconnected", "airlockctl"];
const UNITS: [&str; 2] = ["airlock-connected", "airlock-disconnected"];
const CONFIGS: [&str; 3] = [
    "connected-agent.yaml",
    "disconnected-agent.yaml",
    "imageset-config.yaml",
];

#[test]
fn the_packages_install_binaries_units_configs_docs_the_user_and_its_state_directories() {
    let repo = airlock_tests::repo_dir();
    let out = run(Command::new(repo.join("scripts/package"))
        .arg("--bin-dir")
        .arg(bins::bin_dir()));
    assert_eq!(out.code, 0, "scripts/package failed:\n{out}");
    let deb = only_file(&repo.join("target/package"), "deb");
    let rpm = only_file(&repo.join("target/package"), "rpm");
    let version = env!("CARGO_PKG_VERSION");

    // The control fields a site's apt sees.
    let field = |name: &str| {
        run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .stdout
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "airlock");
    assert_eq!(field("Version"), format!("{version}-1"));
    let depends = field("Depends");
    assert!(
        depends.contains("libc6") && depends.contains("systemd"),
        "Depends: {depends}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let control = scratch.path().join("control");
    run_ok(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    run_ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // The binaries run, and are the version packaged.
    for b in BINARIES {
        let path = root.join("usr/bin").join(b);
        assert_eq!(mode(&path) & 0o111, 0o111, "{b} is not executable");
        let out = run_ok(Command::new(&path).arg("--version"));
        assert!(out.stdout.contains(version), "{b} --version: {out}");
    }
    // The units, as systemd reads them, against the installed binaries; the
    // documentation they point at is installed.
    for u in UNITS {
        let unit =
            std::fs::read_to_string(root.join(format!("usr/lib/systemd/system/{u}.service")))
                .unwrap();
        systemd_analyze_verify(u, &unit, &root.join("usr/bin").join(u));
        for doc in unit
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation="))
        {
            let path = doc.strip_prefix("file:///").expect("a file:// URL");
            assert!(root.join(path).is_file(), "{u}: {doc} is not installed");
        }
    }
    // The example configurations, as dpkg's conffiles (an upgrade keeps a site's edits).
    for c in CONFIGS {
        assert_eq!(
            std::fs::read(root.join("etc/airlock").join(c)).unwrap(),
            std::fs::read(repo.join("deploy").join(c)).unwrap(),
            "{c}"
        );
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    let expected: Vec<String> = CONFIGS
        .iter()
        .map(|c| format!("/etc/airlock/{c}"))
        .collect();
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), expected);
    // A man page for every page the binaries make, that man(1) renders from the
    // compressed file; completions as the binaries print them.
    let made = tempfile::tempdir().unwrap();
    for b in BINARIES {
        run_ok(bins::named(b).arg("man").arg("--out").arg(made.path()));
        for (shell, path) in [
            ("bash", format!("usr/share/bash-completion/completions/{b}")),
            ("zsh", format!("usr/share/zsh/vendor-completions/_{b}")),
            (
                "fish",
                format!("usr/share/fish/vendor_completions.d/{b}.fish"),
            ),
        ] {
            let printed = run_ok(bins::named(b).args(["completion", shell])).stdout;
            assert_eq!(
                std::fs::read_to_string(root.join(&path)).unwrap(),
                printed,
                "{path}"
            );
        }
    }
    let man1 = root.join("usr/share/man/man1");
    assert_eq!(
        file_names(&man1),
        file_names(made.path())
            .into_iter()
            .map(|n| format!("{n}.gz"))
            .collect::<Vec<_>>()
    );
    let rendered = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(man1.join("airlock-disconnected-publish.1.gz"))
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat"),
    );
    assert!(rendered.stdout.contains("--from"), "{rendered}");
    assert_eq!(
        mode(&root.join("usr/share/airlock/make-certs.sh")) & 0o111,
        0o111
    );

    // The maintainer scripts, as dpkg runs them for another root: install, then
    // an upgrade's configure (idempotent), then removal. A `systemctl` first in
    // PATH records any call: with DPKG_ROOT set, none may reach the host's systemd
    // (on a host running systemd; elsewhere the scripts skip systemctl anyway, and
    // the stub keeps a broken script from touching a developer's machine).
    let stub = scratch.path().join("stub");
    std::fs::create_dir(&stub).unwrap();
    let calls = scratch.path().join("systemctl-calls");
    std::fs::write(
        stub.join("systemctl"),
        format!("#!/bin/sh\necho \"$@\" >>'{}'\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(stub.join("systemctl"), PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", stub.display(), std::env::var("PATH").unwrap());
    let maintainer = |script: &str, args: &[&str]| {
        run_ok(
            Command::new("sh")
                .arg(control.join(script))
                .args(args)
                .env("DPKG_ROOT", &root)
                .env("PATH", &path),
        );
    };
    maintainer("postinst", &["configure"]);
    let account = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(root.join("etc").join(file)).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("airlock:")).collect();
        assert_eq!(lines.len(), 1, "one airlock entry in /etc/{file}:\n{text}");
        lines[0].split(':').map(String::from).collect()
    };
    let user = account("passwd");
    let uid: u32 = user[2].parse().unwrap();
    let gid: u32 = account("group")[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {user:?}");
    assert_eq!(user[3], gid.to_string(), "{user:?}");
    assert_eq!(user[5], "/var/lib/airlock");
    assert!(user[6].ends_with("nologin"), "{user:?}");
    maintainer("postinst", &["configure", "0.0.1-1"]);
    assert_eq!(
        account("passwd"),
        user,
        "an upgrade keeps the user as it is"
    );
    // Every directory the example configurations name, owned by the user and its
    // group, closed to others; the drop directory open to the group (setgid).
    let mut named = Vec::new();
    for c in CONFIGS {
        let text = std::fs::read_to_string(root.join("etc/airlock").join(c)).unwrap();
        named.extend(
            text.split_whitespace()
                .filter(|w| w.starts_with("/var/lib/airlock/"))
                .map(str::to_string),
        );
    }
    assert!(named.len() >= 6, "{named:?}");
    for dir in named.iter().map(String::as_str).chain(["/var/lib/airlock"]) {
        let path = root.join(dir.trim_start_matches('/'));
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert!(meta.is_dir(), "{dir}");
        let want = if dir.ends_with("/drop") {
            0o2770
        } else {
            0o750
        };
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (uid, gid, want),
            "{dir}"
        );
    }
    maintainer("prerm", &["remove"]);
    maintainer("postrm", &["remove"]);
    maintainer("postrm", &["purge"]);
    assert!(
        !calls.exists(),
        "systemctl called for another root: {}",
        std::fs::read_to_string(&calls).unwrap_or_default()
    );
    assert!(
        root.join("var/lib/airlock/drop").is_dir(),
        "purge keeps the state"
    );

    // The .rpm: the same name and version, its configuration files marked, the
    // same scriptlet work, and the same files byte for byte (RHEL's zsh
    // completion directory aside).
    let query = |args: &[&str]| run_ok(Command::new("rpm").arg("-qp").args(args).arg(&rpm)).stdout;
    assert_eq!(
        query(&["--qf", "%{NAME} %{VERSION} %{RELEASE}"]),
        format!("airlock {version} 1")
    );
    assert!(
        query(&["--requires"]).lines().any(|l| l == "systemd"),
        "{}",
        query(&["--requires"])
    );
    assert_eq!(
        query(&["--configfiles"]).lines().collect::<Vec<_>>(),
        expected
    );
    let scripts = query(&["--scripts"]);
    assert!(
        scripts.contains("systemd-sysusers airlock.conf")
            && scripts.contains("systemd-tmpfiles --create airlock.conf"),
        "{scripts}"
    );
    let rpm_root = scratch.path().join("rpm-root");
    std::fs::create_dir(&rpm_root).unwrap();
    let archive = scratch.path().join("rpm.tar");
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("rpm2archive -n - <\"$0\" >\"$1\"")
            .arg(&rpm)
            .arg(&archive),
    );
    tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .unpack(&rpm_root)
        .unwrap();
    let mut from_deb = files(&root);
    // What dpkg-deb adds for Debian alone, and what the postinst made.
    from_deb.retain(|p, _| {
        !p.starts_with("usr/share/doc/airlock/copyright")
            && !p.starts_with("etc/")
            && !p.starts_with("var/")
    });
    for c in CONFIGS {
        let p = format!("etc/airlock/{c}");
        from_deb.insert(p.clone(), std::fs::read(root.join(&p)).unwrap());
    }
    let from_rpm: BTreeMap<String, Vec<u8>> = files(&rpm_root)
        .into_iter()
        .map(|(p, b)| {
            (
                p.replace(
                    "usr/share/zsh/site-functions/",
                    "usr/share/zsh/vendor-completions/",
                ),
                b,
            )
        })
        .collect();
    assert_eq!(
        from_deb.keys().collect::<Vec<_>>(),
        from_rpm.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &from_deb {
        assert!(
            &from_rpm[path] == bytes,
            "{path} differs between .deb and .rpm"
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
}

/// The one file in `dir` whose name ends in `.ext`.
fn only_file(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every regular file under `root`, by its path relative to it, with its bytes.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, found);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                found.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(root, root, &mut found);
    found
}
