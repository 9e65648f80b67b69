"""Checks Envoy bootstrap files against Envoy's own v3 API definitions (the `xds-protos` package).

    target/check-venv/bin/python deploy/check/envoy_config.py envoy/envoy.yaml [...]

Each file is parsed as YAML, then with protobuf's JSON parser into
`envoy.config.bootstrap.v3.Bootstrap`, as Envoy does: an unknown field, a wrong type or an
unknown enum value fails. Every `typed_config` (`google.protobuf.Any`) is resolved to its
message type and checked the same way. Then the protoc-gen-validate rules Envoy declares on
the fields (`required`, `min_len`, `gt`, `min_items`, enum `defined_only`, required oneofs, …)
are enforced, and deprecated fields are reported. Last, every HTTP connection manager that runs
the Portcullis filter must set `use_remote_address: true`: under Envoy's default (false) the
client address the filter sees is the last `X-Forwarded-For` entry, which any client writes
(docs/configuration.md, "Client address"). Exit status 1 on any error.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import yaml
from google.protobuf import any_pb2, json_format, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from validate import validate_pb2  # noqa: F401  (registers the validate.rules option)

import envoy.config.bootstrap.v3.bootstrap_pb2 as bootstrap_pb2

_loaded_packages: set[str] = set()

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
WASM_TYPE = "envoy.extensions.filters.http.wasm.v3.Wasm"
TYPED_STRUCTS = {"udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"}

WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}


def load_type(type_url: str) -> None:
    """Imports every generated module of the package that defines the `@type`, so that the
    JSON parser can resolve it (xds-protos registers types when their module is imported)."""
    full_name = type_url.rsplit("/", 1)[-1]
    package = full_name.rsplit(".", 1)[0]
    while package and package not in _loaded_packages:
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError:
            package = package.rsplit(".", 1)[0] if "." in package else ""
            continue
        _loaded_packages.add(package)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")
        return


def preload(node: object) -> None:
    """Loads the type of every `@type` in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type" and isinstance(value, str):
                load_type(value)
            else:
                preload(value)
    elif isinstance(node, list):
        for value in node:
            preload(value)


def duration_ns(d: Duration) -> int:
    return d.seconds * 1_000_000_000 + d.nanos


def check_rules(msg: Message, path: str, errors: list[str], warnings: list[str]) -> None:
    """Enforces the protoc-gen-validate rules of `msg`'s fields, recursively (into `Any` too)."""
    descriptor = msg.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Any":
        if msg.type_url:
            load_type(msg.type_url)
            try:
                cls = symbol_database.Default().GetSymbol(msg.type_url.rsplit("/", 1)[-1])
            except KeyError:
                errors.append(f"{path}: unknown type {msg.type_url}")
                return
            unpacked = cls()
            msg.Unpack(unpacked)
            check_rules(unpacked, path, errors, warnings)
        return
    for oneof in descriptor.oneofs:
        opts = oneof.GetOptions()
        required = any(
            f.name == "required" and v for f, v in opts.ListFields()
        )
        if required and msg.WhichOneof(oneof.name) is None:
            errors.append(f"{path}: one of {[f.name for f in oneof.fields]} is required")
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and msg.WhichOneof(oneof.name) != field.name:
            # Rules of a oneof member apply only to the member that is set.
            continue
        fpath = f"{path}.{field.name}" if path else field.name
        opts = field.GetOptions()
        rules = opts.Extensions[validate_pb2.rules] if opts.HasExtension(validate_pb2.rules) else None
        repeated = field.is_repeated
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if repeated:
            values = list(getattr(msg, field.name))
            present = bool(values)
        elif is_message:
            present = msg.HasField(field.name)
            values = [getattr(msg, field.name)] if present else []
        else:
            values = [getattr(msg, field.name)]
            present = field.has_presence and msg.HasField(field.name) or bool(values[0])
        if present and opts.deprecated:
            warnings.append(f"{fpath}: deprecated in Envoy's API")
        if rules is not None:
            check_field_rules(field, rules, values, present, repeated, fpath, errors)
        if is_message:
            if field.message_type.GetOptions().map_entry:
                for entry_key, entry_value in (getattr(msg, field.name).items()):
                    if isinstance(entry_value, Message):
                        check_rules(entry_value, f"{fpath}[{entry_key}]", errors, warnings)
                continue
            for i, value in enumerate(values):
                check_rules(value, f"{fpath}[{i}]" if repeated else fpath, errors, warnings)


