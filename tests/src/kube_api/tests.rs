//! The double driven by the real `kube` client, as the agent will drive a cluster.

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

use super::{KubeApi, Res, STATUS_MANAGER};

struct Cluster {
    api: KubeApi,
    client: Client,
    dir: tempfile::TempDir,
}

async fn client_from(path: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("a kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube accepts the kubeconfig");
    Client::try_from(config).expect("a client")
}

async fn cluster(version: &str) -> Cluster {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let api = KubeApi::start(dir.path(), version).expect("the double starts");
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path).expect("a kubeconfig");
    let client = client_from(&path).await;
    Cluster { api, client, dir }
}

fn resource(r: &Res) -> ApiResource {
    ApiResource {
        group: r.group.into(),
        version: r.version.into(),
        api_version: r.api_version(),
        kind: r.kind.into(),
        plural: r.plural.into(),
    }
}

impl Cluster {
    fn all(&self, r: &Res) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &resource(r))
    }

    fn namespaced(&self, r: &Res, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &resource(r))
    }
}

fn idms(name: &str, source: &str, mirror: &str) -> Value {
    json!({
        "apiVersion": "config.openshift.io/v1",
        "kind": "ImageDigestMirrorSet",
        "metadata": {"name": name},
        "spec": {"imageDigestMirrors": [{"source": source, "mirrors": [mirror]}]},
    })
}

fn value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).expect("an object serialises")
}

fn api_error(e: kube::Error) -> kube::core::ErrorResponse {
    match e {
        kube::Error::Api(e) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// `(manager, operation, fieldsV1)` of each managedFields entry.
fn managers(o: &Value) -> Vec<(String, String, Value)> {
    o["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_string(),
                e["operation"].as_str().unwrap_or_default().to_string(),
                e["fieldsV1"].clone(),
            )
        })
        .collect()
}

fn rv(o: &Value) -> u64 {
    o["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("a numeric resourceVersion")
}

#[tokio::test]
async fn apply_creates_with_managed_fields_and_resource_version() {
    let c = cluster("4.16.3").await;
    let cv = c.api.get(&Res::CLUSTER_VERSION, None, "version").unwrap();
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let mut config = idms(
        "airlock",
        "quay.io/openshift-release-dev",
        "mirror.local/ocp",
    );
    config["metadata"]["labels"] = json!({"app": "airlock"});

    let created = api
        .patch(
            "airlock",
            &PatchParams::apply("airlock"),
            &Patch::Apply(&config),
        )
        .await
        .unwrap();
    let created = value(&created);

    assert!(rv(&created) > rv(&cv), "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(
        created["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    assert!(created["metadata"]["creationTimestamp"].is_string());
    assert_eq!(created["spec"], config["spec"]);
    assert_eq!(
        managers(&created),
        vec![(
            "airlock".to_string(),
            "Apply".to_string(),
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:imageDigestMirrors": {}}})
        )]
    );
    let entry = &created["metadata"]["managedFields"][0];
    assert_eq!(entry["apiVersion"], "config.openshift.io/v1");
    assert_eq!(entry["fieldsType"], "FieldsV1");
    assert!(entry["time"].is_string());
    // What the server stored is what it answered.
    let fetched = value(&api.get("airlock").await.unwrap());
    assert_eq!(fetched, created);
    assert_eq!(
        c.api.get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "airlock"),
        Some(created)
    );
    assert!(c.api.requests().iter().any(|r| {
        r.starts_with("PATCH /apis/config.openshift.io/v1/imagedigestmirrorsets/airlock?")
            && r.contains("fieldManager=airlock")
    }));
}

#[tokio::test]
async fn reapplying_the_same_config_changes_nothing() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let config = idms("airlock", "quay.io/a", "mirror.local/a");
    let pp = PatchParams::apply("airlock");
    let first = value(
        &api.patch("airlock", &pp, &Patch::Apply(&config))
            .await
            .unwrap(),
    );
    let again = value(
        &api.patch("airlock", &pp, &Patch::Apply(&config))
            .await
            .unwrap(),
    );
    assert_eq!(again, first, "a no-op apply writes nothing");

    let changed = idms("airlock", "quay.io/a", "mirror.local/b");
    let third = value(
        &api.patch("airlock", &pp, &Patch::Apply(&changed))
            .await
            .unwrap(),
    );
    assert_eq!(third["metadata"]["generation"], 2);
    assert!(rv(&third) > rv(&first));
    assert_eq!(third["spec"], changed["spec"]);

    // A label change is metadata: a new resourceVersion, the same generation.
    let mut labelled = changed.clone();
    labelled["metadata"]["labels"] = json!({"x": "y"});
    let fourth = value(
        &api.patch("airlock", &pp, &Patch::Apply(&labelled))
            .await
            .unwrap(),
    );
    assert_eq!(fourth["metadata"]["generation"], 2);
    assert!(rv(&fourth) > rv(&third));
}

#[tokio::test]
async fn apply_conflicts_with_an_admins_edit() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let config = idms("airlock", "quay.io/a", "mirror.local/a");
    let pp = PatchParams::apply("airlock");
    api.patch("airlock", &pp, &Patch::Apply(&config))
        .await
        .unwrap();

    let edited = c
        .api
        .edit(
            &Res::IMAGE_DIGEST_MIRROR_SET,
            None,
            "airlock",
            "kubectl-edit",
            json!({"spec": {"imageDigestMirrors": [{"source": "quay.io/a", "mirrors": ["admin.local/a"]}]}}),
        )
        .unwrap();
    // The Update took the list from the applier, whose entry is now empty and gone.
    assert_eq!(
        managers(&edited),
        vec![(
            "kubectl-edit".to_string(),
            "Update".to_string(),
            json!({"f:spec": {"f:imageDigestMirrors": {}}})
        )]
    );

    let e = api_error(
        api.patch("airlock", &pp, &Patch::Apply(&config))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(e.reason, "Conflict");
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using config.openshift.io/v1: .spec.imageDigestMirrors"
    );
    // The refused apply left the admin's edit in place.
    assert_eq!(
        c.api.get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "airlock"),
        Some(edited)
    );
}

