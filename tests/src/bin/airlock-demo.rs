//! The README's first command: create → carry → publish on this machine, end to end.
//!
//! Starts a source registry seeded with generated sample images and an empty mirror
//! registry (both real `docker-registry` processes on free loopback ports), writes
//! an ImageSetConfiguration, runs `airlock-connected create` with a 1 MiB limit,
//! copies the chunks to a "USB stick" directory in reverse order, runs
//! `airlock-disconnected publish`, and shows with skopeo that every image at the
//! mirror has its source digest.

use std::process::Command;
use std::time::Instant;

use airlock_tests::bins;
use airlock_tests::images::digest_of;
use airlock_tests::images::{Format, ImageBuilder, PushClient, index, layer};
use airlock_tests::registry::Registry;
use airlock_tests::skopeo::inspect_raw_at;
use anyhow::{Result, bail};

#[allow(clippy::print_stdout, reason = "the demo's narration is its output")]
fn main() -> Result<()> {
    let work = tempfile::tempdir()?;
    let source = Registry::plain()?;
    let mirror = Registry::plain()?;
    println!(
        "source registry: {}   mirror registry: {}",
        source.addr(),
        mirror.addr()
    );

    let client = PushClient::new(&source)?;
    let base = layer(100, 4 << 20);
    let images = [
        (
            "demo/web",
            "1.0",
            ImageBuilder::new(Format::Docker)
                .with_layer(&base)
                .layer(101, 1 << 20)
                .pretty()
                .build(),
        ),
        (
            "demo/api",
            "2.3",
            ImageBuilder::new(Format::Oci)
                .with_layer(&base)
                .layer(102, 2 << 20)
                .build(),
        ),
        (
            "demo/agent",
            "latest",
            index(
                Format::Oci,
                vec![
                    ImageBuilder::new(Format::Oci)
                        .arch("amd64")
                        .layer(103, 1 << 20)
                        .build(),
                    ImageBuilder::new(Format::Oci)
                        .arch("arm64")
                        .layer(104, 1 << 20)
                        .build(),
                ],
                true,
            ),
        ),
    ];
    let mut config = String::from(
        "apiVersion: mirror.openshift.io/v2alpha1\nkind: ImageSetConfiguration\nmirror:\n  additionalImages:\n",
    );
    for (repo, tag, image) in &images {
        image.push(&client, repo, Some(tag))?;
        config.push_str(&format!("  - name: {}/{repo}:{tag}\n", source.addr()));
        println!("seeded {}/{repo}:{tag}  {}", source.addr(), image.digest);
    }
    let isc = work.path().join("isc.yaml");
    std::fs::write(&isc, &config)?;
    println!("\n{}:\n{config}", isc.display());

    let out = work.path().join("outbox");
    let started = Instant::now();
    let mut create = bins::connected();
    create
        .args([
            "create",
            "--src-tls-verify=false",
            "--limit",
            "1MiB",
            "--config",
        ])
        .arg(&isc);
    create
        .arg("--out")
        .arg(&out)
        .arg("--workspace")
        .arg(work.path().join("connected"));
    step(&mut create)?;
    let create_time = started.elapsed();

    let usb = work.path().join("usb");
    std::fs::create_dir_all(&usb)?;
    let mut chunks: Vec<_> = std::fs::read_dir(&out)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    chunks.sort();
    for c in chunks.iter().rev() {
        std::fs::copy(c, usb.join(c.file_name().expect("file name")))?;
    }
    println!(
        "carried {} chunk files to {}\n",
        chunks.len(),
        usb.display()
    );

    let started = Instant::now();
    let mut publish = bins::disconnected();
    publish
        .args(["publish", "--dest-tls-verify=false", "--from"])
        .arg(&usb);
    publish
        .arg("--to")
        .arg(format!("docker://{}/mirror", mirror.addr()));
    publish.arg("--workspace").arg(work.path().join("site"));
    step(&mut publish)?;
    let publish_time = started.elapsed();

    println!("what the mirror serves (checked with skopeo inspect --raw):");
    for (repo, tag, image) in &images {
        let bytes = inspect_raw_at(&mirror, &format!("mirror/{repo}:{tag}"))?;
        let same = digest_of(&bytes) == image.digest;
        println!(
            "  {}/mirror/{repo}:{tag}  {}  {}",
            mirror.addr(),
            digest_of(&bytes),
            if same { "= source" } else { "DIFFERS" }
        );
        if !same {
            bail!("{repo}:{tag} differs at the mirror");
        }
    }
    let resources = work
        .path()
        .join("site/cluster-resources/itms-oc-mirror.yaml");
    println!(
        "\n{}:\n{}",
        resources.display(),
        std::fs::read_to_string(&resources)?
    );
    println!(
        "create {:.2}s, publish {:.2}s",
        create_time.as_secs_f64(),
        publish_time.as_secs_f64()
    );
    Ok(())
}

#[allow(clippy::print_stdout, reason = "the demo's narration is its output")]
fn step(cmd: &mut Command) -> Result<()> {
    let program = std::path::Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    println!("$ {program} {}", args.join(" "));
    let out = cmd.env("RUST_LOG", "warn").output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    println!();
    Ok(())
}
