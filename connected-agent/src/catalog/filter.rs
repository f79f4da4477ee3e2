//! Which bundles of a catalog a configuration selects, with oc-mirror's rules.
//!
//! - No `packages`: every package, every channel, each cut to its head; with
//!   `full: true`, everything.
//! - A listed package without `channels`: all its channels, each cut to its head
//!   (every entry with `full: true`).
//! - Listed `channels`: only those, each cut to its head (or every entry).
//! - A version range (`minVersion`/`maxVersion`, inclusive, on the channel or else
//!   on the package; `minBundle` as the version of that bundle): the entries of
//!   each kept channel whose version is in the range. A missing bound is open.
//! - The package's default channel (or `defaultChannel` from the configuration)
//!   must be kept: OLM refuses a package whose default channel is missing.
//! - Dependencies (`olm.package.required`, `olm.gvk.required`) of selected bundles
//!   are added, as oc-mirror v1 did, unless `skipDependencies`: the highest
//!   version that satisfies each, from the package's default channel where it is
//!   there; a package added this way also keeps its default channel's head.

use std::collections::{BTreeMap, BTreeSet};

use airlock_config::schema::{IncludePackage, Operator};

use super::fbc::{Bundle, Catalog, Gvk, Package};
use super::range::Range;

/// What a configuration selects from one catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Per package: its default channel, and per kept channel the selected
    /// bundles in the channel's entry order.
    pub packages: BTreeMap<String, SelectedPackage>,
}

/// One package of a [`Selection`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectedPackage {
    /// The default channel of the filtered package.
    pub default_channel: String,
    /// Channel → selected bundle names, in entry order.
    pub channels: BTreeMap<String, Vec<String>>,
}

/// Why a configuration cannot be applied to a catalog.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FilterError {
    /// The configuration field (`mirror.operators[0].packages[1].channels[0]`).
    pub field: String,
    /// What is wrong, with what the catalog has.
    pub problem: String,
}

fn version(field: &str, text: &str) -> Result<semver::Version, FilterError> {
    semver::Version::parse(text.trim_start_matches('v')).map_err(|e| FilterError {
        field: field.to_string(),
        problem: format!("{text:?} must respect semantic versioning notation: {e}"),
    })
}

/// The inclusive range a package or channel entry asks for.
#[derive(Debug, Clone, Default)]
struct Bounds {
    min: Option<semver::Version>,
    max: Option<semver::Version>,
}

impl Bounds {
    fn is_set(&self) -> bool {
        self.min.is_some() || self.max.is_some()
    }
    fn contains(&self, v: &semver::Version) -> bool {
        self.min.as_ref().is_none_or(|m| v >= m) && self.max.as_ref().is_none_or(|m| v <= m)
    }
}

fn bounds(
    field: &str,
    package: &Package,
    min_version: Option<&str>,
    max_version: Option<&str>,
    min_bundle: Option<&str>,
) -> Result<Bounds, FilterError> {
    let min = match (min_version, min_bundle) {
        (Some(v), _) => Some(version(&format!("{field}.minVersion"), v)?),
        (None, Some(b)) => Some(
            package
                .bundles
                .get(b)
                .ok_or_else(|| FilterError {
                    field: format!("{field}.minBundle"),
                    problem: format!("package {:?} has no bundle {b:?}", package.name),
                })?
                .version
                .clone(),
        ),
        (None, None) => None,
    };
    let max = max_version
        .map(|v| version(&format!("{field}.maxVersion"), v))
        .transpose()?;
    Ok(Bounds { min, max })
}