def check_field_rules(field, rules, values, present, repeated, path, errors) -> None:
    if rules.HasField("message") and rules.message.required and not present:
        errors.append(f"{path}: required")
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    r = getattr(rules, kind)
    if kind in ("duration", "timestamp", "any") and r.required and not present:
        errors.append(f"{path}: required")
        return
    if kind == "repeated":
        if r.min_items and len(values) < r.min_items:
            errors.append(f"{path}: needs at least {r.min_items} item(s)")
        if r.HasField("max_items") and len(values) > r.max_items:
            errors.append(f"{path}: at most {r.max_items} item(s)")
        if r.HasField("items"):
            inner_kind = r.items.WhichOneof("type")
            if inner_kind is not None:
                for i, v in enumerate(values):
                    check_scalar(inner_kind, getattr(r.items, inner_kind), v, f"{path}[{i}]", errors, True)
        return
    if repeated:
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name in WRAPPERS:
        # Rules on a wrapper (UInt32Value, …) apply to its value, when it is set.
        values = [v.value for v in values]
    for v in values:
        if kind == "duration" and not present:
            continue
        check_scalar(kind, r, v, path, errors, present)


def check_scalar(kind, r, v, path, errors, present) -> None:
    if kind == "string":
        if r.min_len and len(v) < r.min_len:
            errors.append(f"{path}: at least {r.min_len} character(s) required")
        if r.HasField("max_len") and len(v) > r.max_len:
            errors.append(f"{path}: at most {r.max_len} character(s)")
        if r.HasField("min_bytes") and len(v.encode()) < r.min_bytes:
            errors.append(f"{path}: at least {r.min_bytes} byte(s) required")
        if list(r.__getattribute__("in")) and v not in r.__getattribute__("in"):
            errors.append(f"{path}: must be one of {list(r.__getattribute__('in'))}")
        if r.HasField("prefix") and v and not v.startswith(r.prefix):
            errors.append(f"{path}: must start with {r.prefix!r}")
    elif kind == "enum":
        # `defined_only`: protobuf's JSON parser already refuses names outside the enum.
        if list(r.__getattribute__("in")) and v not in r.__getattribute__("in"):
            errors.append(f"{path}: must be one of {list(r.__getattribute__('in'))}")
        if list(r.not_in) and v in r.not_in:
            errors.append(f"{path}: value {v} not allowed")
    elif kind == "duration":
        ns = duration_ns(v)
        for bound, op, text in (("gt", lambda a, b: a > b, ">"), ("gte", lambda a, b: a >= b, ">="),
                                ("lt", lambda a, b: a < b, "<"), ("lte", lambda a, b: a <= b, "<=")):
            if r.HasField(bound):
                limit = duration_ns(getattr(r, bound))
                if not op(ns, limit):
                    errors.append(f"{path}: must be {text} {limit / 1e9:g}s")
    elif kind in ("uint32", "uint64", "int32", "int64", "double", "float", "sint32", "sint64",
                  "fixed32", "fixed64", "sfixed32", "sfixed64"):
        if not present:
            return
        for bound, op, text in (("gt", lambda a, b: a > b, ">"), ("gte", lambda a, b: a >= b, ">="),
                                ("lt", lambda a, b: a < b, "<"), ("lte", lambda a, b: a <= b, "<=")):
            if r.HasField(bound) and not op(v, getattr(r, bound)):
                errors.append(f"{path}: must be {text} {getattr(r, bound)}")
        if list(r.__getattribute__("in")) and v not in r.__getattribute__("in"):
            errors.append(f"{path}: must be one of {list(r.__getattribute__('in'))}")


def type_name(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1]


def unpack(any_msg: any_pb2.Any) -> Message | None:
    """The message an `Any` carries (through a `TypedStruct` too), or None if its type is
    unknown (check_rules reports that)."""
    name = type_name(any_msg.type_url)
    try:
        cls = symbol_database.Default().GetSymbol(name)
    except KeyError:
        return None
    msg = cls()
    any_msg.Unpack(msg)
    if name in TYPED_STRUCTS:
        load_type(msg.type_url)
        try:
            inner = symbol_database.Default().GetSymbol(type_name(msg.type_url))()
            json_format.ParseDict(json_format.MessageToDict(msg.value), inner)
        except (KeyError, json_format.ParseError):
            return None
        return inner
    return msg


