"""Renders the Helm chart (helm-python-sdk: Helm's own Go SDK, no helm binary) for several
value sets, lints it, and validates every manifest: Kubernetes objects with
kubernetes-validate in strict mode (unknown fields rejected), the WorkflowTemplate with the
Argo schema (tests/sched/argo_check.py). Bad values must fail the chart's values.schema.json.

Usage: chart.py CHART_DIR ARGO_SCHEMA. Prints one line per problem; exit 1 if any.
"""

import importlib.util
import json
import os
import sys

import helm_python as helm
import kubernetes_validate
import yaml

K8S_VERSION = "1.30.0"

spec = importlib.util.spec_from_file_location("argo_check", os.path.join(os.path.dirname(__file__), "argo_check.py"))
argo_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(argo_check)

GPU = {
    "pipeline": {
        "enabled": True,
        "gpu": {
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [{"key": "gpu", "operator": "Equal", "value": "l4", "effect": "NoSchedule"}],
        }
    },
    "serve": {
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": 1}},
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "autoscaling": {"enabled": False},
        "replicas": 3,
    },
}
S3 = {
    "image": {"repository": "registry.example/ml/taft", "tag": "v2", "pullSecrets": [{"name": "regcred"}]},
    "store": {"url": "s3://acme-ml/taft/exp1", "secretName": "minio-creds"},
    "pipeline": {
        "enabled": True,
        "parameters": {"conversations": "s3://acme-ml/data/calls.jsonl.gz"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/taft"}},
    },
    "global": {"imageRegistry": "registry.example"},
    "serve": {
        "modelUrl": "s3://acme-ml/taft/exp1/export",
        "settings": {"model": "int8", "max_batch_size": 64, "drain_delay_s": 15, "request_timeout_ms": 60000},
        "preStopSleepSeconds": 8,
    },
}
BAD = [
    ({"serve": {"replicas": "two"}}, "replicas"),
    ({"store": {"url": "/local/runs"}}, "url"),
    ({"store": {"url": "https://host/runs"}}, "url"),
    ({"pipeline": {"enabled": "yes"}}, "enabled"),
    ({"serve": {"settings": {"model": "fp16"}}}, "model"),
    ({"serve": {"portt": 80}}, "portt"),
    ({"image": {"repository": ""}}, "repository"),
]


def render(chart_dir, values):
    with helm.Chart.load(chart_dir) as chart:
        out = chart.render(values, name="ml", namespace="taft")
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs += [(path, d) for d in yaml.safe_load_all(text) if d]
    return docs


def check(chart_dir, schema, name, values, problems):
    docs = render(chart_dir, values)
    kinds = sorted(d["kind"] for _, d in docs)
    for path, doc in docs:
        where = f"{name}: {path}"
        if doc["apiVersion"].startswith("argoproj.io/"):
            problems += argo_check.check(schema, doc, where)
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{where}: {'.'.join(str(p) for p in e.path)}: {e.message}")
    lint = helm.lint(chart_dir, values, strict=True, namespace="taft", kube_version=f"v{K8S_VERSION}")
    problems += [f"{name}: lint: {m}" for m in lint["errors"]]
    problems += [f"{name}: lint: {m}" for m in lint["messages"] if m["severity"] >= 2]
    return {d["kind"]: d for _, d in docs}, kinds


def main():
    chart_dir, schema = sys.argv[1], argo_check.widen(json.load(open(sys.argv[2])))
    problems = []
    # By default the pipeline renders only where Argo's CRDs are served (not in this
    # cluster-less render): a serve-only install.
    objs, kinds = check(chart_dir, schema, "default", {}, problems)
    want = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    if kinds != want:
        problems.append(f"default: kinds {kinds}, want {want}")
    serve_only = objs
    objs, kinds = check(chart_dir, schema, "pipeline", {"pipeline": {"enabled": True}}, problems)
    want = sorted(want + ["Role", "RoleBinding", "ServiceAccount", "WorkflowTemplate"])
    if kinds != want:
        problems.append(f"pipeline: kinds {kinds}, want {want}")
    wt = objs["WorkflowTemplate"]
    sa = objs["ServiceAccount"]["metadata"]["name"]
    if wt["spec"]["serviceAccountName"] != sa or sa != "ml-taft-workflow":
        problems.append(f"pipeline: service account {wt['spec'].get('serviceAccountName')} vs {sa}")
    if objs["RoleBinding"]["subjects"][0]["name"] != sa or objs["RoleBinding"]["roleRef"]["name"] != objs["Role"]["metadata"]["name"]:
        problems.append("pipeline: the RoleBinding does not bind the Role to the service account")
    rule = objs["Role"]["rules"][0]
    if (rule["apiGroups"], rule["resources"], sorted(rule["verbs"])) != (["argoproj.io"], ["workflowtaskresults"], ["create", "patch"]):
        problems.append(f"pipeline: Role rules {objs['Role']['rules']}")
    if any("nodeSelector" in t for t in wt["spec"]["templates"]):
        problems.append("pipeline: a node selector by default (the GPU limit places GPU steps)")
    params = {p["name"]: p.get("value") for p in wt["spec"]["arguments"]["parameters"]}
    if params["image"] != "ghcr.io/taft-project/taft" or params["tag"] != "0.1.0" or params["secret"] != "taft-store":
        problems.append(f"default: parameters {params}")
    if len(wt["spec"]["templates"][0]["dag"]["tasks"]) != 26:
        problems.append("default: the pipeline is not the paper's 26 steps")
    pod = serve_only["Deployment"]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    restricted = pod["spec"]["securityContext"]
    if not restricted["runAsNonRoot"] or restricted["seccompProfile"]["type"] != "RuntimeDefault":
        problems.append(f"default: pod securityContext {restricted}")
    sc = c["securityContext"]
    if sc["allowPrivilegeEscalation"] or sc["capabilities"]["drop"] != ["ALL"]:
        problems.append(f"default: container securityContext {sc}")
    if c["livenessProbe"]["httpGet"]["path"] != "/health" or c["readinessProbe"]["httpGet"]["path"] != "/ready":
        problems.append("default: probes")
    if c["lifecycle"]["preStop"]["exec"]["command"] != ["sleep", "5"]:
        problems.append(f"default: preStop {c.get('lifecycle')}")
    if pod["spec"]["terminationGracePeriodSeconds"] != 5 + 5 + 30 + 10:
        problems.append(f"default: grace period {pod['spec']['terminationGracePeriodSeconds']}")
    if pod["metadata"]["annotations"].get("prometheus.io/path") != "/metrics":
        problems.append("default: scrape annotations")
    if "replicas" in serve_only["Deployment"]["spec"]:
        problems.append("default: replicas set although the autoscaler owns them")
    if serve_only["Service"]["spec"]["selector"] != serve_only["Deployment"]["spec"]["selector"]["matchLabels"]:
        problems.append("default: the Service does not select the serving pods")

    objs, kinds = check(chart_dir, schema, "gpu", GPU, problems)
    gpu_templates = [t for t in objs["WorkflowTemplate"]["spec"]["templates"] if t["name"].endswith("-gpu")]
    # Helm merges maps with the defaults (a key set to null removes one).
    want = GPU["pipeline"]["gpu"]["nodeSelector"].items()
    if len(gpu_templates) != 3 or any(not want <= t["nodeSelector"].items() for t in gpu_templates):
        problems.append(f"gpu: pipeline node selectors {[t.get('nodeSelector') for t in gpu_templates]}")
    if any(t["tolerations"] != GPU["pipeline"]["gpu"]["tolerations"] for t in gpu_templates):
        problems.append("gpu: pipeline tolerations")
    dep = objs["Deployment"]["spec"]
    if dep.get("replicas") != 3 or "HorizontalPodAutoscaler" in kinds:
        problems.append(f"gpu: replicas {dep.get('replicas')}, kinds {kinds}")
    if dep["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") != 1:
        problems.append("gpu: the server's GPU limit")
    if dep["template"]["spec"].get("nodeSelector") != GPU["serve"]["nodeSelector"]:
        problems.append("gpu: the server's node selector")

    objs, kinds = check(chart_dir, schema, "s3", S3, problems)
    params = {p["name"]: p.get("value") for p in objs["WorkflowTemplate"]["spec"]["arguments"]["parameters"]}
    if (params["store"], params["secret"], params["image"], params["tag"]) != (
        "s3://acme-ml/taft/exp1",
        "minio-creds",
        "registry.example/ml/taft",
        "v2",
    ) or params["conversations"] != "s3://acme-ml/data/calls.jsonl.gz":
        problems.append(f"s3: parameters {params}")
    c = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    if "s3://acme-ml/taft/exp1/export" not in c["args"] or "model=int8" not in c["args"]:
        problems.append(f"s3: server args {c['args']}")
    if c["envFrom"][0]["secretRef"]["name"] != "minio-creds":
        problems.append("s3: the server's Secret")
    pull = [{"name": "regcred"}]
    if objs["WorkflowTemplate"]["spec"].get("imagePullSecrets") != pull or objs["Deployment"]["spec"]["template"]["spec"].get("imagePullSecrets") != pull:
        problems.append("s3: image pull secrets")
    if objs["ServiceAccount"]["metadata"].get("annotations") != S3["pipeline"]["serviceAccount"]["annotations"]:
        problems.append(f"s3: service account annotations {objs['ServiceAccount']['metadata'].get('annotations')}")
    grace = objs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if c["lifecycle"]["preStop"]["exec"]["command"] != ["sleep", "8"] or grace != 8 + 15 + 60 + 10:
        problems.append(f"s3: preStop {c['lifecycle']}, grace period {grace}")

    for values, field in BAD:
        try:
            render(chart_dir, values)
            problems.append(f"bad values {values} rendered")
        except Exception as e:  # the schema's error names the field
            if field not in str(e):
                problems.append(f"bad values {values}: {e}")
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