/// Applies `op` (the configuration's `mirror.operators[index]`) to `catalog`.
pub fn select(catalog: &Catalog, op: &Operator, index: usize) -> Result<Selection, FilterError> {
    let at = format!("mirror.operators[{index}]");
    let mut out = Selection::default();
    if op.packages.is_empty() {
        for p in catalog.packages.values() {
            let mut sp = SelectedPackage {
                default_channel: default_channel(p, &at)?,
                ..Default::default()
            };
            for c in p.channels.values() {
                let bundles = if op.full {
                    c.entries.iter().map(|e| e.name.clone()).collect()
                } else {
                    vec![head(p, c, &at)?]
                };
                sp.channels.insert(c.name.clone(), bundles);
            }
            out.packages.insert(p.name.clone(), sp);
        }
    } else {
        for (i, include) in op.packages.iter().enumerate() {
            let field = format!("{at}.packages[{i}]");
            let p = catalog.packages.get(&include.name).ok_or_else(|| FilterError {
                field: format!("{field}.name"),
                problem: format!(
                    "package {:?} is not in catalog {}; it has {} packages (list them with `airlock-connected list bundles` and a configuration without packages)",
                    include.name,
                    op.catalog,
                    catalog.packages.len()
                ),
            })?;
            out.packages
                .insert(p.name.clone(), select_package(p, include, op.full, &field)?);
        }
    }
    if !op.skip_dependencies {
        add_dependencies(catalog, &mut out, &at)?;
    }
    for (name, sp) in &mut out.packages {
        let p = &catalog.packages[name];
        for (channel, bundles) in &mut sp.channels {
            connect(p, &p.channels[channel], bundles, &at)?;
        }
    }
    Ok(out)
}

/// Makes the selected entries of `c` one upgrade graph with one head, as OLM
/// requires of every channel: when the selection has several heads, the
/// entry that reaches all of them with the fewest additions is added (a selected
/// one first, else the lowest version outside the selection), with the entries on
/// the way. oc-mirror v2 keeps such bridging bundles too, with a warning.
fn connect(
    p: &Package,
    c: &super::fbc::Channel,
    bundles: &mut Vec<String>,
    at: &str,
) -> Result<(), FilterError> {
    let edges = |name: &str| -> Vec<&str> {
        c.entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| {
                e.replaces
                    .iter()
                    .chain(&e.skips)
                    .map(String::as_str)
                    .filter(|n| c.entries.iter().any(|e| e.name == *n))
                    .collect()
            })
            .unwrap_or_default()
    };
    let heads = |selected: &[String]| -> Vec<String> {
        let pointed: BTreeSet<&str> = selected.iter().flat_map(|b| edges(b)).collect();
        selected
            .iter()
            .filter(|b| !pointed.contains(b.as_str()))
            .cloned()
            .collect()
    };
    let current = heads(bundles);
    if current.len() <= 1 {
        order(c, bundles);
        return Ok(());
    }
    let version = |b: &str| &p.bundles[b].version;
    let selected: Vec<String> = bundles.clone();
    let mut candidates: Vec<&str> = selected.iter().map(String::as_str).collect();
    candidates.sort_by(|a, b| version(b).cmp(version(a)));
    let mut outside: Vec<&str> = c
        .entries
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| !selected.iter().any(|b| b == n))
        .collect();
    outside.sort_by(|a, b| version(a).cmp(version(b)));
    candidates.extend(outside);
    for from in candidates {
        // Breadth-first from `from`, remembering how each entry was reached.
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(n) = queue.pop_front() {
            for next in edges(n) {
                if next != from && !came_from.contains_key(next) {
                    came_from.insert(next, n);
                    queue.push_back(next);
                }
            }
        }
        if !current
            .iter()
            .all(|h| h == from || came_from.contains_key(h.as_str()))
        {
            continue;
        }
        let mut added = BTreeSet::new();
        if !selected.iter().any(|b| b == from) {
            added.insert(from);
        }
        for h in &current {
            let mut at_node = h.as_str();
            while let Some(prev) = came_from.get(at_node) {
                if !selected.iter().any(|b| b == prev) {
                    added.insert(*prev);
                }
                at_node = prev;
            }
        }
        let added: Vec<String> = added.into_iter().map(str::to_string).collect();
        for a in added {
            tracing::warn!(package = %p.name, channel = %c.name, bundle = %a, "bundle outside the selection kept so that the channel has one upgrade graph");
            bundles.push(a);
        }
        order(c, bundles);
        return Ok(());
    }
    Err(FilterError {
        field: at.to_string(),
        problem: format!(
            "the selected bundles of channel {:?} of package {:?} ({}) cannot be joined into one upgrade graph",
            c.name,
            p.name,
            bundles.join(", ")
        ),
    })
}

/// Sorts `bundles` in the channel's entry order.
fn order(c: &super::fbc::Channel, bundles: &mut [String]) {
    bundles.sort_by_key(|b| c.entries.iter().position(|e| e.name == *b));
}

