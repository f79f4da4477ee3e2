//! Field ownership as the API server's structured-merge-diff library keeps it.
//!
//! The double's kinds are custom resources (and ConfigMaps) whose lists carry no
//! `x-kubernetes-list-type`, and a structural schema's list without one is atomic:
//! the whole list is a single owned field. So paths here are field names only
//! (`f:name`); `k:`/`v:`/`i:` elements a client wrote into `managedFields` are kept
//! as they are but never produced. Maps merge key by key, as struct fields do.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One path: raw `FieldsV1` keys, `f:spec`, `f:imageDigestMirrors`, …
pub(super) type Path = Vec<String>;

/// A set of field paths in the `FieldsV1` shape. `member` says the path of this
/// node is itself in the set (written `".": {}` when the node also has children).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub(super) fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub(super) fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn node(&self, path: &[String]) -> Option<&FieldSet> {
        match path.split_first() {
            None => Some(self),
            Some((first, rest)) => self.children.get(first)?.node(rest),
        }
    }

    /// Whether anything at or below `path` is in the set.
    pub(super) fn covers(&self, path: &[String]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    pub(super) fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, c) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    /// Membership difference: a path leaves the set only if `other` holds that path
    /// itself, not merely something below it.
    pub(super) fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    pub(super) fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// Every member path, in the library's iteration order (sorted by element).
    pub(super) fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    pub(super) fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    pub(super) fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        Self::parse(v, true)
    }

    fn parse(v: &Value, is_root: bool) -> Option<FieldSet> {
        let m = v.as_object()?;
        // A leaf `{}` is a member; a node with children is one only with ".".
        let mut set = FieldSet {
            member: !is_root && m.is_empty(),
            children: BTreeMap::new(),
        };
        for (k, c) in m {
            if k == "." {
                set.member = true;
            } else {
                set.children.insert(k.clone(), Self::parse(c, false)?);
            }
        }
        Some(set)
    }
}

/// The path as the server prints it in conflicts: `.spec.imageDigestMirrors`.
pub(super) fn display(path: &[String]) -> String {
    path.iter()
        .map(|e| match e.split_once(':') {
            Some(("f", name)) => format!(".{name}"),
            Some(("v", value)) => format!("[={value}]"),
            Some((_, key)) => format!("[{key}]"),
            None => e.clone(),
        })
        .collect()
}

fn field(name: &str) -> String {
    format!("f:{name}")
}

/// The set an applied configuration claims (`ToFieldSet`): every leaf (scalar,
/// atomic list, empty map, null) and no intermediate map — struct fields of a
/// structural schema are members only through their leaves.
pub(super) fn fields_of(v: &Value) -> FieldSet {
    let mut set = FieldSet::default();
    if let Value::Object(m) = v {
        walk_fields(m, &mut Vec::new(), &mut set);
    }
    set
}

fn walk_fields(m: &Map<String, Value>, path: &mut Path, set: &mut FieldSet) {
    for (k, c) in m {
        path.push(field(k));
        match c {
            Value::Object(cm) if !cm.is_empty() => walk_fields(cm, path, set),
            _ => set.insert(path),
        }
        path.pop();
    }
}

/// What changed between two objects, as `TypedValue.Compare` reports it.
#[derive(Debug, Default)]
pub(super) struct Comparison {
    pub(super) added: FieldSet,
    pub(super) modified: FieldSet,
    pub(super) removed: FieldSet,
}

impl Comparison {
    pub(super) fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }
}

pub(super) fn compare(lhs: &Value, rhs: &Value) -> Comparison {
    let mut out = Comparison::default();
    compare_at(Some(lhs), Some(rhs), &mut Vec::new(), &mut out);
    out
}

fn non_empty_map(v: Option<&Value>) -> Option<&Map<String, Value>> {
    match v {
        Some(Value::Object(m)) if !m.is_empty() => Some(m),
        _ => None,
    }
}