def portcullis_plugin(http_filter: Message) -> tuple[bool, Message | None]:
    """Whether an HTTP filter is (or may be) the Portcullis Wasm filter, and its
    `PluginConfig` when it can be seen: a Wasm filter whose code is a `*portcullis*` file or URI,
    or whose filter, plugin, root or VM names it; and any Wasm filter whose configuration comes
    from discovery (its code cannot be seen here)."""
    if http_filter.HasField("config_discovery"):
        discovered = any(type_name(u) == WASM_TYPE for u in http_filter.config_discovery.type_urls)
        return discovered, None
    if not http_filter.HasField("typed_config"):
        return False, None
    wasm = unpack(http_filter.typed_config)
    if wasm is None or wasm.DESCRIPTOR.full_name != WASM_TYPE:
        return False, None
    plugin = wasm.config
    code = plugin.vm_config.code
    names = [http_filter.name, plugin.name, plugin.root_id, plugin.vm_config.vm_id]
    if code.HasField("local"):
        names.append(code.local.filename)
    if code.HasField("remote"):
        names.append(code.remote.http_uri.uri)
    return any("portcullis" in n.lower() for n in names), plugin


def trusts_envoy_xff(plugin: Message | None) -> bool:
    """Whether the filter's configuration (JSON in a StringValue) sets
    `client_ip.trust_envoy_xff: true`."""
    if plugin is None or not plugin.HasField("configuration"):
        return False
    value = unpack(plugin.configuration)
    if value is None or value.DESCRIPTOR.full_name != "google.protobuf.StringValue":
        return False
    try:
        config = json.loads(value.value)
    except ValueError:
        return False
    client_ip = config.get("client_ip") if isinstance(config, dict) else None
    return isinstance(client_ip, dict) and client_ip.get("trust_envoy_xff") is True


def check_client_address(bootstrap: Message) -> list[str]:
    """Refuses a listener whose HTTP connection manager runs the Portcullis filter without
    `use_remote_address: true`. The one alternative: `original_ip_detection_extensions` (which
    Envoy refuses next to `use_remote_address`) with the filter's `trust_envoy_xff: true`, the
    operator's word that the extensions' header comes from a proxy of theirs."""
    errors = []
    for i, listener in enumerate(bootstrap.static_resources.listeners):
        chains = [(f"filter_chains[{j}]", c) for j, c in enumerate(listener.filter_chains)]
        if listener.HasField("default_filter_chain"):
            chains.append(("default_filter_chain", listener.default_filter_chain))
        for chain_path, chain in chains:
            for k, network_filter in enumerate(chain.filters):
                if type_name(network_filter.typed_config.type_url) != HCM_TYPE:
                    continue
                hcm = unpack(network_filter.typed_config)
                if hcm is None or hcm.use_remote_address.value:
                    continue
                where = f"static_resources.listeners[{i}].{chain_path}.filters[{k}].typed_config"
                for h, http_filter in enumerate(hcm.http_filters):
                    found, plugin = portcullis_plugin(http_filter)
                    if not found:
                        continue
                    if hcm.original_ip_detection_extensions and trusts_envoy_xff(plugin):
                        continue
                    if hcm.original_ip_detection_extensions:
                        why = (
                            "sets original_ip_detection_extensions but the filter's configuration "
                            "does not say client_ip.trust_envoy_xff: true (is the header the "
                            "extensions read written by a proxy of yours?)"
                        )
                    else:
                        why = (
                            "does not set use_remote_address: true: Envoy would take the client "
                            "address from the last X-Forwarded-For entry, which any client writes"
                        )
                    errors.append(
                        f"{where}: listener {listener.name!r} runs the Portcullis filter "
                        f"(http_filters[{h}]) but its HTTP connection manager {why} "
                        "(docs/configuration.md, \"Client address\")"
                    )
                    break
    return errors


def check_file(path: Path) -> list[str]:
    document = yaml.safe_load(path.read_text())
    preload(document)
    message = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        return [f"{path}: {e}"]
    errors: list[str] = []
    warnings: list[str] = []
    check_rules(message, "", errors, warnings)
    errors.extend(check_client_address(message))
    for w in warnings:
        print(f"{path}: warning: {w}")
    return [f"{path}: {e}" for e in errors]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for name in argv:
        errors = check_file(Path(name))
        for e in errors:
            print(e, file=sys.stderr)
        if errors:
            failed = True
        else:
            print(f"{name}: valid envoy.config.bootstrap.v3.Bootstrap")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
