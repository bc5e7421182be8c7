//! The OpenAPI document lists exactly the router's routes, and each listed route is served.

mod common;

use std::collections::BTreeSet;

use common::{code, TestServer};
use coven_group_server::route_list;
use serde_json::{json, Value};

fn document_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if item.get(method).is_some() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn the_document_and_the_router_list_the_same_routes() {
    let server = TestServer::start();
    let reply = server
        .anonymous()
        .json("GET", "/api/openapi.json", None)
        .unwrap();
    assert_eq!(reply.status, 200);
    let doc = reply.json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let router: BTreeSet<(String, String)> = route_list()
        .into_iter()
        .map(|(method, path)| (method.to_string(), path.to_owned()))
        .collect();
    assert_eq!(document_routes(&doc), router);

    // Every listed route reaches a handler: no "no endpoint" and no 405 from the router.
    let group = server.group();
    for (method, path) in &router {
        let path = path.replace("{id}", &group);
        let body = (method == "POST" || method == "PATCH").then(|| json!({}));
        let reply = server.owner().json(method, &path, body.as_ref()).unwrap();
        let body = reply.json().unwrap_or(Value::Null);
        assert_ne!(reply.status, 405, "{method} {path}: {body}");
        assert!(
            !(code(&body) == "not_found" && body["error"]["details"]["what"] == "endpoint"),
            "{method} {path} is not routed: {body}"
        );
    }
}