#[tokio::test]
async fn a_forced_apply_takes_ownership() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let config = idms("airlock", "quay.io/a", "mirror.local/a");
    api.patch(
        "airlock",
        &PatchParams::apply("airlock"),
        &Patch::Apply(&config),
    )
    .await
    .unwrap();
    c.api
        .edit(
            &Res::IMAGE_DIGEST_MIRROR_SET,
            None,
            "airlock",
            "kubectl-edit",
            json!({"spec": {"imageDigestMirrors": []}, "metadata": {"labels": {"admin": "yes"}}}),
        )
        .unwrap();

    let forced = value(
        &api.patch(
            "airlock",
            &PatchParams::apply("airlock").force(),
            &Patch::Apply(&config),
        )
        .await
        .unwrap(),
    );
    assert_eq!(forced["spec"], config["spec"]);
    // The editor keeps only what the applier did not take.
    assert_eq!(
        managers(&forced),
        vec![
            (
                "airlock".to_string(),
                "Apply".to_string(),
                json!({"f:spec": {"f:imageDigestMirrors": {}}})
            ),
            (
                "kubectl-edit".to_string(),
                "Update".to_string(),
                json!({"f:metadata": {"f:labels": {".": {}, "f:admin": {}}}})
            ),
        ]
    );
}

#[tokio::test]
async fn the_same_value_is_shared_not_a_conflict() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let config = idms("airlock", "quay.io/a", "mirror.local/a");
    c.api
        .create(&Res::IMAGE_DIGEST_MIRROR_SET, config.clone())
        .unwrap();
    let applied = value(
        &api.patch(
            "airlock",
            &PatchParams::apply("airlock"),
            &Patch::Apply(&config),
        )
        .await
        .unwrap(),
    );
    let owners: Vec<String> = managers(&applied)
        .into_iter()
        .filter(|(_, _, f)| f["f:spec"]["f:imageDigestMirrors"].is_object())
        .map(|(m, _, _)| m)
        .collect();
    assert_eq!(owners, vec!["airlock", "kubectl-create"]);
    // Ownership changed, so the object did; its spec did not.
    assert_eq!(applied["metadata"]["generation"], 1);
}

