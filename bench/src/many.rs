//! Catalog-sized work: many small images, as a filtered operator catalog brings
//! (hundreds to thousands of bundle and related images of a few small layers over
//! shared bases). Here the cost is per image and per request, not per byte, so the
//! figures are images per second, against `skopeo sync` on the same images in one
//! process (docker → dir, then dir → docker), which is how sites move such sets
//! with skopeo today.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_tests::images::{Blob, Format, Image, ImageBuilder, PushClient, index};
use airlock_tests::registry::Registry;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::lag::LagProxy;
use crate::{
    Placed, Run, agent_fanout, airlock_create, airlock_publish, config, limits, random_blob,
    serving,
};

/// Where the shared base layers are pushed first, to be mounted from.
const BASE_REPO: &str = "many/base";
/// Sizes of the base layers; every image has the first and one of the others.
const BASE_SIZES: [usize; 4] = [2 << 20, 1 << 20, 512 << 10, 256 << 10];

/// The delay each way of the WAN runs: a 20 ms round trip, as to a registry
/// in a nearby region.
const WAN_ONE_WAY: Duration = Duration::from_millis(10);

/// Images skopeo syncs across the WAN (and Airlock creates, to compare like
/// with like).
const WAN_SKOPEO_IMAGES: usize = 200;