fn compare_at(lhs: Option<&Value>, rhs: Option<&Value>, path: &mut Path, out: &mut Comparison) {
    let (lm, rm) = (non_empty_map(lhs), non_empty_map(rhs));
    let l_map_or_absent = lhs.is_none_or(Value::is_object);
    let r_map_or_absent = rhs.is_none_or(Value::is_object);
    if (lm.is_some() || rm.is_some()) && l_map_or_absent && r_map_or_absent {
        // A map on at least one side with content: descend; the map's own path is
        // added or removed only when the whole map appears or disappears.
        let empty = Map::new();
        let (l, r) = (lm.unwrap_or(&empty), rm.unwrap_or(&empty));
        let mut keys: Vec<&String> = l.keys().chain(r.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            path.push(field(k));
            compare_at(l.get(k), r.get(k), path, out);
            path.pop();
        }
        if !path.is_empty() {
            if lhs.is_none() {
                out.added.insert(path);
            } else if rhs.is_none() {
                out.removed.insert(path);
            }
        }
        return;
    }
    // A leaf: scalar, atomic list, empty map, or a map against a non-map.
    if path.is_empty() {
        return;
    }
    match (lhs, rhs) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(l), Some(r)) if l != r => {
            out.modified.insert(path);
            // The replaced side's fields go or come with it.
            if let Some(m) = lm {
                for (k, c) in m {
                    path.push(field(k));
                    compare_at(Some(c), None, path, out);
                    path.pop();
                }
            }
            if let Some(m) = rm {
                for (k, c) in m {
                    path.push(field(k));
                    compare_at(None, Some(c), path, out);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// Apply's merge of a configuration into the live object: maps key by key, and
/// anything else (scalars, atomic lists) replaced by the configuration's value.
pub(super) fn merge(live: &Value, config: &Value) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            let mut out = l.clone();
            for (k, cv) in c {
                let v = match l.get(k) {
                    Some(lv) => merge(lv, cv),
                    None => cv.clone(),
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        (_, c) => c.clone(),
    }
}

/// Removes every member path of `remove` from `v`; a map left empty by that goes
/// too unless something at or below it is in `keep` (someone still owns it).
pub(super) fn remove_fields(v: &mut Value, remove: &FieldSet, keep: &FieldSet) {
    remove_at(v, remove, keep, &mut Vec::new());
}

fn remove_at(v: &mut Value, remove: &FieldSet, keep: &FieldSet, path: &mut Path) {
    let Value::Object(m) = v else { return };
    for (k, sub) in &remove.children {
        let Some(name) = k.strip_prefix("f:") else {
            continue;
        };
        if sub.member {
            m.remove(name);
            continue;
        }
        path.push(k.clone());
        if let Some(child) = m.get_mut(name) {
            let was_empty = child.as_object().is_some_and(Map::is_empty);
            remove_at(child, sub, keep, path);
            let now_empty = child.as_object().is_some_and(Map::is_empty);
            if now_empty && !was_empty && !keep.covers(path) {
                m.remove(name);
            }
        }
        path.pop();
    }
}

/// Custom resources drop `null` values of non-nullable fields when decoding; none
/// of the double's kinds declares a nullable field.
pub(super) fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, c| !c.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) manager: String,
    pub(super) operation: String,
    pub(super) api_version: String,
    pub(super) time: Option<String>,
    pub(super) subresource: String,
    pub(super) set: FieldSet,
}

impl Entry {
    /// The server's manager identifier: appliers are one manager whatever API
    /// version they apply with; updaters are told apart by version too.
    pub(super) fn is(
        &self,
        manager: &str,
        operation: &str,
        subresource: &str,
        api_version: &str,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == subresource
            && (operation == "Apply" || self.api_version == api_version)
    }

    /// As `printManager` names a manager in a conflict.
    pub(super) fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// Decodes `metadata.managedFields`; `None` when absent or malformed, which the
/// server treats alike (it falls back to the live object's entries).
pub(super) fn decode(v: Option<&Value>) -> Option<Vec<Entry>> {
    let list = v?.as_array()?;
    let text = |e: &Map<String, Value>, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    list.iter()
        .map(|e| {
            let e = e.as_object()?;
            let set = match e.get("fieldsV1") {
                Some(f) => FieldSet::from_fields_v1(f)?,
                None => FieldSet::default(),
            };
            Some(Entry {
                manager: text(e, "manager"),
                operation: text(e, "operation"),
                api_version: text(e, "apiVersion"),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                subresource: text(e, "subresource"),
                set,
            })
        })
        .collect()
}

/// Encodes entries in the server's order: operation, then time, manager, version
/// and subresource.
pub(super) fn encode(entries: &[Entry]) -> Value {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|p, q| {
        (
            &p.operation,
            &p.time,
            &p.manager,
            &p.api_version,
            &p.subresource,
        )
            .cmp(&(
                &q.operation,
                &q.time,
                &q.manager,
                &q.api_version,
                &q.subresource,
            ))
    });
    Value::Array(
        sorted
            .into_iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("apiVersion".into(), e.api_version.clone().into());
                m.insert("fieldsType".into(), "FieldsV1".into());
                m.insert("fieldsV1".into(), e.set.to_fields_v1());
                m.insert("manager".into(), e.manager.clone().into());
                m.insert("operation".into(), e.operation.clone().into());
                if !e.subresource.is_empty() {
                    m.insert("subresource".into(), e.subresource.clone().into());
                }
                if let Some(t) = &e.time {
                    m.insert("time".into(), t.clone().into());
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// The fields the server never tracks (its `stripMeta` set).
pub(super) fn strip_system(set: &FieldSet) -> FieldSet {
    let mut system = FieldSet::default();
    for path in [
        &["apiVersion"][..],
        &["kind"],
        &["metadata"],
        &["metadata", "name"],
        &["metadata", "namespace"],
        &["metadata", "creationTimestamp"],
        &["metadata", "selfLink"],
        &["metadata", "uid"],
        &["metadata", "clusterName"],
        &["metadata", "generation"],
        &["metadata", "managedFields"],
        &["metadata", "resourceVersion"],
    ] {
        system.insert(&path.iter().map(|p| field(p)).collect::<Vec<_>>());
    }
    set.difference(&system)
}

/// A manager's conflicting fields.
pub(super) struct Conflict {
    pub(super) manager: String,
    pub(super) path: String,
}

/// An Update by `me` (PUT, merge or JSON patch, `/status` writes): it always wins,
/// takes the fields it added or changed from everyone, and fields it removed leave
/// every set. A no-op Update records nothing.
pub(super) fn update(entries: Vec<Entry>, cmp: &Comparison, me: Entry) -> Vec<Entry> {
    let changed = strip_system(&cmp.changed());
    let removed = cmp.removed.clone();
    let mut out: Vec<Entry> = entries
        .into_iter()
        .map(|mut e| {
            e.set = e.set.difference(&changed).difference(&removed);
            e
        })
        .collect();
    if !changed.is_empty() {
        match out
            .iter_mut()
            .find(|e| e.is(&me.manager, &me.operation, &me.subresource, &me.api_version))
        {
            Some(e) => {
                e.set = e.set.union(&changed);
                e.time = me.time;
            }
            None => out.push(Entry { set: changed, ..me }),
        }
    }
    out.retain(|e| !e.set.is_empty());
    out
}

/// Server-side apply of `config` (already stripped of system metadata and reset
/// fields) over `live` by the applier `me`. Returns the merged content and the new
/// entries, or the conflicts when not forced.
pub(super) fn apply(
    live: &Value,
    config: &Value,
    entries: Vec<Entry>,
    me: Entry,
    force: bool,
) -> Result<(Value, Vec<Entry>), Vec<Conflict>> {
    let mine = |e: &Entry| e.is(&me.manager, "Apply", &me.subresource, &me.api_version);
    let new_set = strip_system(&fields_of(config));
    let last = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let others_set = entries
        .iter()
        .filter(|e| !mine(e))
        .fold(FieldSet::default(), |acc, e| acc.union(&e.set));
    let owned = others_set.union(&new_set);

    let mut merged = merge(live, config);
    drop_nulls(&mut merged);
    // Pruning: what this applier set before, omits now, and nobody else owns.
    remove_fields(&mut merged, &last.difference(&owned), &owned);

    let cmp = compare(live, &merged);
    let changed = cmp.changed();
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        for p in e.set.intersection(&changed).paths() {
            conflicts.push((e.describe(), display(&p)));
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        return Err(conflicts
            .into_iter()
            .map(|(manager, path)| Conflict { manager, path })
            .collect());
    }

    let content_changed = live != &merged;
    let mut out = Vec::new();
    let mut previous_time = None;
    for mut e in entries {
        if mine(&e) {
            previous_time = e.time;
            continue;
        }
        e.set = e.set.difference(&changed).difference(&cmp.removed);
        out.push(e);
    }
    let time = if content_changed || previous_time.is_none() {
        me.time.clone()
    } else {
        previous_time
    };
    out.push(Entry {
        set: new_set,
        time,
        ..me
    });
    out.retain(|e| !e.set.is_empty());
    Ok((merged, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: Value) -> FieldSet {
        FieldSet::from_fields_v1(&v).expect("a FieldsV1 document")
    }

    #[test]
    fn fields_v1_round_trips_with_dot_members() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:a": {}}});
        let s = set(v.clone());
        assert!(s.covers(&["f:metadata".into(), "f:labels".into()]));
        assert_eq!(s.to_fields_v1(), v);
        assert_eq!(
            s.paths(),
            vec![
                vec!["f:metadata".to_string(), "f:labels".into()],
                vec!["f:metadata".into(), "f:labels".into(), "f:app".into()],
                vec!["f:spec".into(), "f:a".into()],
            ]
        );
    }

    #[test]
    fn applied_sets_hold_leaves_not_struct_parents() {
        let s = fields_of(&json!({"spec": {"a": 1, "l": [1, 2], "e": {}}, "metadata": {}}));
        assert_eq!(
            s.to_fields_v1(),
            json!({"f:metadata": {}, "f:spec": {"f:a": {}, "f:e": {}, "f:l": {}}})
        );
    }

    #[test]
    fn compare_marks_new_maps_added_and_lists_atomic() {
        let c = compare(
            &json!({"spec": {"a": 1, "l": [1]}}),
            &json!({"spec": {"a": 2, "l": [1, 2], "m": {"x": 1}}}),
        );
        assert_eq!(
            c.modified.to_fields_v1(),
            json!({"f:spec": {"f:a": {}, "f:l": {}}})
        );
        assert_eq!(
            c.added.to_fields_v1(),
            json!({"f:spec": {"f:m": {".": {}, "f:x": {}}}})
        );
        assert!(c.removed.is_empty());
    }

    #[test]
    fn pruning_removes_emptied_maps_nobody_owns() {
        let mut v = json!({"spec": {"gone": {"x": 1}, "kept": {"y": 1, "z": 2}}});
        let remove = set(json!({"f:spec": {"f:gone": {"f:x": {}}, "f:kept": {"f:y": {}}}}));
        let keep = set(json!({"f:spec": {"f:kept": {"f:z": {}}}}));
        remove_fields(&mut v, &remove, &keep);
        assert_eq!(v, json!({"spec": {"kept": {"z": 2}}}));
    }
}