#[tokio::test]
async fn fields_an_applier_omits_are_pruned_unless_someone_else_owns_them() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let mut config = idms("airlock", "quay.io/a", "mirror.local/a");
    config["metadata"]["labels"] = json!({"a": "1", "b": "2", "shared": "s"});
    config["metadata"]["annotations"] = json!({"note": "x"});
    let pp = PatchParams::apply("airlock");
    api.patch("airlock", &pp, &Patch::Apply(&config))
        .await
        .unwrap();
    // Another applier claims the same value; an editor adds a label of its own.
    let other = json!({"apiVersion": "config.openshift.io/v1", "kind": "ImageDigestMirrorSet",
        "metadata": {"name": "airlock", "labels": {"shared": "s"}}});
    api.patch(
        "airlock",
        &PatchParams::apply("other"),
        &Patch::Apply(&other),
    )
    .await
    .unwrap();
    c.api
        .edit(
            &Res::IMAGE_DIGEST_MIRROR_SET,
            None,
            "airlock",
            "kubectl-edit",
            json!({"metadata": {"labels": {"admin": "yes"}}}),
        )
        .unwrap();

    let mut smaller = idms("airlock", "quay.io/a", "mirror.local/a");
    smaller["metadata"]["labels"] = json!({"a": "1"});
    let pruned = value(
        &api.patch("airlock", &pp, &Patch::Apply(&smaller))
            .await
            .unwrap(),
    );
    assert_eq!(
        pruned["metadata"]["labels"],
        json!({"a": "1", "shared": "s", "admin": "yes"})
    );
    assert!(
        pruned["metadata"].get("annotations").is_none(),
        "an emptied map nobody owns goes: {pruned}"
    );

    // Omitting the whole spec removes it: the applier was its only owner.
    let bare = json!({"apiVersion": "config.openshift.io/v1", "kind": "ImageDigestMirrorSet",
        "metadata": {"name": "airlock", "labels": {"a": "1"}}});
    let bare = value(
        &api.patch("airlock", &pp, &Patch::Apply(&bare))
            .await
            .unwrap(),
    );
    assert!(bare.get("spec").is_none(), "{bare}");
    assert_eq!(bare["metadata"]["generation"], 2);
}

#[tokio::test]
async fn a_put_with_a_stale_resource_version_conflicts() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let created: DynamicObject = serde_json::from_value(
        c.api
            .create(
                &Res::IMAGE_DIGEST_MIRROR_SET,
                idms("x", "quay.io/a", "m.local/a"),
            )
            .unwrap(),
    )
    .unwrap();
    c.api
        .edit(
            &Res::IMAGE_DIGEST_MIRROR_SET,
            None,
            "x",
            "kubectl-edit",
            json!({"metadata": {"labels": {"edited": "yes"}}}),
        )
        .unwrap();

    let e = api_error(
        api.replace("x", &PostParams::default(), &created)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(e.reason, "Conflict");
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on imagedigestmirrorsets.config.openshift.io \"x\": the object has been modified; please apply your changes to the latest version and try again"
    );

    // Custom resources refuse a PUT without any resourceVersion.
    let mut unconditional = created.clone();
    unconditional.metadata.resource_version = None;
    let e = api_error(
        api.replace("x", &PostParams::default(), &unconditional)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));

    // With the live resourceVersion it succeeds, and the updater owns what it changed.
    let mut live = api.get("x").await.unwrap();
    live.data["spec"]["imageDigestMirrors"][0]["mirrors"] = json!(["m.local/b"]);
    let pp = PostParams {
        field_manager: Some("airlock-put".into()),
        ..Default::default()
    };
    let replaced = value(&api.replace("x", &pp, &live).await.unwrap());
    assert_eq!(replaced["metadata"]["generation"], 2);
    assert!(managers(&replaced).contains(&(
        "airlock-put".to_string(),
        "Update".to_string(),
        json!({"f:spec": {"f:imageDigestMirrors": {}}})
    )));
    // The creator loses the list but keeps `spec` itself, which it added.
    assert!(managers(&replaced).contains(&(
        "kubectl-create".to_string(),
        "Update".to_string(),
        json!({"f:spec": {}})
    )));
}

#[tokio::test]
async fn missing_objects_are_not_found() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let e = api_error(api.get("nope").await.unwrap_err());
    assert_eq!(e.code, 404);
    assert_eq!(e.reason, "NotFound");
    assert_eq!(
        e.message,
        "imagedigestmirrorsets.config.openshift.io \"nope\" not found"
    );
    assert!(api.get_opt("nope").await.unwrap().is_none());

    let cm = c.namespaced(&Res::CONFIG_MAP, "openshift-config");
    let e = api_error(cm.get("nope").await.unwrap_err());
    assert_eq!(e.message, "configmaps \"nope\" not found");

    // Deleting twice: the second finds nothing.
    c.api
        .create(&Res::IMAGE_DIGEST_MIRROR_SET, idms("d", "quay.io/a", "m/a"))
        .unwrap();
    let deleted = api.delete("d", &DeleteParams::default()).await.unwrap();
    let status = deleted.right().expect("custom resources answer a Status");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    let e = api_error(api.delete("d", &DeleteParams::default()).await.unwrap_err());
    assert_eq!(e.code, 404);
    assert!(
        c.api
            .get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "d")
            .is_none()
    );
}

