//! The OpenShift update graph, as the update service (Cincinnati) serves it.
//!
//! `GET <url>?channel=C&arch=A` answers with every release of channel `C` for
//! architecture `A` (`nodes`), the updates between them without known risk (`edges`,
//! pairs of *indices* into `nodes`) and the updates with risks (`conditionalEdges`,
//! pairs of *versions*). oc-mirror walks both kinds, so a release reachable only
//! through a conditional update is still on a path; Airlock does the same (a mirror
//! that lacks a release the cluster is offered is worse than one that carries a
//! release the administrator decides not to take).

use std::collections::{BTreeMap, HashMap, VecDeque};

use semver::Version;
use serde::Deserialize;

/// Why a graph document was refused.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Not JSON of the expected shape.
    #[error("update graph {source_name}: {message}")]
    Malformed {
        /// Where the document came from (URL or file).
        source_name: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct RawGraph {
    nodes: Vec<RawNode>,
    #[serde(default)]
    edges: Vec<[usize; 2]>,
    #[serde(default, rename = "conditionalEdges")]
    conditional_edges: Vec<RawConditional>,
}

#[derive(Deserialize)]
struct RawNode {
    version: String,
    payload: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawConditional {
    #[serde(default)]
    edges: Vec<RawVersionEdge>,
}

#[derive(Deserialize)]
struct RawVersionEdge {
    from: String,
    to: String,
}

/// One release in a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Release version.
    pub version: Version,
    /// Release image pull spec (by digest in real graphs).
    pub payload: String,
    /// Open string map (`io.openshift.upgrades.graph.release.channels`, `url`, ...).
    pub metadata: BTreeMap<String, String>,
}

/// The graph of one channel and architecture.
#[derive(Debug, Clone)]
pub struct Graph {
    nodes: Vec<Node>,
    /// Successors of each node, unconditional and conditional alike, highest
    /// version first (oc-mirror's order, which decides between equally short paths).
    next: Vec<Vec<usize>>,
    conditional: usize,
}

impl Graph {
    /// Parses a graph document; `source_name` names it in errors.
    pub fn parse(bytes: &[u8], source_name: &str) -> Result<Graph, GraphError> {
        let bad = |message: String| GraphError::Malformed {
            source_name: source_name.to_string(),
            message,
        };
        let raw: RawGraph = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not an update graph document: {e}")))?;
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        let mut index = HashMap::new();
        for (i, n) in raw.nodes.into_iter().enumerate() {
            let version = Version::parse(&n.version).map_err(|e| {
                bad(format!(
                    "nodes[{i}].version {:?} is not a semantic version: {e}",
                    n.version
                ))
            })?;
            if index.insert(version.clone(), i).is_some() {
                return Err(bad(format!("nodes[{i}].version {version} appears twice")));
            }
            nodes.push(Node {
                version,
                payload: n.payload,
                metadata: n.metadata,
            });
        }
        let mut next = vec![Vec::new(); nodes.len()];
        for (i, [from, to]) in raw.edges.into_iter().enumerate() {
            if from >= nodes.len() || to >= nodes.len() {
                return Err(bad(format!(
                    "edges[{i}] = [{from}, {to}] names a node that does not exist (there are {})",
                    nodes.len()
                )));
            }
            next[from].push(to);
        }
        let mut conditional = 0;
        for group in raw.conditional_edges {
            for e in group.edges {
                let lookup = |v: &str| Version::parse(v).ok().and_then(|v| index.get(&v).copied());
                // Real graphs only name nodes they contain; an edge to a release
                // outside this channel's graph cannot be walked anyway.
                if let (Some(from), Some(to)) = (lookup(&e.from), lookup(&e.to)) {
                    next[from].push(to);
                    conditional += 1;
                } else {
                    tracing::debug!(source = source_name, from = %e.from, to = %e.to, "conditional edge outside the graph ignored");
                }
            }
        }
        for succ in &mut next {
            succ.sort_by(|a, b| nodes[*b].version.cmp(&nodes[*a].version));
            succ.dedup();
        }
        Ok(Graph {
            nodes,
            next,
            conditional,
        })
    }

    /// Every release, in the document's order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Number of edges, unconditional and conditional.
    pub fn edge_count(&self) -> usize {
        self.next.iter().map(Vec::len).sum()
    }

    /// Number of conditional edges that were followed.
    pub fn conditional_edge_count(&self) -> usize {
        self.conditional
    }

    /// The release with this version.
    pub fn node(&self, version: &Version) -> Option<&Node> {
        self.position(version).map(|i| &self.nodes[i])
    }

    fn position(&self, version: &Version) -> Option<usize> {
        self.nodes.iter().position(|n| &n.version == version)
    }

    /// The lowest and the highest version (`None` for an empty graph).
    pub fn bounds(&self) -> Option<(&Version, &Version)> {
        let min = self.nodes.iter().map(|n| &n.version).min()?;
        let max = self.nodes.iter().map(|n| &n.version).max()?;
        Some((min, max))
    }

    /// Releases with `min <= version <= max`, lowest first.
    pub fn range(&self, min: &Version, max: &Version) -> Vec<&Node> {
        let mut v: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| &n.version >= min && &n.version <= max)
            .collect();
        v.sort_by(|a, b| a.version.cmp(&b.version));
        v
    }

    /// The releases on a shortest update path from `from` to `to`, both included, in
    /// update order; `None` when either is missing or no path exists. Breadth-first,
    /// visiting higher versions first.
    pub fn shortest_path(&self, from: &Version, to: &Version) -> Option<Vec<&Node>> {
        let start = self.position(from)?;
        let end = self.position(to)?;
        let mut prev: Vec<Option<usize>> = vec![None; self.nodes.len()];
        let mut seen = vec![false; self.nodes.len()];
        seen[start] = true;
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            if n == end {
                break;
            }
            for &m in &self.next[n] {
                if !seen[m] {
                    seen[m] = true;
                    prev[m] = Some(n);
                    queue.push_back(m);
                }
            }
        }
        if !seen[end] {
            return None;
        }
        let mut path = vec![end];
        let mut at = end;
        while let Some(p) = prev[at] {
            path.push(p);
            at = p;
        }
        path.reverse();
        Some(path.into_iter().map(|i| &self.nodes[i]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/real")
    }

    fn fixture(path: &str) -> Graph {
        let p = fixtures().join(path);
        Graph::parse(&std::fs::read(&p).unwrap(), &p.display().to_string()).unwrap()
    }

    #[test]
    fn real_graphs_parse_with_their_edge_counts() {
        let g = fixture("oc-mirror/graphs/amd64-stable-4.13.json");
        assert_eq!(g.nodes().len(), 98);
        let raw: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures().join("oc-mirror/graphs/amd64-stable-4.13.json")).unwrap(),
        )
        .unwrap();
        let plain = raw["edges"].as_array().unwrap().len();
        let conditional: usize = raw["conditionalEdges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["edges"].as_array().unwrap().len())
            .sum();
        assert!(conditional > 0);
        assert_eq!(g.conditional_edge_count(), conditional);
        // A conditional edge may duplicate an unconditional one; never more than both.
        assert!(g.edge_count() <= plain + conditional && g.edge_count() >= plain);
        let multi = fixture("cincinnati/graphs/candidate-4.12_multi_v1.json");
        assert_eq!(multi.nodes().len(), 5);
        fixture("cincinnati/graphs/stable-4.9_amd64_v1.json");
    }

    #[test]
    fn shortest_path_is_a_chain_of_edges_and_no_shorter_path_exists() {
        let g = fixture("oc-mirror/graphs/amd64-stable-4.13.json");
        let (min, max) = g.bounds().unwrap();
        let path = g.shortest_path(min, max).unwrap();
        assert_eq!(&path[0].version, min);
        assert_eq!(&path.last().unwrap().version, max);
        for w in path.windows(2) {
            let a = g.position(&w[0].version).unwrap();
            let b = g.position(&w[1].version).unwrap();
            assert!(
                g.next[a].contains(&b),
                "{} -> {} is not an edge",
                w[0].version,
                w[1].version
            );
        }
        // No node reachable from `min` in fewer hops reaches `max` directly.
        for hops in 1..path.len() - 1 {
            let mut frontier = vec![g.position(min).unwrap()];
            for _ in 0..hops {
                frontier = frontier.iter().flat_map(|&n| g.next[n].clone()).collect();
            }
            assert!(!frontier.contains(&g.position(max).unwrap()));
        }
    }

    #[test]
    fn malformed_graphs_name_the_bad_field() {
        let cases: [(&str, &str); 4] = [
            (
                r#"{"nodes":[{"version":"4.1","payload":"x"}]}"#,
                "nodes[0].version",
            ),
            (
                r#"{"nodes":[{"version":"4.1.0","payload":"x"}],"edges":[[0,3]]}"#,
                "edges[0]",
            ),
            (
                r#"{"nodes":[{"version":"4.1.0","payload":"x"},{"version":"4.1.0","payload":"y"}]}"#,
                "appears twice",
            ),
            ("<html>", "not an update graph"),
        ];
        for (doc, want) in cases {
            let e = Graph::parse(doc.as_bytes(), "test")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
