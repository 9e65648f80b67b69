#!/usr/bin/env python3
"""`make check-deploy`: deploy/istio/ and the filter's OCI image checked against what reads them.

    target/check-venv/bin/python scripts/check-istio.py

* Every object of deploy/istio/*.yaml (duplicate YAML keys refused) against its real schema:
  Istio's CRDs (WasmPlugin, DestinationRule, ServiceEntry, Gateway, VirtualService,
  AuthorizationPolicy: @kubernetes-models/istio 3.0.1, generated from Istio 1.29.2's
  crd-all.gen.yaml) and the Kubernetes API (Namespace, ConfigMap, Deployment, Service, RBAC:
  kubernetes-models 5.1.0), both from npm, installed by `npm ci` from
  deploy/istio/check/package-lock.json into target/check-istio. Types, enums, patterns,
  required fields and unknown fields anywhere (deploy/istio/check/validate.mjs); the CRDs' CEL
  rules that apply to these objects are checked here.
* What ties the objects together: the filter's gRPC and JWKS clusters
  (`outbound|PORT||HOST`) against the Services, ServiceEntries and DestinationRules that make
  them (HTTP/2 for gRPC, TLS origination for https), selectors against pod labels, ports, the
  rate-limit service's flags (against the real binary's --help), its config mount and Redis
  URL, the AuthorizationPolicies against the gateway's service account, the image against
  deploy/docker/Dockerfile, and the stats tags against the filter's metric labels
  (filter/src/metrics.rs).
* The WasmPlugin's pluginConfig with the filter's own parser (`target/release/portcullis
  check`); the ConfigMap's limits with the real portcullis-ratelimit, asked over gRPC for every
  descriptor the filter's routes send.
* `scripts/make-oci.py` (what `make oci` runs): twice, same digest; the layout read as Istio's
  fetcher reads it (pkg/wasm/imagefetcher.go: last layer tar+gzip holding plugin.wasm, equal to
  the built module), every digest and size, and two independent readers from Debian:
  `oci-image-tool validate` (the image-spec's JSON schemas and digests) and skopeo (`inspect`,
  and `copy --preserve-digests` keeps the manifest digest, i.e. WasmPlugin's sha256).

Each validator also runs on a deliberately broken input (a typo'd field, a wrong type, a bad
enum, a bad duration, a bad filter setting, an unknown descriptor, a corrupted blob) and must
refuse it, so that none of them can pass vacuously. Without the built filter, CLI or rate-limit
binary (make build) their checks are skipped, except under CI, where they fail.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
ISTIO = REPO / "deploy" / "istio"
TOOLS_SRC = ISTIO / "check"
WORK = REPO / "target" / "check-istio"
WASM = REPO / "target" / "wasm32-wasip1" / "release" / "portcullis.wasm"
CLI = REPO / "target" / "release" / "portcullis"
MAKE_OCI = REPO / "scripts" / "make-oci.py"
IN_CI = bool(os.environ.get("CI"))

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.skipped: list[str] = []

    def ok(self, msg: str) -> None:
        self.passed += 1
        print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.failed.append(msg)
        print(f"  FAIL  {msg}")

    def skip(self, msg: str) -> None:
        self.skipped.append(msg)
        print(f"  skip  {msg}")

    def note(self, msg: str) -> None:
        print(f"  note  {msg}")

    def check(self, cond: bool, ok_msg: str, fail_msg: str) -> bool:
        (self.ok if cond else self.fail)(ok_msg if cond else fail_msg)
        return cond

    def missing(self, what: str) -> None:
        """A build artefact is absent: a skip locally, a failure in CI (make test builds it)."""
        (self.fail if IN_CI else self.skip)(f"{what} (make build makes it)")


R = Report()


def section(title: str) -> None:
    print(f"\n== {title}")


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(REPO))
    except ValueError:
        return str(p)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


# ------------------------------------------------------------------------------------------------
# Tools


def apt_install(command: str, package: str) -> str | None:
    """The command's path, installing its Debian package first where it is missing."""
    found = shutil.which(command)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        R.fail(f"{command}: not installed, and no apt-get as root to install {package}")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    res = run(install, env=env, timeout=600)
    if res.returncode != 0:  # a fresh machine has no package lists yet
        run(["apt-get", "update", "-qq"], env=env, timeout=600)
        res = run(install, env=env, timeout=600)
    found = shutil.which(command)
    if not found:
        R.fail(f"apt-get install {package} failed: {(res.stderr or res.stdout).strip()[-300:]}")
    return found


def node_tools() -> Path | None:
    """target/check-istio with deploy/istio/check's locked packages installed (npm ci)."""
    if not (shutil.which("node") and shutil.which("npm")):
        R.fail("node and npm are needed for the schema check (deploy/istio/check/package.json)")
        return None
    WORK.mkdir(parents=True, exist_ok=True)
    stamp = hashlib.sha256(b"".join((TOOLS_SRC / f).read_bytes()
                                    for f in ("package.json", "package-lock.json"))).hexdigest()
    stamp_file = WORK / ".npm-ci-stamp"
    if not (WORK / "node_modules").is_dir() or not stamp_file.exists() \
            or stamp_file.read_text() != stamp:
        for f in ("package.json", "package-lock.json"):
            shutil.copyfile(TOOLS_SRC / f, WORK / f)
        res = run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error", "--ignore-scripts"],
                  cwd=WORK, timeout=600)
        if res.returncode != 0:
            R.fail(f"npm ci in {rel(WORK)} failed: {res.stderr.strip()[-400:]}")
            return None
        stamp_file.write_text(stamp)
    shutil.copyfile(TOOLS_SRC / "validate.mjs", WORK / "validate.mjs")
    return WORK


