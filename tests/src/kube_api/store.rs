//! The stored objects and every write to them, whether it came over HTTP or from a
//! test's seeding call: one path, so both keep the server's invariants.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::Res;
use super::fields::{self, Entry};

/// A `metav1.Status` failure.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
    pub(super) details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    fn details(res: &Res, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": res.plural});
        if !res.group.is_empty() {
            d["group"] = res.group.into();
        }
        d
    }

    pub(super) fn not_found(res: &Res, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", res.qualified()),
            Some(Self::details(res, name)),
        )
    }

    fn already_exists(res: &Res, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", res.qualified()),
            Some(Self::details(res, name)),
        )
    }

    fn conflict(res: &Res, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                res.qualified()
            ),
            Some(Self::details(res, name)),
        )
    }

    fn stale(res: &Res, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `errors.NewInvalid` for one field error; `cause` is its type
    /// (`FieldValueRequired`, …) and `body` its text (`Required value: …`).
    pub(super) fn invalid(
        group: &str,
        kind: &str,
        name: &str,
        field: &str,
        cause: &str,
        body: &str,
    ) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut details = json!({"name": name, "kind": kind,
            "causes": [{"reason": cause, "message": body, "field": field}]});
        if !group.is_empty() {
            details["group"] = group.into();
        }
        if name.is_empty() {
            details.as_object_mut().expect("an object").remove("name");
        }
        Self::new(
            422,
            "Invalid",
            format!("{qualified} {name:?} is invalid: {field}: {body}"),
            Some(details),
        )
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    pub(super) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message.into(), None)
    }

    /// RBAC's refusal, worded as the API server words it.
    pub(super) fn forbidden(res: &Res, verb: &str, namespace: Option<&str>) -> Self {
        let scope = match namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".into(),
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{} is forbidden: User \"system:serviceaccount:airlock:agent\" cannot {verb} resource {:?} in API group {:?} {scope}",
                res.qualified(),
                res.plural,
                res.group
            ),
            Some(json!({"kind": res.plural, "group": res.group})),
        )
    }

    /// A validating admission webhook's denial, as the API server relays it.
    pub(super) fn denied(res: &Res, name: &str, message: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "admission webhook \"policy.example.com\" denied the request: {} {name:?}: {message}",
                res.qualified()
            ),
            None,
        )
    }

    pub(super) fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// What the server answers for a path no API serves.
    pub(super) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    pub(super) fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            Some(json!({})),
        )
    }

    pub(super) fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// Where a write goes and who makes it.
pub(super) struct Target<'a> {
    pub(super) res: &'a Res,
    pub(super) namespace: Option<&'a str>,
    /// The name in the URL; `None` for a create (POST to the collection).
    pub(super) name: Option<&'a str>,
    /// A write to the `/status` subresource.
    pub(super) status: bool,
    pub(super) manager: String,
    pub(super) dry_run: bool,
}

pub(super) enum Op {
    Create(Value),
    Update(Value),
    MergePatch(Value),
    JsonPatch(Value),
    Apply { config: Value, force: bool },
}

type Key = (&'static str, &'static str, String, String);

/// Label and field selectors of a list, already parsed.
#[derive(Default)]
pub(super) struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<(String, bool, String)>,
}

enum LabelReq {
    Exists(String, bool),
    In(String, bool, Vec<String>),
}

impl Selector {
    pub(super) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut sel = Selector::default();
        for req in split_top_level(labels.unwrap_or_default()) {
            sel.labels.push(parse_label_req(req)?);
        }
        for req in split_top_level(fields.unwrap_or_default()) {
            let (key, eq, value) = if let Some((k, v)) = req.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = req.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = req.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {req:?}"
                )));
            };
            let key = key.trim();
            if key != "metadata.name" && key != "metadata.namespace" {
                return Err(ApiError::bad_request(format!(
                    "{key:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\""
                )));
            }
            sel.fields
                .push((key.to_string(), eq, value.trim().to_string()));
        }
        Ok(sel)
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let labels = meta["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Exists(k, want) => label(k).is_some() == *want,
            LabelReq::In(k, want, values) => match label(k) {
                Some(v) => values.iter().any(|x| x == v) == *want,
                // `k!=v` and `notin` match objects without the label.
                None => !*want,
            },
        });
        let fields_ok = self.fields.iter().all(|(k, eq, v)| {
            let actual = match k.as_str() {
                "metadata.name" => meta["name"].as_str().unwrap_or_default(),
                _ => meta["namespace"].as_str().unwrap_or_default(),
            };
            (actual == v) == *eq
        });
        labels_ok && fields_ok
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect()
}

