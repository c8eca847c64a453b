//! The OpenAPI document as served: utoipa's, from the handlers, completed with what utoipa
//! cannot derive. The group spec's schema comes from schemars (the one the CLI prints and the
//! parser follows), and links tell clients (and schemathesis) where the ids of one answer lead.

use serde_json::{Value, json};

use crate::spec::GroupSpec;

/// utoipa's document with the spec schema in place and the links between operations.
pub fn document(api: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serialises");
    put_spec_schema(&mut doc);
    put_links(&mut doc);
    doc
}

/// Replaces utoipa's placeholder `GroupSpec` by the schemars schema; its definitions become
/// components of their own.
fn put_spec_schema(doc: &mut Value) {
    let mut spec = GroupSpec::schema();
    let defs = spec
        .as_object_mut()
        .and_then(|o| {
            o.remove("$schema");
            o.remove("$defs")
        })
        .unwrap_or_default();
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("utoipa lists the components");
    for (name, mut def) in defs.as_object().cloned().unwrap_or_default() {
        assert!(
            !schemas.contains_key(&name),
            "the spec schema's {name} collides with an API type"
        );
        relink(&mut def);
        schemas.insert(name, def);
    }
    relink(&mut spec);
    spec["examples"] = json!([{
        "ID": "example",
        "Properties": {
            "Allocation": {"Size": 1},
            "Instance": {"Plugin": "instance-file", "Properties": {}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}}
        }
    }]);
    schemas.insert("GroupSpec".into(), spec);
}

/// `#/$defs/X` (schemars) becomes `#/components/schemas/X` (OpenAPI).
fn relink(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/{name}");
            }
            map.values_mut().for_each(relink);
        }
        Value::Array(items) => items.iter_mut().for_each(relink),
        _ => {}
    }
}

/// Where an answer's ids lead: a commit to the group's own operations, a listing to its first
/// entry.
fn put_links(doc: &mut Value) {
    let group_ops = |id: &str| {
        json!({
            "GetGroup": {"operationId": "get_group", "parameters": {"id": id}},
            "History": {"operationId": "history", "parameters": {"id": id}},
            "Rollback": {"operationId": "rollback", "parameters": {"id": id}},
            "Free": {"operationId": "free", "parameters": {"id": id}},
            "Destroy": {"operationId": "destroy", "parameters": {"id": id}},
            "DestroyInstances": {"operationId": "destroy_instances", "parameters": {"id": id}},
            "Protect": {"operationId": "protect", "parameters": {"id": id}},
            "Unprotect": {"operationId": "unprotect", "parameters": {"id": id}},
        })
    };
    let links = [
        ("/v1/groups", "post", group_ops("$response.body#/id")),
        ("/v1/groups", "get", group_ops("$response.body#/0/id")),
        (
            "/v1/groups/{id}/rollback",
            "post",
            group_ops("$response.body#/id"),
        ),
        (
            "/v1/plugins",
            "get",
            json!({"GetPlugin": {"operationId": "plugin",
                                 "parameters": {"name": "$response.body#/0/name"}}}),
        ),
    ];
    for (path, method, links) in links {
        let response = &mut doc["paths"][path][method]["responses"]["200"];
        assert!(response.is_object(), "no 200 answer of {method} {path}");
        response["links"] = links;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_request_bodies_are_real_schemas() {
        let doc = crate::api::openapi_document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in &all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} points outside the components"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} does not resolve"
            );
        }
        let spec = &doc["components"]["schemas"]["GroupSpec"];
        assert_eq!(spec["required"], json!(["ID", "Properties"]), "{spec}");
        let body = &doc["paths"]["/v1/groups"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/GroupSpec");
        let plugins = &doc["paths"]["/v1/plugins"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert_eq!(plugins["type"], "array", "{plugins}");
    }
}