# ------------------------------------------------------------------------------------------------
# Loading


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping (YAML 1.2 forbids it; the
    API server's decoder refuses it too)."""


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_manifests() -> list[tuple[str, dict[str, Any]]]:
    section("deploy/istio/*.yaml: YAML")
    docs: list[tuple[str, dict[str, Any]]] = []
    files = sorted(ISTIO.glob("*.yaml")) + sorted(ISTIO.glob("*.yml"))
    R.check(bool(files), f"{len(files)} files", "no manifests in deploy/istio/")
    for path in files:
        try:
            loaded = list(yaml.load_all(path.read_text(), Loader=StrictLoader))
        except yaml.YAMLError as e:
            R.fail(f"{rel(path)}: {e}")
            continue
        n = 0
        for i, doc in enumerate(loaded):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                R.fail(f"{rel(path)} document {i}: not a mapping")
                continue
            meta = doc.get("metadata") or {}
            docs.append((f"{path.name}: {doc.get('kind')} {meta.get('namespace', '-')}/"
                         f"{meta.get('name')}", doc))
            n += 1
        R.ok(f"{rel(path)}: {n} objects, no duplicate keys")
    bad = "a: 1\nb: 2\na: 3\n"
    try:
        yaml.load(bad, Loader=StrictLoader)
        R.fail("negative control: a duplicate key was accepted")
    except yaml.YAMLError:
        R.ok("negative control: a duplicate key is refused")
    return docs


def find(docs: list[tuple[str, dict[str, Any]]], kind: str, name: str | None = None,
         namespace: str | None = None) -> list[dict[str, Any]]:
    out = []
    for _, d in docs:
        meta = d.get("metadata") or {}
        if d.get("kind") == kind and (name is None or meta.get("name") == name) \
                and (namespace is None or meta.get("namespace") == namespace):
            out.append(d)
    return out


def name_of(d: dict[str, Any]) -> str:
    meta = d.get("metadata") or {}
    return f"{d.get('kind')} {meta.get('namespace', '-')}/{meta.get('name')}"


# ------------------------------------------------------------------------------------------------
# Schemas


def validate_objects(tools: Path, items: list[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=tools, delete=False) as f:
        json.dump([{"id": i, "doc": d} for i, d in items], f)
        path = f.name
    try:
        res = run(["node", "validate.mjs", path], cwd=tools, timeout=300)
    finally:
        os.unlink(path)
    if res.returncode != 0:
        R.fail(f"validate.mjs failed: {res.stderr.strip()[-600:]}")
        return {}
    return json.loads(res.stdout)


def broken_copies(docs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any], str]]:
    """Deliberately broken objects, each with the error it must produce."""
    out: list[tuple[str, dict[str, Any], str]] = []
    done: set[str] = set()
    for _, d in docs:
        kind = str(d.get("kind"))
        if kind in done:
            continue
        n = len(out)
        if kind == "WasmPlugin":
            b = copy.deepcopy(d)
            b["spec"]["failStrategi"] = b["spec"].pop("failStrategy", "FAIL_CLOSE")
            out.append(("a typo'd WasmPlugin field (failStrategi)", b, "failStrategi"))
            b = copy.deepcopy(d)
            b["spec"]["phase"] = "AUTHENTICATION"
            out.append(("a WasmPlugin phase outside the enum", b, "spec.phase"))
            b = copy.deepcopy(d)
            b["spec"]["sha256"] = "sha256:" + "0" * 64
            out.append(("a WasmPlugin sha256 that is not 64 hex digits", b, "spec.sha256"))
        elif kind == "DestinationRule" and "connectionPool" in (d["spec"].get("trafficPolicy") or {}):
            b = copy.deepcopy(d)
            b["spec"]["trafficPolicy"]["connectionPool"]["http"] = {"http2MaxRequests": "many"}
            out.append(("a DestinationRule count given as a string", b,
                        "spec.trafficPolicy.connectionPool.http.http2MaxRequests"))
        elif kind == "ServiceEntry":
            b = copy.deepcopy(d)
            b["spec"]["ports"][0]["protocoll"] = "HTTP"
            out.append(("a typo'd ServiceEntry port field (protocoll)", b, "protocoll"))
        elif kind == "Deployment":
            b = copy.deepcopy(d)
            c = b["spec"]["template"]["spec"]["containers"][0]
            c["ports"] = [{"containerPort": "8081"}]
            c.setdefault("securityContext", {})["readOnlyRootFilesystm"] = True
            out.append(("a Deployment with a string port and a typo'd securityContext field", b,
                        "readOnlyRootFilesystm"))
        elif kind == "Service":
            b = copy.deepcopy(d)
            b["spec"]["ports"][0]["port"] = "8081"
            out.append(("a Service port given as a string", b, "spec.ports"))
        if len(out) > n:
            done.add(kind)
    out.append(("an unknown kind", {"apiVersion": "networking.istio.io/v1", "kind": "Gatewey",
                                    "metadata": {"name": "x"}}, "no schema"))
    return out


def check_schemas(tools: Path | None, docs: list[tuple[str, dict[str, Any]]]) -> None:
    section("deploy/istio: Istio 1.29 CRD schemas and Kubernetes API schemas (unknown fields refused)")
    if tools is None:
        R.fail("schema check not run (tools missing)")
        return
    controls = broken_copies(docs)
    items = [(w, d) for w, d in docs] + [(f"control: {what}", d) for what, d, _ in controls]
    results = validate_objects(tools, items)
    if not results:
        return
    for where, _ in docs:
        errs = results.get(where)
        if errs is None:
            R.fail(f"{where}: not validated")
        elif errs:
            for e in errs:
                R.fail(f"{where}: {e}")
        else:
            R.ok(f"{where}")
    for what, _, expected in controls:
        errs = results.get(f"control: {what}") or []
        hits = [e for e in errs if expected in e]
        R.check(bool(hits), f"negative control: {what} is refused ({hits[0] if hits else ''})",
                f"negative control: {what} was accepted, or refused for another reason ({errs})")


# ------------------------------------------------------------------------------------------------
# The CRDs' CEL rules (x-kubernetes-validations) that apply to these objects; ajv ignores them.

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DR_DURATIONS = {"connectTimeout", "idleTimeout", "maxConnectionDuration", "interval", "time",
                "baseEjectionTime", "duration", "warmupDurationSecs"}


def go_duration(text: Any) -> float | None:
    if not isinstance(text, str) or not _DURATION.match(text):
        return None
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