fn default_channel(p: &Package, at: &str) -> Result<String, FilterError> {
    p.default_channel.clone().ok_or_else(|| FilterError {
        field: at.to_string(),
        problem: format!("package {:?} of the catalog has no defaultChannel", p.name),
    })
}

fn head(p: &Package, c: &super::fbc::Channel, at: &str) -> Result<String, FilterError> {
    c.head()
        .map(|e| e.name.clone())
        .map_err(|problem| FilterError {
            field: at.to_string(),
            problem: format!("package {:?}: {problem}", p.name),
        })
}

fn select_package(
    p: &Package,
    include: &IncludePackage,
    full: bool,
    field: &str,
) -> Result<SelectedPackage, FilterError> {
    let package_bounds = bounds(
        field,
        p,
        include.min_version.as_deref(),
        include.max_version.as_deref(),
        include.min_bundle.as_deref(),
    )?;
    // (channel, bounds, field) for each kept channel.
    let mut wanted = Vec::new();
    if include.channels.is_empty() {
        for c in p.channels.values() {
            wanted.push((c, package_bounds.clone(), field.to_string()));
        }
    } else {
        for (h, ch) in include.channels.iter().enumerate() {
            let cfield = format!("{field}.channels[{h}]");
            let c = p.channels.get(&ch.name).ok_or_else(|| FilterError {
                field: format!("{cfield}.name"),
                problem: format!(
                    "package {:?} has no channel {:?}; its channels are {}",
                    p.name,
                    ch.name,
                    p.channels.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?;
            let b = bounds(
                &cfield,
                p,
                ch.min_version.as_deref(),
                ch.max_version.as_deref(),
                ch.min_bundle.as_deref(),
            )?;
            let b = if b.is_set() {
                b
            } else {
                package_bounds.clone()
            };
            wanted.push((c, b, cfield));
        }
    }
    let mut sp = SelectedPackage::default();
    for (c, b, cfield) in wanted {
        let bundles: Vec<String> = if b.is_set() {
            c.entries
                .iter()
                .filter(|e| b.contains(&p.bundles[&e.name].version))
                .map(|e| e.name.clone())
                .collect()
        } else if full {
            c.entries.iter().map(|e| e.name.clone()).collect()
        } else {
            vec![head(p, c, &cfield)?]
        };
        if bundles.is_empty() && include.channels.is_empty() {
            // A range over the package drops the channels it leaves empty; the
            // default channel must survive (checked below).
            tracing::info!(package = %p.name, channel = %c.name, "no bundle of the channel is in the package's range; channel dropped");
            continue;
        }
        if bundles.is_empty() {
            let mut versions: Vec<&semver::Version> = c
                .entries
                .iter()
                .map(|e| &p.bundles[&e.name].version)
                .collect();
            versions.sort();
            return Err(FilterError {
                field: cfield,
                problem: format!(
                    "no bundle of channel {:?} of package {:?} is in the range {}..{}; the channel has versions {}",
                    c.name,
                    p.name,
                    b.min.as_ref().map(ToString::to_string).unwrap_or_default(),
                    b.max.as_ref().map(ToString::to_string).unwrap_or_default(),
                    versions
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        sp.channels.insert(c.name.clone(), bundles);
    }
    let default = match &include.default_channel {
        Some(d) => {
            if !sp.channels.contains_key(d) {
                return Err(FilterError {
                    field: format!("{field}.defaultChannel"),
                    problem: format!(
                        "defaultChannel has been set with '{d}', please ensure that '{d}' is declared in the channels section for the package '{}' in the config",
                        p.name
                    ),
                });
            }
            d.clone()
        }
        None => {
            let d = default_channel(p, field)?;
            if !sp.channels.contains_key(&d) {
                return Err(FilterError {
                    field: format!("{field}.channels"),
                    problem: format!(
                        "the default channel {d:?} of package {:?} was filtered out, a new default channel must be configured for this package: add it to the channels, or set packages[].defaultChannel to one of the kept channels",
                        p.name
                    ),
                });
            }
            d
        }
    };
    sp.default_channel = default;
    Ok(sp)
}

/// Adds what selected bundles require, until nothing new is required.
fn add_dependencies(catalog: &Catalog, out: &mut Selection, at: &str) -> Result<(), FilterError> {
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        let selected: Vec<(String, String)> = out
            .packages
            .iter()
            .flat_map(|(p, sp)| {
                sp.channels
                    .values()
                    .flatten()
                    .map(move |b| (p.clone(), b.clone()))
            })
            .filter(|k| !done.contains(k))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if selected.is_empty() {
            return Ok(());
        }
        for key in selected {
            let bundle = &catalog.packages[&key.0].bundles[&key.1];
            for (package, range) in &bundle.required_packages {
                let Ok(r) = Range::parse(range) else {
                    tracing::warn!(bundle = %bundle.name, package = %package, range = %range, "dependency range is not a semver range; not resolved");
                    continue;
                };
                match catalog.packages.get(package) {
                    Some(p) => {
                        let found = best(p, |b| r.contains(&b.version));
                        add(
                            out,
                            p,
                            found,
                            &bundle.name,
                            &format!("{package} {range}"),
                            at,
                        )?;
                    }
                    None => {
                        tracing::warn!(bundle = %bundle.name, package = %package, range = %range, "required package is not in this catalog; OLM must find it in another")
                    }
                }
            }
            for gvk in &bundle.required_gvks {
                if provided_by_selection(catalog, out, gvk) {
                    continue;
                }
                let provider = catalog
                    .packages
                    .values()
                    .find_map(|p| best(p, |b| b.provided_gvks.contains(gvk)).map(|b| (p, b)));
                match provider {
                    Some((p, b)) => add(out, p, Some(b), &bundle.name, &gvk.to_string(), at)?,
                    None => {
                        tracing::warn!(bundle = %bundle.name, gvk = %gvk, "required API is provided by no bundle of this catalog")
                    }
                }
            }
            done.insert(key);
        }
    }
}

fn provided_by_selection(catalog: &Catalog, out: &Selection, gvk: &Gvk) -> bool {
    out.packages.iter().any(|(p, sp)| {
        sp.channels
            .values()
            .flatten()
            .any(|b| catalog.packages[p].bundles[b].provided_gvks.contains(gvk))
    })
}

/// The highest-version bundle of `p` that satisfies `ok` and is in a channel.
fn best(p: &Package, ok: impl Fn(&Bundle) -> bool) -> Option<&Bundle> {
    p.channels
        .values()
        .flat_map(|c| &c.entries)
        .map(|e| &p.bundles[&e.name])
        .filter(|b| ok(b))
        .max_by(|a, b| a.version.cmp(&b.version))
}

/// Adds `bundle` of `p` to the selection: into the default channel when that
/// channel has it, else the first channel that does; a package new to the
/// selection keeps its default channel's head too.
fn add(
    out: &mut Selection,
    p: &Package,
    bundle: Option<&Bundle>,
    by: &str,
    requirement: &str,
    at: &str,
) -> Result<(), FilterError> {
    let Some(bundle) = bundle else {
        tracing::warn!(bundle = %by, requirement = %requirement, "no bundle of the catalog satisfies the dependency");
        return Ok(());
    };
    let default = default_channel(p, at)?;
    let in_channel = |c: &str| p.channels[c].entries.iter().any(|e| e.name == bundle.name);
    let channel = if in_channel(&default) {
        default.clone()
    } else {
        p.channels
            .keys()
            .find(|c| in_channel(c))
            .cloned()
            .expect("best() takes bundles from channels")
    };
    let new_package = !out.packages.contains_key(&p.name);
    let sp = out
        .packages
        .entry(p.name.clone())
        .or_insert_with(|| SelectedPackage {
            default_channel: default.clone(),
            channels: BTreeMap::new(),
        });
    if new_package && channel != default {
        let c = &p.channels[&default];
        sp.channels.insert(default.clone(), vec![head(p, c, at)?]);
    }
    let list = sp.channels.entry(channel.clone()).or_default();
    if !list.contains(&bundle.name) {
        tracing::info!(bundle = %bundle.name, package = %p.name, channel = %channel, required_by = %by, requirement = %requirement, "dependency added");
        list.push(bundle.name.clone());
    }
    Ok(())
}