#[tokio::test]
async fn requests_without_the_token_are_unauthorized() {
    let c = cluster("4.16.3").await;
    let path = c.dir.path().join("kubeconfig");
    let mut config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (file, user) in [
        ("no-token", json!({})),
        ("wrong-token", json!({"token": "not-the-token"})),
    ] {
        config["users"][0]["user"] = user;
        let p = c.dir.path().join(file);
        std::fs::write(&p, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
        let client = client_from(&p).await;
        let api: Api<DynamicObject> = Api::all_with(client, &resource(&Res::CLUSTER_VERSION));
        let e = api_error(api.get("version").await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"), "{file}");
    }
    let requests = c.api.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| *r == "GET /apis/config.openshift.io/v1/clusterversions/version")
            .count(),
        2
    );
    // The real token still works.
    assert!(c.all(&Res::CLUSTER_VERSION).get("version").await.is_ok());
}

#[tokio::test]
async fn a_4_12_cluster_serves_no_mirror_sets() {
    let c = cluster("4.12.30").await;
    let config = idms("airlock", "quay.io/a", "mirror.local/a");
    let e = api_error(
        c.all(&Res::IMAGE_DIGEST_MIRROR_SET)
            .patch(
                "airlock",
                &PatchParams::apply("airlock"),
                &Patch::Apply(&config),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    assert_eq!(e.reason, "NotFound");
    assert_eq!(
        e.message,
        "the server could not find the requested resource"
    );
    let e = api_error(
        c.all(&Res::IMAGE_TAG_MIRROR_SET)
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);

    // ICSP is what such a cluster takes instead.
    let icsp = json!({"apiVersion": "operator.openshift.io/v1alpha1", "kind": "ImageContentSourcePolicy",
        "metadata": {"name": "airlock"},
        "spec": {"repositoryDigestMirrors": [{"source": "quay.io/a", "mirrors": ["mirror.local/a"]}]}});
    c.all(&Res::IMAGE_CONTENT_SOURCE_POLICY)
        .patch(
            "airlock",
            &PatchParams::apply("airlock"),
            &Patch::Apply(&icsp),
        )
        .await
        .unwrap();

    // Discovery tells the same story, and the Kubernetes version is 4.12's.
    let resources = c
        .client
        .list_api_group_resources("config.openshift.io/v1")
        .await
        .unwrap();
    let names: Vec<&str> = resources
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, vec!["clusterversions", "clusterversions/status"]);
    assert_eq!(c.client.apiserver_version().await.unwrap().minor, "25");

    let newer = cluster("4.14.0").await;
    let resources = newer
        .client
        .list_api_group_resources("config.openshift.io/v1")
        .await
        .unwrap();
    assert!(
        resources
            .resources
            .iter()
            .any(|r| r.name == "imagedigestmirrorsets" && !r.namespaced)
    );
}

#[tokio::test]
async fn status_is_a_subresource() {
    let c = cluster("4.16.3").await;
    let api = c.namespaced(&Res::CATALOG_SOURCE, "openshift-marketplace");
    let source = json!({"apiVersion": "operators.coreos.com/v1alpha1", "kind": "CatalogSource",
        "metadata": {"name": "airlock-redhat"},
        "spec": {"sourceType": "grpc", "image": "mirror.local/redhat-operator-index:v4.16"},
        "status": {"connectionState": {"lastObservedState": "READY"}}});
    let created = value(
        &api.patch(
            "airlock-redhat",
            &PatchParams::apply("airlock"),
            &Patch::Apply(&source),
        )
        .await
        .unwrap(),
    );
    assert!(
        created.get("status").is_none(),
        "main-resource writes ignore status"
    );
    assert_eq!(created["metadata"]["namespace"], "openshift-marketplace");

    let with_status = c
        .api
        .set_status(
            &Res::CATALOG_SOURCE,
            Some("openshift-marketplace"),
            "airlock-redhat",
            json!({"connectionState": {"lastObservedState": "READY"}}),
        )
        .unwrap();
    assert!(rv(&with_status) > rv(&created));
    assert_eq!(with_status["metadata"]["generation"], 1);
    let status_owner = managers(&with_status)
        .into_iter()
        .find(|(m, _, _)| m == STATUS_MANAGER)
        .expect("the operator owns status");
    assert_eq!(
        status_owner.2,
        json!({"f:status": {".": {}, "f:connectionState": {".": {}, "f:lastObservedState": {}}}})
    );
    assert_eq!(
        with_status["metadata"]["managedFields"][1]["subresource"],
        "status"
    );

    // kube reads status through the subresource; a status patch touches nothing else.
    let read = value(&api.get_status("airlock-redhat").await.unwrap());
    assert_eq!(
        read["status"]["connectionState"]["lastObservedState"],
        "READY"
    );
    let patched = value(
        &api.patch_status(
            "airlock-redhat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "evil"}, "status": {"connectionState": {"lastObservedState": "TRANSIENT_FAILURE"}}})),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        patched["spec"]["image"],
        "mirror.local/redhat-operator-index:v4.16"
    );
    assert_eq!(
        patched["status"]["connectionState"]["lastObservedState"],
        "TRANSIENT_FAILURE"
    );
    // And a main-resource patch cannot change status.
    let patched = value(
        &api.patch(
            "airlock-redhat",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"connectionState": null}})),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        patched["status"]["connectionState"]["lastObservedState"],
        "TRANSIENT_FAILURE"
    );

    // The seeded ClusterVersion reads as an installed cluster's.
    let cv = value(
        &c.all(&Res::CLUSTER_VERSION)
            .get_status("version")
            .await
            .unwrap(),
    );
    assert_eq!(cv["status"]["desired"]["version"], "4.16.3");
    assert_eq!(cv["status"]["history"][0]["state"], "Completed");
    assert_eq!(cv["status"]["availableUpdates"], json!([]));
    assert_eq!(cv["spec"]["channel"], "stable-4.16");
}