fn parse_label_req(req: &str) -> Result<LabelReq, ApiError> {
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {req:?}"));
    if let Some(k) = req.strip_prefix('!') {
        return Ok(LabelReq::Exists(k.trim().to_string(), false));
    }
    for (op, want) in [(" notin ", false), (" in ", true)] {
        if let Some((k, rest)) = req.split_once(op) {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(bad)?;
            let values = inner.split(',').map(|v| v.trim().to_string()).collect();
            return Ok(LabelReq::In(k.trim().to_string(), want, values));
        }
    }
    let (k, want, v) = if let Some((k, v)) = req.split_once("!=") {
        (k, false, v)
    } else if let Some((k, v)) = req.split_once("==") {
        (k, true, v)
    } else if let Some((k, v)) = req.split_once('=') {
        (k, true, v)
    } else {
        return Ok(LabelReq::Exists(req.to_string(), true));
    };
    if k.trim().is_empty() {
        return Err(bad());
    }
    Ok(LabelReq::In(
        k.trim().to_string(),
        want,
        vec![v.trim().to_string()],
    ))
}

/// Metadata the server owns; a client's values are ignored or checked.
const SYSTEM_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

/// An object without `apiVersion`, `kind` and server-owned metadata: what field
/// ownership is computed on.
fn user_content(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("apiVersion");
        m.remove("kind");
        let meta = m
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            for k in SYSTEM_METADATA {
                meta.remove(k);
            }
        } else {
            *meta = Value::Object(Map::new());
        }
    }
    v
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj["metadata"][key].as_str().unwrap_or_default()
}

/// The generation moves only with changes outside metadata (and outside status
/// when status is a subresource).
fn spec_part(res: &Res, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Value::Object(m) = &mut v {
        m.remove("metadata");
        if res.status_subresource {
            m.remove("status");
        }
    }
    v
}

pub(super) struct Store {
    pub(super) served: Vec<Res>,
    /// Kinds the caller's role may not read or write, as RBAC would refuse them.
    pub(super) forbidden: Vec<Res>,
    /// Kinds whose writes a validating admission webhook denies, with its message.
    pub(super) denied: Vec<(Res, String)>,
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    pub(super) requests: Vec<String>,
}