def cel_errors(d: dict[str, Any]) -> list[str]:
    errs: list[str] = []
    kind, spec = d.get("kind"), d.get("spec") or {}

    def labels_ok(sel: Any, where: str) -> None:
        for k, v in ((sel or {}).get("matchLabels") or {}).items():
            if not k or "*" in k or "*" in str(v):
                errs.append(f"{where}.matchLabels: empty or wildcard label {k!r}: {v!r}")

    if kind in ("WasmPlugin", "AuthorizationPolicy"):
        if sum(k in spec for k in ("selector", "targetRef", "targetRefs")) > 1:
            errs.append("spec: only one of targetRefs or selector can be set")
        labels_ok(spec.get("selector"), "spec.selector")
    if kind == "WasmPlugin":
        url = str(spec.get("url", ""))
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("", "http", "https", "oci", "file"):
            errs.append(f"spec.url: url must have schema one of [http, https, file, oci]: {url}")
    if kind == "DestinationRule":
        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in DR_DURATIONS and isinstance(v, str):
                        secs = go_duration(v)
                        if secs is None or secs < 1e-3:
                            errs.append(f"{path}.{k}: must be a valid duration greater than 1ms: {v!r}")
                    walk(v, f"{path}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{path}[{i}]")
        walk(spec.get("trafficPolicy"), "spec.trafficPolicy")
        for i, s in enumerate(spec.get("subsets") or []):
            walk(s.get("trafficPolicy"), f"spec.subsets[{i}].trafficPolicy")
        labels_ok(spec.get("workloadSelector"), "spec.workloadSelector")
    if kind == "ServiceEntry":
        if "*" in (spec.get("hosts") or []):
            errs.append("spec.hosts: hostname cannot be wildcard")
        numbers = [p.get("number") for p in spec.get("ports") or []]
        if len(numbers) != len(set(numbers)):
            errs.append("spec.ports: port number cannot be duplicated")
        if spec.get("resolution", "NONE") == "NONE" and spec.get("endpoints"):
            errs.append("spec: NONE mode cannot set endpoints")
        if "workloadSelector" in spec and "endpoints" in spec:
            errs.append("spec: only one of WorkloadSelector or Endpoints can be set")
    return errs


def check_cel(docs: list[tuple[str, dict[str, Any]]]) -> None:
    section("deploy/istio: the CRDs' CEL validation rules")
    n = 0
    for where, d in docs:
        errs = cel_errors(d)
        for e in errs:
            R.fail(f"{where}: {e}")
        n += not errs
    R.ok(f"{n} objects pass the rules of WasmPlugin, DestinationRule, ServiceEntry, "
         "AuthorizationPolicy (selectors, durations >= 1ms, ports, url scheme)")
    dr = next((d for _, d in docs if d.get("kind") == "DestinationRule"), None)
    if dr:
        bad = copy.deepcopy(dr)
        bad["spec"].setdefault("trafficPolicy", {}).setdefault("connectionPool", {}) \
            .setdefault("tcp", {})["connectTimeout"] = "500us"
        R.check(bool(cel_errors(bad)), "negative control: a connectTimeout of 500us is refused",
                "negative control: a connectTimeout of 500us was accepted")
    wp = next((d for _, d in docs if d.get("kind") == "WasmPlugin"), None)
    if wp:
        bad = copy.deepcopy(wp)
        bad["spec"]["targetRefs"] = [{"kind": "Gateway", "name": "x"}]
        R.check(bool(cel_errors(bad)), "negative control: selector and targetRefs together are refused",
                "negative control: selector and targetRefs together were accepted")


# ------------------------------------------------------------------------------------------------
# Cross references


