//! The JSON Schema of what Yun accepts, derived from the same types that validation uses.

use schemars::{JsonSchema, schema_for};
use serde_json::{Value, json};

use crate::spec::{self, EnvTrait, MetadataTrait, Properties, ScalerTrait};
use crate::validate::API_VERSION;

/// JSON Schema (2020-12) of a Yun `Application` manifest.
pub fn application_schema() -> Value {
    let props = to_value::<Properties>();
    let component_variants: Vec<Value> = spec::COMPONENT_TYPES
        .iter()
        .map(|t| {
            let allowed = spec::allowed_properties(t);
            let mut p = props.clone();
            if let Some(map) = p.get_mut("properties").and_then(Value::as_object_mut) {
                map.retain(|k, _| allowed.contains(&k.as_str()));
            }
            p["additionalProperties"] = json!(false);
            json!({
                "if": {"properties": {"type": {"const": t}}},
                "then": {"properties": {"properties": p}}
            })
        })
        .collect();
    let traits: Vec<Value> = [
        ("scaler", to_value::<ScalerTrait>()),
        ("env", to_value::<EnvTrait>()),
        ("labels", to_value::<MetadataTrait>()),
        ("annotations", to_value::<MetadataTrait>()),
        ("resilience", to_value::<crate::resilience::ResilienceProperties>()),
        ("traffic", to_value::<crate::resilience::Traffic>()),
        ("gateway", to_value::<crate::spec::GatewayTrait>()),
        ("slo", to_value::<crate::slo::Slo>()),
    ]
    .into_iter()
    .map(|(t, s)| {
        json!({
            "if": {"properties": {"type": {"const": t}}},
            "then": {"properties": {"properties": s}}
        })
    })
    .collect();
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Yun Application (KubeVela core.oam.dev/v1beta1)",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": "Application"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            },
            "spec": {
                "type": "object",
                "required": ["components"],
                "additionalProperties": false,
                "properties": {
                    "components": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "type"],
                            "additionalProperties": false,
                            "properties": {
                                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                                "type": {"enum": spec::COMPONENT_TYPES},
                                "properties": {"type": "object"},
                                "dependsOn": {"type": "array", "items": {"type": "string"}},
                                "traits": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["type"],
                                        "additionalProperties": false,
                                        "properties": {
                                            "type": {"enum": spec::TRAIT_TYPES},
                                            "properties": {"type": "object"}
                                        },
                                        "allOf": traits
                                    }
                                }
                            },
                            "allOf": component_variants
                        }
                    }
                }
            }
        }
    });
    hoist_defs(&mut schema);
    schema
}

/// Moves every nested `$defs` to the root, where the `#/$defs/...` references point.
fn hoist_defs(schema: &mut Value) {
    fn take(v: &mut Value, into: &mut serde_json::Map<String, Value>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(defs)) = map.remove("$defs") {
                    for (k, mut d) in defs {
                        take(&mut d, into);
                        into.insert(k, d);
                    }
                }
                for child in map.values_mut() {
                    take(child, into);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| take(i, into)),
            _ => {}
        }
    }
    let mut defs = serde_json::Map::new();
    take(schema, &mut defs);
    schema["$defs"] = Value::Object(defs);
}

fn to_value<T: JsonSchema>() -> Value {
    serde_json::to_value(schema_for!(T)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves_at_the_root() {
        let schema = application_schema();
        let text = schema.to_string();
        let defs = schema["$defs"].as_object().unwrap();
        for piece in text.split("\"$ref\":\"#/$defs/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(defs.contains_key(name), "dangling $ref {name}");
        }
        assert_eq!(text.matches("\"$defs\"").count(), 1, "only the root has $defs");
    }

    #[test]
    fn schema_lists_exactly_the_allowed_properties_per_type() {
        let schema = application_schema();
        let variants = &schema["properties"]["spec"]["properties"]["components"]["items"]["allOf"];
        for (i, t) in spec::COMPONENT_TYPES.iter().enumerate() {
            let props = &variants[i]["then"]["properties"]["properties"]["properties"];
            let mut names: Vec<&str> = props.as_object().unwrap().keys().map(String::as_str).collect();
            let mut allowed = spec::allowed_properties(t);
            names.sort();
            allowed.sort();
            assert_eq!(names, allowed, "schema and validation disagree for {t}");
        }
    }
}