fn key(res: &Res, namespace: Option<&str>, name: &str) -> Key {
    (
        res.group,
        res.plural,
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Store {
    pub(super) fn new(served: Vec<Res>) -> Self {
        Store {
            served,
            forbidden: Vec::new(),
            denied: Vec::new(),
            objects: BTreeMap::new(),
            resource_version: 0,
            requests: Vec::new(),
        }
    }

    pub(super) fn get(&self, res: &Res, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&key(res, namespace, name))
    }

    pub(super) fn list(&self, res: &Res, namespace: Option<&str>, sel: &Selector) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                *g == res.group && *p == res.plural && namespace.is_none_or(|n| n == ns)
            })
            .map(|(_, v)| v)
            .filter(|v| sel.matches(v))
            .map(|v| {
                let mut v = v.clone();
                // Built-in lists carry type information on the list only.
                if !res.is_custom()
                    && let Value::Object(m) = &mut v
                {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                v
            })
            .collect();
        json!({
            "apiVersion": res.api_version(),
            "kind": format!("{}List", res.kind),
            "metadata": {"resourceVersion": self.resource_version.to_string()},
            "items": items,
        })
    }

    /// Deletes as the server does once no finalizer holds the object; answers the
    /// `Status` the generic registry returns.
    pub(super) fn delete(
        &mut self,
        res: &Res,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let k = key(res, namespace, name);
        let live = self
            .objects
            .get(&k)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let pre = &options["preconditions"];
        if let Some(uid) = pre["uid"].as_str() {
            let actual = meta_str(live, "uid");
            if uid != actual {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = pre["resourceVersion"].as_str() {
            let actual = meta_str(live, "resourceVersion");
            if rv != actual {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        let mut details = ApiError::details(res, name);
        details["uid"] = live["metadata"]["uid"].clone();
        if !dry_run {
            self.objects.remove(&k);
            self.resource_version += 1;
        }
        Ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }))
    }

    /// Deletes what a list with `sel` would return, answering the deleted objects
    /// as a list, as `deletecollection` does.
    pub(super) fn delete_collection(
        &mut self,
        res: &Res,
        namespace: Option<&str>,
        sel: &Selector,
        dry_run: bool,
    ) -> Value {
        let list = self.list(res, namespace, sel);
        if !dry_run {
            for item in list["items"].as_array().into_iter().flatten() {
                let ns = item["metadata"]["namespace"].as_str();
                let name = meta_str(item, "name");
                self.objects.remove(&key(res, ns, name));
                self.resource_version += 1;
            }
        }
        list
    }

    /// Checks an object's type against the URL's.
    fn check_type(res: &Res, obj: &Value, apply: bool) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the object provided is not a JSON object",
            ));
        }
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        if api_version.is_empty() || kind.is_empty() {
            let missing = if kind.is_empty() {
                "Kind"
            } else {
                "APIVersion"
            };
            return Err(ApiError::bad_request(format!(
                "Object '{missing}' is missing in '{obj}'"
            )));
        }
        if api_version != res.api_version() {
            return Err(ApiError::bad_request(if apply {
                format!(
                    "Incorrect version specified in apply patch. Specified patch version: {api_version}, expected: {}",
                    res.api_version()
                )
            } else {
                format!(
                    "the API version in the data ({api_version}) does not match the expected API version ({})",
                    res.api_version()
                )
            }));
        }
        if kind != res.kind {
            return Err(ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {}): kind {kind} does not match",
                res.kind
            )));
        }
        Ok(())
    }

    /// Fills and checks the object's name and namespace against the URL's.
    fn check_identity(t: &Target<'_>, obj: &mut Value) -> Result<String, ApiError> {
        let meta = obj
            .as_object_mut()
            .expect("checked to be an object")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !meta.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        let body_name = meta["name"].as_str().unwrap_or_default().to_string();
        let name = match t.name {
            Some(url) => {
                if body_name.is_empty() && t.status {
                    url.to_string()
                } else if body_name != url {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({body_name}) does not match the name on the URL ({url})"
                    )));
                } else {
                    body_name
                }
            }
            None if body_name.is_empty() => {
                return Err(ApiError::invalid(
                    t.res.group,
                    t.res.kind,
                    "",
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                ));
            }
            None => body_name,
        };
        meta["name"] = name.clone().into();
        let body_ns = meta["namespace"].as_str().unwrap_or_default().to_string();
        match (t.res.namespaced, t.namespace) {
            (true, Some(ns)) => {
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                meta["namespace"] = ns.into();
            }
            _ => {
                // Cluster-scoped objects have no namespace, whatever was sent.
                if let Some(m) = meta.as_object_mut() {
                    m.remove("namespace");
                }
            }
        }
        Ok(name)
    }

    /// What each strategy resets before storing: status on the main resource of a
    /// kind with a status subresource, everything but status on `/status`, and
    /// for built-in kinds the fields their typed decoder does not know.
    fn reset(t: &Target<'_>, live: Option<&Value>, mut new: Value) -> Value {
        let res = t.res;
        if t.status {
            let mut out = live.cloned().unwrap_or_else(|| json!({}));
            match new.get_mut("status").map(Value::take) {
                Some(s) => out["status"] = s,
                None => {
                    if let Some(m) = out.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            return out;
        }
        let m = new.as_object_mut().expect("checked to be an object");
        if res.status_subresource {
            match live.and_then(|l| l.get("status")) {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
        if !res.is_custom() {
            m.retain(|k, _| {
                matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    || res.core_fields().contains(&k.as_str())
            });
        }
        new
    }

    fn entry_for(t: &Target<'_>, operation: &str) -> Entry {
        Entry {
            manager: t.manager.clone(),
            operation: operation.into(),
            api_version: t.res.api_version(),
            time: Some(now()),
            subresource: if t.status {
                "status".into()
            } else {
                String::new()
            },
            set: Default::default(),
        }
    }

    /// Every write: returns the HTTP code (201 for a create) and the object.
    pub(super) fn write(&mut self, t: Target<'_>, op: Op) -> Result<(u16, Value), ApiError> {
        let res = t.res;
        if t.status && !res.status_subresource {
            return Err(ApiError::no_route());
        }
        let (candidate, apply) = match op {
            Op::Create(body) | Op::Update(body) => {
                Self::check_type(res, &body, false)?;
                (body, None)
            }
            Op::MergePatch(patch) => {
                let name = t.name.unwrap_or_default();
                let live = self
                    .get(res, t.namespace, name)
                    .ok_or_else(|| ApiError::not_found(res, name))?;
                if !patch.is_object() {
                    return Err(ApiError::bad_request("the patch is not a JSON object"));
                }
                let patched = merge_patch(live, &patch);
                Self::check_type(res, &patched, false)?;
                (patched, None)
            }
            Op::JsonPatch(patch) => {
                let name = t.name.unwrap_or_default();
                let live = self
                    .get(res, t.namespace, name)
                    .ok_or_else(|| ApiError::not_found(res, name))?;
                let patched = json_patch(live, &patch)?;
                Self::check_type(res, &patched, false)?;
                (patched, None)
            }
            Op::Apply { config, force } => {
                Self::check_type(res, &config, true)?;
                if config["metadata"].get("managedFields").is_some() {
                    return Err(ApiError::bad_request("metadata.managedFields must be nil"));
                }
                (config, Some(force))
            }
        };
        let mut candidate = candidate;
        let name = Self::check_identity(&t, &mut candidate)?;
        let live = self.get(res, t.namespace, &name).cloned();
        let creating = t.name.is_none();
        match (&live, creating) {
            (Some(_), true) => return Err(ApiError::already_exists(res, &name)),
            (None, false) if apply.is_none() || t.status => {
                return Err(ApiError::not_found(res, &name));
            }
            _ => {}
        }

        // Optimistic concurrency: a resourceVersion sent must be the live one.
        let sent_rv = meta_str(&candidate, "resourceVersion").to_string();
        if let Some(l) = &live {
            if !sent_rv.is_empty() && sent_rv != meta_str(l, "resourceVersion") {
                return Err(ApiError::stale(res, &name));
            }
            if sent_rv.is_empty() && apply.is_none() && res.is_custom() {
                // Custom resources refuse unconditional updates.
                return Err(ApiError::invalid(
                    res.group,
                    res.kind,
                    &name,
                    "metadata.resourceVersion",
                    "FieldValueInvalid",
                    "Invalid value: 0x0: must be specified for an update",
                ));
            }
        } else if !sent_rv.is_empty() {
            return Err(if creating {
                ApiError::bad_request("resourceVersion should not be set on objects to be created")
            } else {
                ApiError::not_found(res, &name)
            });
        }

        let live_content = live.as_ref().map(user_content).unwrap_or_else(|| json!({}));
        let live_entries = live
            .as_ref()
            .and_then(|l| fields::decode(l["metadata"].get("managedFields")))
            .unwrap_or_default();

        let (content, entries) = match apply {
            Some(force) => {
                let config = if t.status {
                    json!({"status": candidate.get("status").cloned().unwrap_or(json!({}))})
                } else {
                    user_content(&Self::reset(&t, None, candidate))
                };
                let me = Self::entry_for(&t, "Apply");
                match fields::apply(&live_content, &config, live_entries, me, force) {
                    Ok(r) => r,
                    Err(conflicts) => return Err(apply_conflict(&conflicts)),
                }
            }
            None => {
                // A client may replace managedFields by sending non-empty ones.
                let sent = fields::decode(candidate["metadata"].get("managedFields"))
                    .filter(|e| !e.is_empty());
                let mut new = Self::reset(&t, live.as_ref(), candidate);
                fields::drop_nulls(&mut new);
                let content = user_content(&new);
                let cmp = fields::compare(&live_content, &content);
                let entries = fields::update(
                    sent.unwrap_or(live_entries),
                    &cmp,
                    Self::entry_for(&t, "Update"),
                );
                (content, entries)
            }
        };

        let obj = self.finish(&t, &name, live.as_ref(), content, &entries);
        if live.as_ref() == Some(&obj) {
            // Nothing changed: the server skips the storage write.
            return Ok((200, obj));
        }
        let mut obj = obj;
        let meta = obj["metadata"].as_object_mut().expect("an object");
        if t.dry_run {
            if live.is_none() {
                meta.remove("resourceVersion");
            }
        } else {
            self.resource_version += 1;
            meta.insert(
                "resourceVersion".into(),
                self.resource_version.to_string().into(),
            );
            self.objects
                .insert(key(res, t.namespace, &name), obj.clone());
        }
        Ok((if live.is_none() { 201 } else { 200 }, obj))
    }

    /// Puts server-owned metadata back around the user content.
    fn finish(
        &self,
        t: &Target<'_>,
        name: &str,
        live: Option<&Value>,
        content: Value,
        entries: &[Entry],
    ) -> Value {
        let res = t.res;
        let mut obj = content;
        let m = obj.as_object_mut().expect("an object");
        m.insert("apiVersion".into(), res.api_version().into());
        m.insert("kind".into(), res.kind.into());
        let meta = m
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object");
        meta.insert("name".into(), name.into());
        if res.namespaced {
            meta.insert("namespace".into(), t.namespace.unwrap_or_default().into());
        }
        let from_live = |k: &str| live.and_then(|l| l["metadata"].get(k)).cloned();
        meta.insert(
            "uid".into(),
            from_live("uid").unwrap_or_else(|| uuid::Uuid::new_v4().to_string().into()),
        );
        meta.insert(
            "creationTimestamp".into(),
            from_live("creationTimestamp").unwrap_or_else(|| now().into()),
        );
        if let Some(rv) = from_live("resourceVersion") {
            meta.insert("resourceVersion".into(), rv);
        }
        if !entries.is_empty() {
            meta.insert("managedFields".into(), fields::encode(entries));
        }
        if res.is_custom() {
            let generation = match live {
                None => 1,
                Some(l) => {
                    let g = l["metadata"]["generation"].as_i64().unwrap_or(1);
                    if spec_part(res, l) == spec_part(res, &obj) {
                        g
                    } else {
                        g + 1
                    }
                }
            };
            obj["metadata"]["generation"] = generation.into();
        }
        obj
    }
}

fn apply_conflict(conflicts: &[fields::Conflict]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "type": "FieldManagerConflict",
                "message": format!("conflict with {}", c.manager),
                "field": c.path,
            })
        })
        .collect();
    let message = if let [c] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager, c.path
        )
    } else {
        let mut lines = Vec::new();
        let mut last: Option<&str> = None;
        for c in conflicts {
            if last != Some(c.manager.as_str()) {
                lines.push(format!("conflicts with {}:", c.manager));
                last = Some(&c.manager);
            }
            lines.push(format!("- {}", c.path));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError::new(409, "Conflict", message, Some(json!({"causes": causes})))
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        _ => patch.clone(),
    }
}

