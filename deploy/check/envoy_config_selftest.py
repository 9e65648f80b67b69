"""Proves that deploy/check/envoy_config.py catches what it claims: each mutation of
envoy/envoy.yaml below must be refused, and the file itself accepted.

    target/check-venv/bin/python deploy/check/envoy_config_selftest.py envoy/envoy.yaml
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import envoy_config  # noqa: E402


def hcm(doc):
    return doc["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"]


def wasm(doc):
    return hcm(doc)["http_filters"][0]["typed_config"]


def unnamed_filter(doc):
    """The filter under names that do not say Portcullis, on a listener without
    use_remote_address: its code file still gives it away."""
    hcm(doc).pop("use_remote_address")
    config = wasm(doc)["config"]
    config.update(name="gate", root_id="gate")
    config["vm_config"].update(vm_id="gate")


def detection_extension(doc):
    """Envoy's original-IP detection from a header instead of use_remote_address (Envoy refuses
    the two together), without the filter's client_ip.trust_envoy_xff."""
    hcm(doc).pop("use_remote_address")
    hcm(doc).pop("xff_num_trusted_hops")
    hcm(doc)["original_ip_detection_extensions"] = [{
        "name": "envoy.http.original_ip_detection.custom_header",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig",
            "header_name": "x-real-ip",
        },
    }]


MUTATIONS = {
    "unknown field in a typed_config": lambda d: wasm(d)["config"].update(fail_open_typo=True),
    "unknown @type": lambda d: wasm(d).update({"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasmm"}),
    "wrong field type": lambda d: d["static_resources"]["clusters"][0].update(connect_timeout="soon"),
    "unknown enum value": lambda d: d["static_resources"]["clusters"][0].update(lb_policy="FASTEST"),
    "PGV: duration must be > 0": lambda d: d["static_resources"]["clusters"][0].update(connect_timeout="0s"),
    "PGV: required message": lambda d: d["static_resources"]["clusters"][0]["health_checks"][0].pop("timeout"),
    "PGV: string min_len": lambda d: d["static_resources"]["clusters"][0].update(name=""),
    "PGV: required oneof": lambda d: d["static_resources"]["clusters"][0]["health_checks"][0].pop("http_health_check"),
    "unknown field in a route": lambda d: hcm(d)["route_config"]["virtual_hosts"][0]["routes"][1]["route"].update(prefix_rewrites="/x"),
    "bad redirect code": lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["redirect"].update(response_code="MOVED"),
    "filter without use_remote_address": lambda d: hcm(d).pop("use_remote_address"),
    "filter with use_remote_address false": lambda d: hcm(d).update(use_remote_address=False),
    "filter known by its code file alone, without use_remote_address": unnamed_filter,
    "filter behind original_ip_detection_extensions without trust_envoy_xff": detection_extension,
}


def main(argv: list[str]) -> int:
    source = Path(argv[0])
    original = yaml.safe_load(source.read_text())
    failures = []
    if envoy_config.check_file(source):
        failures.append(f"{source} itself is refused")
    with tempfile.TemporaryDirectory() as tmp:
        for name, mutate in MUTATIONS.items():
            doc = copy.deepcopy(original)
            mutate(doc)
            path = Path(tmp) / "mutated.yaml"
            path.write_text(yaml.safe_dump(doc))
            errors = envoy_config.check_file(path)
            if errors:
                print(f"refused as it should be ({name}): …{errors[0][-110:]}")
            else:
                failures.append(f"not refused: {name}")
    for f in failures:
        print(f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
