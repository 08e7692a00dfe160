"""Validates Argo resources against the Argo Workflows JSON schema (v4.1.2).

Usage: argo_check.py SCHEMA FILE.yaml...  (a file may hold several YAML documents; only
`argoproj.io` ones are checked). Exit 1 with one line per problem.

The schema's IntOrString and Quantity definitions are string-only, so valid numbers (e.g.
`retryStrategy.limit: 4`) would fail: they are widened to string-or-number first. The schema
does not reject unknown fields; `unknown_fields` walks each document beside its schema and
names every key the schema does not define.
"""

import json
import sys

import jsonschema
import yaml


def widen(schema):
    defs = schema["definitions"]
    for name in list(defs):
        if name.endswith("intstr.IntOrString") or name.endswith("resource.Quantity"):
            defs[name] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    return schema


def resolve(schema, root):
    while "$ref" in schema:
        schema = root["definitions"][schema["$ref"].split("/")[-1]]
    return schema


def unknown_fields(value, schema, root, path, problems):
    schema = resolve(schema, root)
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                unknown_fields(item, props[key], root, f"{path}.{key}", problems)
            elif isinstance(extra, dict):
                unknown_fields(item, extra, root, f"{path}.{key}", problems)
            elif props is not None and extra is not True:
                problems.append(f"{path}.{key}: unknown field")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            unknown_fields(item, schema["items"], root, f"{path}[{i}]", problems)


def check(schema, doc, where):
    kind = doc.get("kind")
    name = f"io.argoproj.workflow.v1alpha1.{kind}"
    if name not in schema["definitions"]:
        return [f"{where}: unknown kind {kind!r}"]
    sub = dict(schema)
    sub.pop("oneOf", None)
    sub["$ref"] = f"#/definitions/{name}"
    validator = jsonschema.Draft202012Validator(sub)
    problems = [
        f"{where}: {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    # The document as a whole must also pass the schema's own top-level oneOf.
    if not problems:
        problems += [f"{where}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
    unknown_fields(doc, {"$ref": f"#/definitions/{name}"}, schema, where, problems)
    return problems


def main():
    schema = widen(json.load(open(sys.argv[1])))
    jsonschema.Draft202012Validator.check_schema(schema)
    problems, checked = [], 0
    for path in sys.argv[2:]:
        for i, doc in enumerate(yaml.safe_load_all(open(path))):
            if not doc or not str(doc.get("apiVersion", "")).startswith("argoproj.io/"):
                continue
            checked += 1
            problems += check(schema, doc, f"{path}#{i}")
    if checked == 0:
        problems.append("no Argo document found")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