/// What the mode measured.
pub struct Figures {
    /// Every Airlock and skopeo figure, for the results file.
    pub json: Value,
    /// The ratios, for the results file's top level.
    pub ratios: Vec<(&'static str, f64)>,
    /// Rows for the printed table.
    pub rows: Vec<(String, Run, Option<f64>)>,
}

/// Image `i` of the set: a base shared by all and one of three others, then
/// 1–6 small layers of its own (2–8 in all, 4–64 KiB each); every tenth is an
/// amd64+arm64 index. Configs differ (a label), as real images' do.
fn image(i: usize, bases: &[Blob], seed: u64) -> Image {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
    let format = if i.is_multiple_of(2) {
        Format::Docker
    } else {
        Format::Oci
    };
    let mut build = |arch: &str| {
        let own = 1 + i % 6;
        let mut b = ImageBuilder::new(format)
            .arch(arch)
            .labels(json!({"bench.index": i.to_string()}))
            .with_layer(&bases[0])
            .with_layer(&bases[1 + i % (bases.len() - 1)]);
        for _ in 0..own {
            let size = rng.random_range(4 << 10..=64 << 10);
            b = b.with_layer(&random_blob(&mut rng, size));
        }
        b.build()
    };
    if i.is_multiple_of(10) {
        let amd = build("amd64");
        let arm = build("arm64");
        index(format, vec![amd, arm], false)
    } else {
        build("amd64")
    }
}

/// Seeds `registry`, a fresh one, with `n` images. Returns the images, their
/// distinct blob bytes, and the seconds the seeding took: the registry's ingest
/// limit for this set. The images are built first and the bases uploaded
/// once; what is timed is the least any client must send, [`limits::INFLIGHT`]
/// images at once: every base mounted into each repository, every other blob
/// uploaded without asking first (POST, then PUT), every manifest put once.
fn generate(registry: &Registry, n: usize, seed: u64) -> Result<(Vec<Placed>, u64, f64)> {
    let client = PushClient::new(registry)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bases: Vec<Blob> = BASE_SIZES
        .iter()
        .map(|&size| random_blob(&mut rng, size))
        .collect();
    for b in &bases {
        client.push_blob(BASE_REPO, b)?;
    }
    // Built on several cores, and held without the bases (mounted, not
    // uploaded), which would otherwise be copied into every image.
    let images = std::sync::Mutex::new(Vec::with_capacity(n));
    let indexes: Vec<usize> = (0..n).collect();
    limits::parallel(&indexes, |&i| {
        let mut img = image(i, &bases, seed);
        without(&mut img, &bases);
        images.lock().expect("not poisoned").push((i, img));
        Ok(())
    })?;
    let images = images.into_inner().expect("not poisoned");
    let own_bytes: u64 = images.iter().map(|(_, img)| blob_bytes(img)).sum();
    let seconds = limits::parallel(&images, |(i, img)| {
        let repo = repo(*i);
        for b in &bases {
            client.mount_blob(&repo, BASE_REPO, &b.digest)?;
        }
        push_unasked(&client, &repo, img, Some(TAG))
    })?;
    let base_bytes: u64 = bases.iter().map(|b| b.bytes.len() as u64).sum();
    let placed = (0..n)
        .map(|i| Placed {
            repo: repo(i),
            tag: TAG.into(),
        })
        .collect();
    Ok((placed, own_bytes + base_bytes, seconds))
}

/// Drops the base layers from `img`'s blobs (and its children's).
fn without(img: &mut Image, bases: &[Blob]) {
    img.blobs
        .retain(|b| !bases.iter().any(|base| base.digest == b.digest));
    for c in &mut img.children {
        without(c, bases);
    }
}

fn blob_bytes(img: &Image) -> u64 {
    img.blobs.iter().map(|b| b.bytes.len() as u64).sum::<u64>()
        + img.children.iter().map(blob_bytes).sum::<u64>()
}

/// Pushes `img` with no existence check: its blobs, its children, then its
/// manifest under `tag` (its digest when none).
fn push_unasked(client: &PushClient, repo: &str, img: &Image, tag: Option<&str>) -> Result<()> {
    for b in &img.blobs {
        client.upload_blob(repo, b)?;
    }
    for c in &img.children {
        push_unasked(client, repo, c, None)?;
    }
    client.push_manifest(
        repo,
        tag.unwrap_or(&img.digest),
        &img.manifest,
        &img.media_type,
    )
}

const TAG: &str = "v1.0.0";

fn repo(i: usize) -> String {
    format!("many/app-{i:04}")
}

/// Writes `path`, the YAML list `skopeo sync --src yaml` reads, of `placed` at
/// registry `addr`.
fn sync_list(path: &Path, addr: &str, placed: &[Placed]) -> Result<PathBuf> {
    let mut yaml = format!("{addr}:\n  tls-verify: false\n  images:\n");
    for p in placed {
        yaml.push_str(&format!("    {}: [\"{}\"]\n", p.repo, p.tag));
    }
    std::fs::write(path, yaml)?;
    Ok(path.to_path_buf())
}

/// `skopeo sync` of the images `list` names into directories under `dirs`.
fn sync_to_dirs(list: &Path, dirs: &Path) -> Result<Run> {
    std::fs::create_dir_all(dirs)?;
    skopeo_sync(&[
        "--src",
        "yaml",
        "--dest",
        "dir",
        &list.display().to_string(),
        &dirs.display().to_string(),
    ])
}

/// `skopeo sync --all` with the source and destination transports given.
fn skopeo_sync(args: &[&str]) -> Result<Run> {
    let mut all = vec!["sync", "--all", "--retry-times", "0"];
    all.extend_from_slice(args);
    crate::skopeo(&all.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

/// Runs the mode with `n` images under `work`; `keep` leaves its chunk files
/// in `many-out/` there, to profile a command on them afterwards.
pub fn run(n: usize, work: &Path, keep: bool) -> Result<Figures> {
    let source = Registry::plain()?;
    let (placed, blob_bytes, limit) = generate(&source, n, 11)?;
    let limit = Run::timed(limit);
    let isc = config(work, "isc.yaml", &source.addr(), &placed)?;

    let out = work.join("many-out");
    let create = serving(&source, || {
        airlock_create(&isc, &out, &work.join("many-ws-c"))
    })?;

    let list = sync_list(&work.join("many-sync.yaml"), &source.addr(), &placed)?;
    let dirs = work.join("many-dirs");
    let sync_to_dir = serving(&source, || sync_to_dirs(&list, &dirs))?;

    // The same across a WAN: the whole create; and the first images created,
    // and synced by skopeo (one after the other, it would take minutes for
    // all).
    let lag = LagProxy::start(&source.addr(), WAN_ONE_WAY)?;
    let wan_isc = config(work, "isc-wan.yaml", &lag.addr(), &placed)?;
    let wan_out = work.join("many-wan-out");
    let create_wan = serving(&source, || {
        airlock_create(&wan_isc, &wan_out, &work.join("many-wan-ws"))
    })?;
    std::fs::remove_dir_all(&wan_out)?;
    let wan_images = placed.len().min(WAN_SKOPEO_IMAGES);
    let first_isc = config(
        work,
        "isc-wan-first.yaml",
        &lag.addr(),
        &placed[..wan_images],
    )?;
    let first_out = work.join("many-wan-first-out");
    let create_wan_first = serving(&source, || {
        airlock_create(&first_isc, &first_out, &work.join("many-wan-first-ws"))
    })?;
    std::fs::remove_dir_all(&first_out)?;
    let wan_list = sync_list(
        &work.join("many-wan-sync.yaml"),
        &lag.addr(),
        &placed[..wan_images],
    )?;
    let wan_dirs = work.join("many-wan-dirs");
    let sync_wan = serving(&source, || sync_to_dirs(&wan_list, &wan_dirs))?;
    std::fs::remove_dir_all(&wan_dirs)?;
    drop(source);

    let dest = Registry::plain()?;
    let publish = serving(&dest, || {
        airlock_publish(&out, &dest, &work.join("many-ws-d"))
    })?;
    drop(dest);
    let dest_skopeo = Registry::plain()?;
    let sync_to_registry = serving(&dest_skopeo, || {
        skopeo_sync(&[
            "--src",
            "dir",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
            &dirs.display().to_string(),
            &format!("{}/m", dest_skopeo.addr()),
        ])
    })?;
    let synced = count_repositories(&dest_skopeo)?;
    drop(dest_skopeo);
    std::fs::remove_dir_all(&dirs)?;
    if synced < n {
        anyhow::bail!("skopeo sync placed {synced} of {n} images in the registry");
    }

    let (agent, _) = agent_fanout(&out, 1, work)?;
    if !keep {
        std::fs::remove_dir_all(&out)?;
    }

    let per_second = |r: Run| {
        if r.seconds > 0.0 {
            n as f64 / r.seconds
        } else {
            0.0
        }
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let peak = [create, create_wan, publish, agent]
        .iter()
        .map(|r| r.rss_mib)
        .fold(0.0, f64::max);
    let json = json!({
        "images": n,
        "blob_bytes": blob_bytes,
        "create": crate::run_json(create),
        "skopeo_sync_to_dir": crate::run_json(sync_to_dir),
        "wan_round_trip_ms": 2 * WAN_ONE_WAY.as_millis(),
        "create_across_wan": crate::run_json(create_wan),
        "create_across_wan_first_images": crate::run_json(create_wan_first),
        "skopeo_sync_to_dir_across_wan": crate::run_json(sync_wan),
        "skopeo_images_across_wan": wan_images,
        "publish": crate::run_json(publish),
        "skopeo_sync_dir_to_registry": crate::run_json(sync_to_registry),
        // Measured here, not around a process: only the time.
        "ingest_limit": {"seconds": limit.seconds},
        "agent_drop_to_1_cluster": crate::run_json(agent),
    });
    let ratios = vec![
        ("many_create_images_per_second", per_second(create)),
        ("many_publish_images_per_second", per_second(publish)),
        ("many_agent_images_per_second", per_second(agent)),
        (
            "many_create_speedup",
            ratio(sync_to_dir.seconds, create.seconds),
        ),
        (
            "many_publish_speedup",
            ratio(sync_to_registry.seconds, publish.seconds),
        ),
        ("many_create_wan_images_per_second", per_second(create_wan)),
        (
            "many_create_wan_speedup",
            ratio(sync_wan.seconds, create_wan_first.seconds),
        ),
        (
            "many_create_wan_over_loopback",
            ratio(create.seconds, create_wan.seconds),
        ),
        (
            "many_publish_fraction_of_limit",
            ratio(limit.seconds, publish.seconds),
        ),
        (
            "skopeo_many_publish_fraction_of_limit",
            ratio(limit.seconds, sync_to_registry.seconds),
        ),
        ("many_peak_rss_mib", peak),
    ];
    let rows = vec![
        (format!("many: create, {n} images"), create, None),
        (
            "  skopeo sync docker → dir".to_string(),
            sync_to_dir,
            Some(ratio(sync_to_dir.seconds, create.seconds)),
        ),
        (
            format!(
                "many: create across a {} ms round trip",
                2 * WAN_ONE_WAY.as_millis()
            ),
            create_wan,
            Some(ratio(create.seconds, create_wan.seconds)),
        ),
        (
            format!("  Airlock create, the first {wan_images} images"),
            create_wan_first,
            None,
        ),
        (
            format!("  skopeo sync docker → dir, the first {wan_images}"),
            sync_wan,
            Some(ratio(sync_wan.seconds, create_wan_first.seconds)),
        ),
        (format!("many: publish, {n} images"), publish, None),
        (
            "  skopeo sync dir → docker".to_string(),
            sync_to_registry,
            Some(ratio(sync_to_registry.seconds, publish.seconds)),
        ),
        (
            "  ingest limit: least requests, from memory".to_string(),
            limit,
            Some(ratio(limit.seconds, publish.seconds)),
        ),
        ("many: agent, drop → 1 cluster".to_string(), agent, None),
    ];
    Ok(Figures { json, ratios, rows })
}

/// How many of the set's repositories a registry holds, from its catalog: the
/// comparison counts only if skopeo did the whole job.
fn count_repositories(registry: &Registry) -> Result<usize> {
    let client = registry.http_client()?;
    let mut count = 0;
    let mut url = format!("{}/v2/_catalog?n=1000", registry.url());
    loop {
        let resp = client.get(&url).send()?;
        let link = resp
            .headers()
            .get("link")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string);
        let body: Value = resp.json()?;
        count += body["repositories"].as_array().map_or(0, |r| {
            r.iter()
                .filter(|r| r.as_str().is_some_and(|r| r.contains("app-")))
                .count()
        });
        match link.and_then(|l| {
            l.split(';').next().map(|u| {
                u.trim_matches(|c| c == '<' || c == '>' || c == ' ')
                    .to_string()
            })
        }) {
            Some(next) => url = format!("{}{next}", registry.url()),
            None => return Ok(count),
        }
    }
}