#[tokio::test]
async fn lists_have_the_list_kind_and_a_resource_version() {
    let c = cluster("4.16.3").await;
    for (ns, name, tier) in [("a", "one", "x"), ("b", "two", "y"), ("b", "three", "x")] {
        c.api
            .create(
                &Res::CATALOG_SOURCE,
                json!({"apiVersion": "operators.coreos.com/v1alpha1", "kind": "CatalogSource",
                    "metadata": {"name": name, "namespace": ns, "labels": {"tier": tier}},
                    "spec": {"sourceType": "grpc"}}),
            )
            .unwrap();
    }
    c.api
        .create(
            &Res::CONFIG_MAP,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "b"}, "data": {"k": "v"}}),
        )
        .unwrap();

    let all = c
        .all(&Res::CATALOG_SOURCE)
        .list(&ListParams::default())
        .await
        .unwrap();
    let names: Vec<_> = all
        .items
        .iter()
        .map(|o| o.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["one", "three", "two"], "namespace, then name");
    let in_b = c
        .namespaced(&Res::CATALOG_SOURCE, "b")
        .list(&ListParams::default().labels("tier=x"))
        .await
        .unwrap();
    assert_eq!(in_b.items.len(), 1);
    assert_eq!(in_b.items[0].metadata.name.as_deref(), Some("three"));

    let raw = |path: &str| {
        http::Request::get(path)
            .body(Vec::new())
            .expect("a request")
    };
    let list: Value = serde_json::from_str(
        &c.client
            .request_text(raw("/apis/operators.coreos.com/v1alpha1/catalogsources"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(list["kind"], "CatalogSourceList");
    assert_eq!(list["apiVersion"], "operators.coreos.com/v1alpha1");
    let list_rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "CatalogSource" && rv(i) <= list_rv)
    );
    // Built-in lists carry no kind on their items.
    let cms: Value = serde_json::from_str(
        &c.client
            .request_text(raw("/api/v1/namespaces/b/configmaps"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(cms["kind"], "ConfigMapList");
    assert!(cms["items"][0].get("kind").is_none());
    assert_eq!(cms["items"][0]["data"], json!({"k": "v"}));
    assert_eq!(c.api.list(&Res::CATALOG_SOURCE).len(), 3);
}

#[tokio::test]
async fn patch_options_are_validated_as_the_server_does() {
    let c = cluster("4.16.3").await;
    let patch = |path: &str, media: &str, body: &Value| {
        http::Request::patch(path)
            .header("content-type", media)
            .body(serde_json::to_vec(body).unwrap())
            .expect("a request")
    };
    let idms_path = "/apis/config.openshift.io/v1/imagedigestmirrorsets/x";
    let e = api_error(
        c.client
            .request_text(patch(
                idms_path,
                "application/apply-patch+yaml",
                &idms("x", "quay.io/a", "m/a"),
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );

    c.api
        .create(&Res::IMAGE_DIGEST_MIRROR_SET, idms("x", "quay.io/a", "m/a"))
        .unwrap();
    let e = api_error(
        c.client
            .request_text(patch(
                idms_path,
                "application/strategic-merge-patch+json",
                &json!({"metadata": {"labels": {"a": "b"}}}),
            ))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"));

    // ConfigMaps take strategic merge patches; their JSON patches work too.
    let cm = c.namespaced(&Res::CONFIG_MAP, "default");
    cm.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cm"}, "data": {"a": "1"}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let patched = cm
        .patch(
            "cm",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(value(&patched)["data"], json!({"a": "1", "b": "2"}));
    assert!(value(&patched)["metadata"].get("generation").is_none());
    let text = c
        .client
        .request_text(patch(
            "/api/v1/namespaces/default/configmaps/cm",
            "application/json-patch+json",
            &json!([{"op": "remove", "path": "/data/a"}]),
        ))
        .await
        .unwrap();
    let patched: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(patched["data"], json!({"b": "2"}));

    let e = api_error(
        cm.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm"}}))
            .unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
}

#[tokio::test]
async fn a_dry_run_stores_nothing() {
    let c = cluster("4.16.3").await;
    let api = c.all(&Res::IMAGE_DIGEST_MIRROR_SET);
    let config = idms("dry", "quay.io/a", "m/a");
    let answered = value(
        &api.patch(
            "dry",
            &PatchParams::apply("airlock").dry_run(),
            &Patch::Apply(&config),
        )
        .await
        .unwrap(),
    );
    assert_eq!(answered["spec"], config["spec"]);
    assert!(answered["metadata"].get("resourceVersion").is_none());
    assert!(
        c.api
            .get(&Res::IMAGE_DIGEST_MIRROR_SET, None, "dry")
            .is_none()
    );
    let list = api.list(&ListParams::default()).await.unwrap();
    assert!(list.items.is_empty());
}

async fn send(req: reqwest::RequestBuilder, token: &str) -> (u16, Value) {
    let resp = req.bearer_auth(token).send().await.expect("a response");
    let code = resp.status().as_u16();
    (code, resp.json::<Value>().await.expect("a JSON body"))
}

/// The full `Status` bodies, read past kube (which keeps only code, reason and
/// message).
#[tokio::test]
async fn failures_are_metav1_status_documents() {
    let c = cluster("4.16.3").await;
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(c.api.ca_file()).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let url = format!(
        "{}/apis/config.openshift.io/v1/imagedigestmirrorsets/x",
        c.api.url()
    );
    let token = c.api.token().to_string();
    let (code, body) = send(http.get(&url), &token).await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "imagedigestmirrorsets.config.openshift.io \"x\" not found",
            "reason": "NotFound",
            "details": {"name": "x", "group": "config.openshift.io", "kind": "imagedigestmirrorsets"},
            "code": 404})
    );

    let mut config = idms("x", "quay.io/a", "m/a");
    config["metadata"]["labels"] = json!({"a": "1"});
    let apply = |force: bool| {
        http.patch(format!(
            "{url}?fieldManager=airlock{}",
            if force { "&force=true" } else { "" }
        ))
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&config).unwrap())
    };
    let (code, _) = send(apply(false), &token).await;
    assert_eq!(code, 201, "an apply that creates answers 201 Created");
    c.api
        .edit(
            &Res::IMAGE_DIGEST_MIRROR_SET,
            None,
            "x",
            "kubectl-edit",
            json!({"metadata": {"labels": {"a": "2"}}, "spec": {"imageDigestMirrors": []}}),
        )
        .unwrap();
    let (code, body) = send(apply(false), &token).await;
    assert_eq!(code, 409);
    let manager = "\"kubectl-edit\" using config.openshift.io/v1";
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("Apply failed with 2 conflicts: conflicts with {manager}:\n- .metadata.labels.a\n- .spec.imageDigestMirrors"),
            "reason": "Conflict",
            "details": {"causes": [
                {"type": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": ".metadata.labels.a"},
                {"type": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": ".spec.imageDigestMirrors"},
            ]},
            "code": 409})
    );
    let (code, body) = send(apply(true), &token).await;
    assert_eq!(code, 200);
    assert_eq!(body["metadata"]["labels"]["a"], "1");

    let (code, body) = send(
        http.get(format!("{}/apis/example.com/v1/things", c.api.url())),
        &token,
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        body["message"],
        "the server could not find the requested resource"
    );
}