def pods(docs: list[tuple[str, dict[str, Any]]], namespace: str,
         selector: dict[str, str]) -> list[dict[str, Any]]:
    """Deployments in `namespace` whose pod template carries every label of `selector`."""
    out = []
    for d in find(docs, "Deployment", namespace=namespace):
        labels = ((d["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        if selector and all(labels.get(k) == v for k, v in selector.items()):
            out.append(d)
    return out


def service_for(docs: list[tuple[str, dict[str, Any]]], host: str) -> dict[str, Any] | None:
    m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)(?:\.svc(?:\.cluster\.local)?)?", host)
    if not m:
        return None
    found = find(docs, "Service", m.group(1), m.group(2))
    return found[0] if found else None


def container_port(dep: dict[str, Any], target: Any) -> dict[str, Any] | None:
    for c in dep["spec"]["template"]["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if target in (p.get("name"), p.get("containerPort")):
                return p
    return None


def workspace_version() -> str:
    section_text = (REPO / "Cargo.toml").read_text().split("[workspace.package]", 1)[1]
    m = re.search(r'^version\s*=\s*"([^"]+)"', section_text, re.M)
    return m.group(1) if m else "?"


def metric_labels() -> list[str]:
    text = (REPO / "filter/src/metrics.rs").read_text()
    m = re.search(r"pub const LABELS: \[&str; \d+\] = \[(.*?)\];", text, re.S)
    return re.findall(r'"([a-z_]+)"', m.group(1)) if m else []


def parse_cluster(name: str) -> tuple[str, int, str, str] | None:
    """Istio's cluster names: `outbound|<port>|<subset>|<host>`."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit() or not parts[3]:
        return None
    return parts[0], int(parts[1]), parts[2], parts[3]


def check_services(docs: list[tuple[str, dict[str, Any]]]) -> None:
    section("deploy/istio: namespaces, selectors, ports, pod security")
    namespaces = {(d.get("metadata") or {}).get("name") for d in find(docs, "Namespace")}
    ns_file = sorted(ISTIO.glob("*.yaml"))[0].name if list(ISTIO.glob("*.yaml")) else ""
    only_namespaces = all(w.startswith(ns_file) == (d.get("kind") == "Namespace")
                          for w, d in docs)
    R.check(only_namespaces, f"namespaces come first ({ns_file}), so `kubectl apply -f deploy/istio/` "
            "creates them before their objects", "Namespace objects must be alone in the first file")
    for where, d in docs:
        if d.get("kind") == "Namespace":
            continue
        ns = (d.get("metadata") or {}).get("namespace")
        if not R.check(ns in namespaces, f"{name_of(d)}: namespace {ns} is created here",
                       f"{where}: namespace {ns!r} is not one of {sorted(namespaces)}"):
            continue
    for svc in find(docs, "Service"):
        ns, sel = svc["metadata"]["namespace"], svc["spec"].get("selector") or {}
        targets = pods(docs, ns, sel)
        if not R.check(len(targets) == 1, f"{name_of(svc)} selects Deployment "
                       f"{targets[0]['metadata']['name'] if targets else '-'}",
                       f"{name_of(svc)}: selector {sel} matches {len(targets)} Deployments"):
            continue
        injected = any(c.get("image") == "auto" for c in targets[0]["spec"]["template"]["spec"]["containers"])
        if injected:
            # An injected gateway declares no container ports: Envoy listens on the ports of the
            # Gateway objects that select it.
            labels = (targets[0]["spec"]["template"].get("metadata") or {}).get("labels") or {}
            listening = {s["port"]["number"] for g in find(docs, "Gateway", namespace=ns)
                         if all(labels.get(k) == v for k, v in (g["spec"].get("selector") or {}).items())
                         for s in g["spec"].get("servers") or []}
            for p in svc["spec"].get("ports") or []:
                R.check(p.get("targetPort", p.get("port")) in listening,
                        f"{name_of(svc)} port {p.get('name')} -> gateway listener {p.get('targetPort')}",
                        f"{name_of(svc)} port {p.get('name')}: targetPort {p.get('targetPort')} is "
                        f"no port of the Gateways that select it ({sorted(listening)})")
            continue
        for p in svc["spec"].get("ports") or []:
            cp = container_port(targets[0], p.get("targetPort", p.get("port")))
            R.check(cp is not None, f"{name_of(svc)} port {p.get('name')} -> container port "
                    f"{cp and cp.get('containerPort')}",
                    f"{name_of(svc)} port {p.get('name')}: targetPort {p.get('targetPort')} "
                    "is no container port")
    for dep in find(docs, "Deployment"):
        spec = dep["spec"]
        tmpl_labels = (spec["template"].get("metadata") or {}).get("labels") or {}
        R.check(all(tmpl_labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()),
                f"{name_of(dep)}: selector matches its pod labels",
                f"{name_of(dep)}: selector {spec['selector']['matchLabels']} does not match "
                f"pod labels {tmpl_labels}")
        pod = spec["template"]["spec"]
        for c in pod.get("containers") or []:
            image = c.get("image", "")
            if image == "auto":  # Istio's gateway injection fills it in
                ann = (spec["template"].get("metadata") or {}).get("annotations") or {}
                R.check(ann.get("inject.istio.io/templates") == "gateway"
                        and tmpl_labels.get("sidecar.istio.io/inject") == "true",
                        f"{name_of(dep)}: image auto with the gateway injection template",
                        f"{name_of(dep)}: image auto needs inject.istio.io/templates: gateway "
                        "and the sidecar.istio.io/inject label")
                continue
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            R.check(bool(tag) and tag != "latest", f"{name_of(dep)}: image {image} pinned",
                    f"{name_of(dep)}: image {image!r} is not pinned to a version")
            sc, psc = c.get("securityContext") or {}, pod.get("securityContext") or {}
            problems = [k for k, ok in (
                ("runAsNonRoot", sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True),
                ("runAsUser != 0", sc.get("runAsUser", psc.get("runAsUser")) not in (None, 0)),
                ("readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True),
                ("allowPrivilegeEscalation: false", sc.get("allowPrivilegeEscalation") is False),
                ("capabilities drop ALL", "ALL" in ((sc.get("capabilities") or {}).get("drop") or [])),
                ("resources requests and limits", bool((c.get("resources") or {}).get("requests"))
                 and bool((c.get("resources") or {}).get("limits"))),
                ("liveness and readiness probes", "livenessProbe" in c and "readinessProbe" in c),
            ) if not ok]
            R.check(not problems, f"{name_of(dep)} {c['name']}: non-root, read-only root, no "
                    "privilege escalation, no capabilities, resources, probes",
                    f"{name_of(dep)} {c['name']}: missing {', '.join(problems)}")


def check_ratelimit_deployment(docs: list[tuple[str, dict[str, Any]]],
                               version: str) -> dict[str, Any] | None:
    section("deploy/istio: the rate-limit service's Deployment")
    deps = [d for d in find(docs, "Deployment") if any(
        "portcullis-ratelimit" in c.get("image", "") for c in d["spec"]["template"]["spec"]["containers"])]
    if not R.check(len(deps) == 1, f"{name_of(deps[0]) if deps else ''} runs portcullis-ratelimit",
                   f"{len(deps)} Deployments run portcullis-ratelimit (expected 1)"):
        return None
    dep = deps[0]
    ns = dep["metadata"]["namespace"]
    pod = dep["spec"]["template"]["spec"]
    c = next(c for c in pod["containers"] if "portcullis-ratelimit" in c["image"])
    R.check(c["image"] == f"ghcr.io/portcullis/portcullis-ratelimit:{version}",
            f"image {c['image']} (the workspace version)",
            f"image {c['image']!r}: expected ghcr.io/portcullis/portcullis-ratelimit:{version}")
    # The image: deploy/docker/Dockerfile's `ratelimit` target, its user.
    dockerfile = REPO / "deploy/docker/Dockerfile"
    if dockerfile.exists():
        text = dockerfile.read_text()
        R.check(bool(re.search(r"^FROM\s+\S+\s+AS\s+ratelimit\s*$", text, re.M | re.I)),
                "deploy/docker/Dockerfile has the `ratelimit` target the image is built from",
                "deploy/docker/Dockerfile has no `ratelimit` target")
        users = re.findall(r"^USER\s+(\d+)", text, re.M)
        uid = (c.get("securityContext") or {}).get("runAsUser",
                                                    (pod.get("securityContext") or {}).get("runAsUser"))
        R.check(str(uid) in users, f"runAsUser {uid} is the image's USER",
                f"runAsUser {uid} is not the Dockerfile's USER {users}")
    else:
        R.fail("deploy/docker/Dockerfile is missing (the rate-limit image is built from it)")
    args = [str(a) for a in c.get("args") or []]
    flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    binary = ratelimit_binary()
    if binary:
        helptext = run([str(binary), "--help"]).stdout
        known = set(re.findall(r"(--[a-z][a-z0-9-]*)", helptext))
        R.check(flags <= known, f"flags {' '.join(sorted(flags))} are the binary's ({rel(binary)} --help)",
                f"unknown flags {sorted(flags - known)} ({rel(binary)} --help knows {sorted(known)})")
    else:
        R.missing("no target/release or target/debug portcullis-ratelimit: its flags are unchecked")

    def arg(flag: str) -> str | None:
        for i, a in enumerate(args):
            if a == flag and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
        return None

    config = arg("--config")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    vol = volumes.get(mounts.get(config or "", ""), {})
    cm_name = (vol.get("configMap") or {}).get("name")
    cms = find(docs, "ConfigMap", cm_name, ns) if cm_name else []
    R.check(bool(cms), f"--config {config} is ConfigMap {ns}/{cm_name}, mounted there",
            f"--config {config!r} is not a mounted ConfigMap of this folder")
    redis = arg("--redis") or ""
    m = re.fullmatch(r"redis://([a-z0-9.-]+):(\d+)(?:/\d+)?", redis)
    svc = service_for(docs, m.group(1)) if m else None
    R.check(bool(svc) and any(p.get("port") == int(m.group(2)) for p in svc["spec"]["ports"]),
            f"--redis {redis} is {svc and name_of(svc)}",
            f"--redis {redis!r} names no Service/port of this folder")
    for flag, name in (("--grpc-listen", "grpc"), ("--http-listen", "http-metrics")):
        listen = arg(flag) or {"--grpc-listen": "0.0.0.0:8081", "--http-listen": "0.0.0.0:8080"}[flag]
        port = container_port(dep, name)
        R.check(port is not None and listen.endswith(f":{port['containerPort']}"),
                f"{flag} {listen} is container port {name}",
                f"{flag} {listen} does not match container port {name} ({port})")
    for probe in ("readinessProbe", "livenessProbe"):
        get = (c.get(probe) or {}).get("httpGet") or {}
        R.check(get.get("path") == "/healthz" and container_port(dep, get.get("port")) is not None
                and container_port(dep, get.get("port"))["containerPort"] == 8080,
                f"{probe}: GET /healthz on :8080", f"{probe}: {get} is not /healthz on :8080")
    return cms[0] if cms else None


def check_plugin(docs: list[tuple[str, dict[str, Any]]], version: str,
                 rl_configmap: dict[str, Any] | None) -> dict[str, Any] | None:
    section("deploy/istio: the WasmPlugin and what its configuration refers to")
    plugins = find(docs, "WasmPlugin")
    if not R.check(len(plugins) == 1, f"{name_of(plugins[0]) if plugins else ''}",
                   f"{len(plugins)} WasmPlugins (expected 1)"):
        return None
    wp = plugins[0]
    spec, ns = wp["spec"], wp["metadata"]["namespace"]
    R.check(re.fullmatch(rf"oci://[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9._-]+)+/portcullis:{re.escape(version)}",
                         spec.get("url", "")) is not None,
            f"url {spec.get('url')} (an OCI image of the workspace version {version})",
            f"url {spec.get('url')!r}: expected oci://<registry>/…/portcullis:{version}")
    R.check(re.fullmatch(r"[0-9a-f]{64}", str(spec.get("sha256", ""))) is not None,
            "sha256 is 64 hex digits (the manifest digest make oci prints)",
            f"sha256 {spec.get('sha256')!r} is not 64 lower-case hex digits")
    R.check(spec.get("phase") == "AUTHN" and spec.get("failStrategy") == "FAIL_CLOSE"
            and spec.get("type", "HTTP") == "HTTP",
            "phase AUTHN, failStrategy FAIL_CLOSE, an HTTP filter",
            f"phase {spec.get('phase')}, failStrategy {spec.get('failStrategy')}, type "
            f"{spec.get('type')}: expected AUTHN, FAIL_CLOSE, HTTP")
    R.check(spec.get("imagePullPolicy") in ("IfNotPresent", "Always"),
            f"imagePullPolicy {spec.get('imagePullPolicy')}", "imagePullPolicy is not set")
    # The workload: a gateway of this folder, in the WasmPlugin's namespace.
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    gws = pods(docs, ns, sel)
    if not R.check(len(gws) == 1, f"selector {sel} selects {name_of(gws[0]) if gws else ''}",
                   f"selector {sel} selects {len(gws)} Deployments in {ns}"):
        return None
    gw = gws[0]
    tmpl = gw["spec"]["template"]
    sa = tmpl["spec"].get("serviceAccountName", "default")
    gw_principal = f"cluster.local/ns/{ns}/sa/{sa}"
    gateways = [g for g in find(docs, "Gateway", namespace=ns)
                if all(((tmpl.get("metadata") or {}).get("labels") or {}).get(k) == v
                       for k, v in (g["spec"].get("selector") or {}).items())]
    R.check(bool(gateways), f"Gateway {gateways and gateways[0]['metadata']['name']} binds to that workload",
            "no Gateway object selects the WasmPlugin's workload")
    for vs in find(docs, "VirtualService"):
        refs = set(vs["spec"].get("gateways") or [])
        known = {f"{g['metadata']['namespace']}/{g['metadata']['name']}" for g in find(docs, "Gateway")}
        R.check(bool(refs) and refs <= known, f"{name_of(vs)} is bound to {sorted(refs)}",
                f"{name_of(vs)}: gateways {sorted(refs)} are not Gateways of this folder {sorted(known)}")
    # Metrics: stats inclusion and one tag per label of the filter (filter/src/metrics.rs).
    ann = (tmpl.get("metadata") or {}).get("annotations") or {}
    try:
        proxy_cfg = yaml.safe_load(ann.get("proxy.istio.io/config", "")) or {}
    except yaml.YAMLError as e:
        proxy_cfg = {}
        R.fail(f"proxy.istio.io/config of {name_of(gw)}: {e}")
    levels = dict(part.split(":", 1) for part in
                  ann.get("sidecar.istio.io/componentLogLevel", "").split(",") if ":" in part)
    R.check(levels.get("wasm") in ("info", "debug", "trace"),
            f"componentLogLevel wasm:{levels.get('wasm')}: the audit records (info) are logged",
            "the gateway logs at Istio's default warning level, which drops the filter's audit "
            "records: set sidecar.istio.io/componentLogLevel with wasm:info")
    labels = metric_labels()
    tags = proxy_cfg.get("extraStatTags") or []
    R.check(bool(labels) and set(labels) <= set(tags),
            f"extraStatTags cover the filter's labels {labels}",
            f"extraStatTags {tags} miss the filter's labels {sorted(set(labels) - set(tags))}")
    prefixes = ((proxy_cfg.get("proxyStatsMatcher") or {}).get("inclusionPrefixes") or []) + ["wasm"]
    R.check(any("wasmcustom.portcullis_requests_total".startswith(p) for p in prefixes),
            "stats inclusion keeps wasmcustom.* (inclusionPrefixes, and Istio's built-in `wasm`)",
            f"stats inclusion {prefixes} drops wasmcustom.*")
    R.check(set(proxy_cfg) <= {"proxyStatsMatcher", "extraStatTags", "gatewayTopology",
                               "concurrency", "holdApplicationUntilProxyStarts"},
            "proxy.istio.io/config has only known ProxyConfig fields",
            f"proxy.istio.io/config: unexpected fields {sorted(proxy_cfg)}")

    cfg = spec.get("pluginConfig") or {}
    # The rate-limit service's cluster.
    rls = cfg.get("rate_limit_service") or {}
    parsed = parse_cluster(str(rls.get("cluster", "")))
    if R.check(parsed is not None and parsed[2] == "",
               f"rate_limit_service.cluster {rls.get('cluster')} is an Istio outbound cluster",
               f"rate_limit_service.cluster {rls.get('cluster')!r} is not outbound|PORT||HOST"):
        _, port, _, host = parsed
        svc = service_for(docs, host)
        R.check(host.endswith(".svc.cluster.local") and svc is not None,
                f"its host is {svc and name_of(svc)}",
                f"{host} is not <service>.<namespace>.svc.cluster.local of a Service here")
        sp = next((p for p in (svc or {}).get("spec", {}).get("ports", []) if p.get("port") == port), None)
        # Istio's protocol selection: appProtocol when set, else the port name's prefix.
        h2 = ("grpc", "grpc-web", "http2", "kubernetes.io/h2c")
        grpc = sp is not None and (sp["appProtocol"] in h2 if sp.get("appProtocol") else
                                   re.match(r"^(grpc|grpc-web|http2)(-|$)", sp.get("name", "")) is not None)
        R.check(grpc, f"port {port} declares gRPC (appProtocol {sp and sp.get('appProtocol')}): "
                "Istio builds the cluster for HTTP/2",
                f"port {port} of {host} does not declare grpc/http2 (appProtocol or name): the "
                "cluster would not speak HTTP/2 and every rate-limit call would fail")
        drs = [d for d in find(docs, "DestinationRule") if d["spec"].get("host") == host]
        if R.check(len(drs) == 1, f"{drs and name_of(drs[0])} for {host}",
                   f"{len(drs)} DestinationRules for {host} (expected 1)"):
            tls = ((drs[0]["spec"].get("trafficPolicy") or {}).get("tls") or {}).get("mode")
            R.check(tls in (None, "ISTIO_MUTUAL"), f"its TLS mode is {tls or 'auto'} (Istio mTLS)",
                    f"its TLS mode {tls} is not Istio mTLS")
        if svc:
            pols = find(docs, "AuthorizationPolicy", namespace=svc["metadata"]["namespace"])
            allowed = [p for p in pols if any(
                gw_principal in (s.get("source") or {}).get("principals", [])
                for r in p["spec"].get("rules") or [] for s in r.get("from") or [])]
            R.check(bool(allowed) or not pols,
                    f"the gateway ({gw_principal}) may call it" + (
                        f" ({name_of(allowed[0])})" if allowed else " (no AuthorizationPolicy)"),
                    f"AuthorizationPolicies in {svc['metadata']['namespace']} do not allow {gw_principal}")
        if rl_configmap:
            rl_doc = yaml.safe_load(next(iter(rl_configmap.get("data", {}).values()), "")) or {}
            R.check(rl_doc.get("domain") == rls.get("domain"),
                    f"domain {rls.get('domain')} is the ConfigMap's",
                    f"domain {rls.get('domain')!r} is not the ConfigMap's {rl_doc.get('domain')!r}")
    # Clusters of JWKS and introspection endpoints: ServiceEntry + TLS origination.
    for pname, prov in (cfg.get("providers") or {}).items():
        for what, http_uri in (("remote_jwks", (prov.get("remote_jwks") or {}).get("http_uri")),
                               ("introspection", (prov.get("introspection") or {}).get("http_uri"))):
            if not http_uri:
                continue
            where = f"providers.{pname}.{what}.http_uri"
            parsed = parse_cluster(str(http_uri.get("cluster", "")))
            if not R.check(parsed is not None, f"{where}.cluster {http_uri.get('cluster')} is an "
                           "Istio outbound cluster", f"{where}.cluster {http_uri.get('cluster')!r} "
                           "is not outbound|PORT||HOST"):
                continue
            _, port, _, host = parsed
            uri = str(http_uri.get("uri", ""))
            m = re.match(r"^(https?)://([^/:]+)", uri)
            R.check(not uri or (m is not None and m.group(2) == host),
                    f"{where}.uri host is the cluster's host {host}",
                    f"{where}.uri {uri!r}: its host is not {host}")
            https = bool(m and m.group(1) == "https")
            ses = [s for s in find(docs, "ServiceEntry") if host in s["spec"].get("hosts", [])
                   and (s["metadata"]["namespace"] == ns or "*" in s["spec"].get("exportTo", ["*"]))]
            sp = next((p for s in ses for p in s["spec"].get("ports", []) if p.get("number") == port), None)
            if not R.check(sp is not None, f"{ses and name_of(ses[0])} makes "
                           f"outbound|{port}||{host} and the gateway sees it",
                           f"no ServiceEntry visible in {ns} has host {host} port {port}: the "
                           "cluster would not exist"):
                continue
            R.check(sp.get("protocol") in ("HTTP", "HTTP2"),
                    f"its port speaks {sp.get('protocol')} (the filter sends HTTP requests)",
                    f"its port's protocol {sp.get('protocol')} is not HTTP: Envoy would not carry "
                    "the filter's HTTP callout on it")
            if https:
                drs = [d for d in find(docs, "DestinationRule") if d["spec"].get("host") == host]
                tls = None
                for d in drs:
                    tp = d["spec"].get("trafficPolicy") or {}
                    tls = tp.get("tls") or tls
                    for pl in tp.get("portLevelSettings") or []:
                        if (pl.get("port") or {}).get("number") == port and pl.get("tls"):
                            tls = pl["tls"]
                R.check(bool(tls) and tls.get("mode") == "SIMPLE" and tls.get("sni") == host,
                        f"a DestinationRule originates TLS to {host}:{port} (SIMPLE, sni {host})",
                        f"{uri} is https but no DestinationRule originates TLS (SIMPLE, sni) for "
                        f"{host}:{port}: {tls}")
    return wp


# ------------------------------------------------------------------------------------------------
# The filter's configuration and the rate-limit service, for real


def check_plugin_config(wp: dict[str, Any] | None) -> None:
    section("pluginConfig with the filter's own parser (portcullis check)")
    if wp is None:
        R.fail("no WasmPlugin to check")
        return
    if not (CLI.is_file() and os.access(CLI, os.X_OK)):
        R.missing(f"no {rel(CLI)}: pluginConfig is unchecked")
        return
    cfg = wp["spec"].get("pluginConfig") or {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pluginConfig.json"
        # As Istio passes it: the Struct marshalled to JSON.
        path.write_text(json.dumps(cfg))
        res = run([str(CLI), "check", str(path)])
        R.check(res.returncode == 0, f"{rel(CLI)} check: {res.stdout.strip()}",
                f"{rel(CLI)} check refuses pluginConfig: {res.stderr.strip()}")
        bad = copy.deepcopy(cfg)
        bad.setdefault("rate_limit_service", {})["timeout_msec"] = 100
        path.write_text(json.dumps(bad))
        res = run([str(CLI), "check", str(path)])
        R.check(res.returncode == 1 and "timeout_msec" in res.stderr,
                f"negative control: an unknown field is refused ({res.stderr.strip().splitlines()[0] if res.stderr.strip() else ''})",
                f"negative control: an unknown field was accepted (exit {res.returncode})")


def ratelimit_binary() -> Path | None:
    for p in ("target/release/portcullis-ratelimit", "target/debug/portcullis-ratelimit"):
        if (REPO / p).is_file() and os.access(REPO / p, os.X_OK):
            return REPO / p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_descriptors(cfg: dict[str, Any]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every descriptor the routes send, with sample values (docs/configuration.md#descriptors)."""
    out = []
    for route in cfg.get("routes") or []:
        for i, d in enumerate(route.get("rate_limits") or []):
            entries = []
            for action in d.get("actions") or []:
                (name, a), = action.items()
                a = a or {}
                if name == "remote_address":
                    entries.append(("remote_address", "203.0.113.7"))
                elif name == "generic_key":
                    entries.append((a.get("descriptor_key", "generic_key"), a["descriptor_value"]))
                elif name in ("subject", "consumer"):
                    entries.append((a.get("descriptor_key", name),
                                    "alice" if name == "subject" else "acme-partner"))
                elif name == "route_name":
                    entries.append((a.get("descriptor_key", "route"), route.get("name", "")))
                elif name in ("request_headers", "claim"):
                    entries.append((a["descriptor_key"], "sample"))
            out.append((f"{route.get('name')}.rate_limits[{i}]", tuple(entries)))
    return out


def ask_ratelimit(port: int, domain: str, descriptors: list[tuple[tuple[str, str], ...]]) -> list[Any]:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        req = rls_pb2.RateLimitRequest(domain=domain, hits_addend=1, descriptors=[
            ratelimit_pb2.RateLimitDescriptor(entries=[
                ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in d])
            for d in descriptors])
        resp = stub.ShouldRateLimit(req, timeout=5)
    unit = rls_pb2.RateLimitResponse.RateLimit.Unit.Name
    return [f"{s.current_limit.name or '-'}: {s.current_limit.requests_per_unit}/"
            f"{unit(s.current_limit.unit).lower()}" if s.HasField("current_limit") else None
            for s in resp.statuses]


def check_limits(wp: dict[str, Any] | None, cm: dict[str, Any] | None) -> None:
    section("the ConfigMap's limits with the real portcullis-ratelimit")
    if wp is None or cm is None:
        R.fail("no WasmPlugin or rate-limit ConfigMap")
        return
    binary = ratelimit_binary()
    if binary is None:
        R.missing("no target/release or target/debug portcullis-ratelimit: the limits are unchecked")
        return
    cfg = wp["spec"].get("pluginConfig") or {}
    domain = (cfg.get("rate_limit_service") or {}).get("domain", "")
    descriptors = sample_descriptors(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        for key, text in (cm.get("data") or {}).items():
            (Path(tmp) / key).write_text(text)
        grpc_port, http_port = free_port(), free_port()
        proc = subprocess.Popen(
            [str(binary), "--config", tmp, "--grpc-listen", f"127.0.0.1:{grpc_port}",
             "--http-listen", f"127.0.0.1:{http_port}", "--log-format", "text", "--log-level", "warn"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            healthy = False
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and proc.poll() is None and not healthy:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as r:
                        healthy = r.status == 200
                    socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
                except OSError:
                    healthy = False
                    time.sleep(0.1)
            if not R.check(healthy, f"{rel(binary)} loads the ConfigMap's config.yaml (/healthz 200)",
                           f"{rel(binary)} did not start on the ConfigMap's config"):
                return
            asked = ask_ratelimit(grpc_port, domain, [d for _, d in descriptors]
                                  + [(("generic_key", "not-configured"),)])
            for (where, entries), got in zip(descriptors, asked):
                shown = ", ".join("=".join(e) for e in entries)
                R.check(got is not None, f"{where} [{shown}] -> {got}",
                        f"{where} [{shown}] gets no limit from the ConfigMap's rules")
            R.check(asked[-1] is None, "negative control: an unconfigured descriptor gets no limit",
                    f"negative control: an unconfigured descriptor got {asked[-1]}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if not healthy and proc.stdout:
                R.note(proc.stdout.read()[-400:])


# ------------------------------------------------------------------------------------------------
# The OCI image


def blob(layout: Path, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ValueError(f"digest {digest!r} is not sha256:<64 hex>")
    data = (layout / "blobs" / "sha256" / hexd).read_bytes()
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"blob {digest} does not hash to its name")
    return data


def descriptor(layout: Path, desc: dict[str, Any], media_type: str) -> bytes:
    if desc.get("mediaType") != media_type:
        raise ValueError(f"descriptor mediaType {desc.get('mediaType')!r}, expected {media_type}")
    data = blob(layout, desc.get("digest", ""))
    if desc.get("size") != len(data):
        raise ValueError(f"descriptor size {desc.get('size')} but blob {desc['digest']} has {len(data)} bytes")
    return data


def read_layout(layout: Path, tag: str, strict: bool = True) -> tuple[str, bytes]:
    """The manifest digest and the module, read as Istio's fetcher reads a compat image; raises
    ValueError on anything the image-spec or Istio would refuse. `strict` also wants what the
    spec only recommends (the index's mediaType), which make-oci.py writes and skopeo omits."""
    if json.loads((layout / "oci-layout").read_text()) != {"imageLayoutVersion": "1.0.0"}:
        raise ValueError("oci-layout is not imageLayoutVersion 1.0.0")
    index = json.loads((layout / "index.json").read_text())
    if index.get("schemaVersion") != 2 or index.get("mediaType", None if strict else OCI_INDEX) != OCI_INDEX:
        raise ValueError("index.json: not an OCI image index (schemaVersion 2)")
    found = [m for m in index.get("manifests", [])
             if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if len(found) != 1:
        raise ValueError(f"index.json: {len(found)} manifests named {tag!r}")
    manifest = json.loads(descriptor(layout, found[0], OCI_MANIFEST))
    if manifest.get("schemaVersion") != 2 or manifest.get("mediaType") != OCI_MANIFEST:
        raise ValueError("manifest: not an OCI image manifest")
    if (manifest.get("annotations") or {}).get("module.wasm.image/variant") != "compat":
        raise ValueError("manifest: no module.wasm.image/variant=compat annotation (spec-compat.md)")
    config = json.loads(descriptor(layout, manifest.get("config") or {}, OCI_CONFIG))
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        raise ValueError(f"manifest: {len(layers)} layers; the compat variant has exactly one")
    # Istio: the last layer, application/vnd.oci.image.layer.v1.tar+gzip, gunzipped, untarred,
    # the first member whose base name is plugin.wasm.
    layer = descriptor(layout, layers[-1], OCI_LAYER_GZIP)
    tar_bytes = gzip.decompress(layer)
    if config.get("rootfs") != {"type": "layers",
                                "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]}:
        raise ValueError("config: rootfs.diff_ids is not the uncompressed layer's digest")
    if not (config.get("os") and config.get("architecture")):
        raise ValueError("config: os and architecture are required")
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar:
            if os.path.basename(member.name) == "plugin.wasm":
                extracted = tar.extractfile(member)
                return found[0]["digest"], extracted.read() if extracted else b""
    raise ValueError("layer: plugin.wasm not found in the archive")


def make_oci(out: Path) -> tuple[int, str]:
    res = run([sys.executable, str(MAKE_OCI), "--wasm", str(WASM), "--out", str(out)], timeout=120)
    m = re.search(r"^WasmPlugin spec\.sha256: ([0-9a-f]{64})$", res.stdout, re.M)
    return res.returncode, (m.group(1) if m else res.stderr.strip()[-300:])


def check_oci(wp: dict[str, Any] | None, version: str, skopeo: str | None, oci_tool: str | None) -> None:
    section("make oci (scripts/make-oci.py): the filter's Wasm image for Istio")
    if not WASM.is_file():
        R.missing(f"no {rel(WASM)}: the OCI image is unchecked")
        return
    base = WORK / "oci"
    if base.exists():
        shutil.rmtree(base)
    first, second = base / "portcullis", base / "again"
    rc1, digest = make_oci(first)
    rc2, digest2 = make_oci(second)
    if not R.check(rc1 == 0 and rc2 == 0, f"make-oci.py builds the layout ({rel(first)})",
                   f"make-oci.py failed: {digest if rc1 else digest2}"):
        return
    R.check(digest == digest2 and (first / "blobs").exists(),
            f"deterministic: two builds give manifest sha256:{digest}",
            f"two builds differ: {digest} vs {digest2}")
    wasm = WASM.read_bytes()
    try:
        got_digest, module = read_layout(first, version)
        R.check(got_digest == f"sha256:{digest}" and module == wasm,
                "read as Istio's fetcher does (compat: last layer tar+gzip, plugin.wasm): the built "
                f"module, {len(module)} bytes; every digest and size matches its blob",
                f"the layout's module or digest differs ({got_digest}, {len(module)} bytes)")
    except (ValueError, OSError, KeyError, json.JSONDecodeError, tarfile.TarError) as e:
        R.fail(f"{rel(first)}: {e}")
    # Negative controls: a corrupted layer, a one-layer "oci"-variant manifest.
    corrupt = base / "corrupt"
    shutil.copytree(first, corrupt)
    manifest = json.loads(blob(first, f"sha256:{digest}"))
    layer_path = corrupt / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(layer_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer_path.write_bytes(bytes(data))
    try:
        read_layout(corrupt, version)
        R.fail("negative control: a corrupted layer was accepted")
    except (ValueError, OSError, tarfile.TarError) as e:
        R.ok(f"negative control: a corrupted layer is refused ({e})")
    if oci_tool:
        res = run([oci_tool, "validate", "--type", "image", "--ref", f"name={version}", str(first)])
        R.check(res.returncode == 0, f"oci-image-tool validate (image-spec schemas, digests): "
                f"{res.stdout.strip().splitlines()[-1] if res.stdout.strip() else 'ok'}",
                f"oci-image-tool validate: {(res.stderr or res.stdout).strip()[-400:]}")
        res = run([oci_tool, "validate", "--type", "image", "--ref", f"name={version}", str(corrupt)])
        R.check(res.returncode != 0, "negative control: oci-image-tool refuses the corrupted layer",
                "negative control: oci-image-tool accepted the corrupted layer")
    if skopeo:
        res = run([skopeo, "inspect", f"oci:{first}:{version}"])
        info = json.loads(res.stdout) if res.returncode == 0 else {}
        R.check(info.get("Digest") == f"sha256:{digest}"
                and info.get("Layers") == [manifest["layers"][0]["digest"]],
                f"skopeo inspect oci:…:{version}: digest sha256:{digest[:12]}…, one layer, "
                f"{info.get('Os')}/{info.get('Architecture')}",
                f"skopeo inspect: {res.stderr.strip()[-300:] or info}")
        copied = base / "copied"
        res = run([skopeo, "copy", "--quiet", "--preserve-digests", f"oci:{first}:{version}",
                   f"oci:{copied}:{version}"], timeout=120)
        try:
            cdigest, cmodule = read_layout(copied, version, strict=False) if res.returncode == 0 else ("", b"")
        except (ValueError, OSError, tarfile.TarError) as e:
            cdigest, cmodule = str(e), b""
        R.check(res.returncode == 0 and cdigest == f"sha256:{digest}" and cmodule == wasm,
                "skopeo copy --preserve-digests keeps the manifest digest (what a push keeps)",
                f"skopeo copy --preserve-digests: {res.stderr.strip()[-300:] or cdigest}")
    if wp is not None:
        pinned = wp["spec"].get("sha256")
        if pinned == digest:
            R.ok("the WasmPlugin's sha256 is this build's digest")
        else:
            R.note(f"the WasmPlugin's sha256 {pinned} is not this build's {digest}: after pushing "
                   "this build, set it (docs/istio.md)")
    shutil.rmtree(second, ignore_errors=True)


def main() -> int:
    print("check-istio: deploy/istio and the filter's OCI image")
    version = workspace_version()
    docs = load_manifests()
    section("tools")
    tools = node_tools()
    if tools:
        R.ok(f"npm ci: @kubernetes-models/istio, kubernetes-models, typescript in {rel(tools)}")
    skopeo = apt_install("skopeo", "skopeo")
    oci_tool = apt_install("oci-image-tool", "oci-image-tool")
    if skopeo and oci_tool:
        R.ok(f"{run([skopeo, '--version']).stdout.strip()}, oci-image-tool")
    check_schemas(tools, docs)
    check_cel(docs)
    check_services(docs)
    cm = check_ratelimit_deployment(docs, version)
    wp = check_plugin(docs, version, cm)
    check_plugin_config(wp)
    check_limits(wp, cm)
    check_oci(wp, version, skopeo, oci_tool)
    print(f"\ncheck-istio: {R.passed} passed, {len(R.failed)} failed, {len(R.skipped)} skipped")
    for f in R.failed:
        print(f"  FAIL  {f}")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