/// RFC 6902 JSON patch.
fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    let mut doc = target.clone();
    let invalid = |m: String| ApiError::new(422, "Invalid", m, None);
    for op in ops {
        let path = op["path"].as_str().unwrap_or_default();
        match op["op"].as_str().unwrap_or_default() {
            "add" => pointer_add(&mut doc, path, op["value"].clone()).map_err(invalid)?,
            "remove" => {
                pointer_remove(&mut doc, path).map_err(invalid)?;
            }
            "replace" => {
                pointer_remove(&mut doc, path).map_err(invalid)?;
                pointer_add(&mut doc, path, op["value"].clone()).map_err(invalid)?;
            }
            "move" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = pointer_remove(&mut doc, from).map_err(invalid)?;
                pointer_add(&mut doc, path, v).map_err(invalid)?;
            }
            "copy" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| invalid(format!("missing value at {from}")))?;
                pointer_add(&mut doc, path, v).map_err(invalid)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(invalid(format!("testing value {path} failed: test failed")));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!("Unexpected kind: {other}")));
            }
        }
    }
    Ok(doc)
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((
        parent.to_string(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| format!("invalid index {last} in {path}"))?
            };
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!(
            "add operation does not apply: doc is missing path: {path:?}"
        )),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("remove operation does not apply: doc is missing path: {path:?}");
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(missing),
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}
