#!/usr/bin/env python3
"""`make oci`: the filter as an OCI image layout that Istio's WasmPlugin can pull once pushed.

    python3 scripts/make-oci.py [--wasm PATH] [--out DIR] [--tag TAG] [--digest-only]

Writes DIR (default target/oci/portcullis), an OCI image layout (image-spec v1.1 "layout"):
`oci-layout`, `index.json` (one manifest, `org.opencontainers.image.ref.name` = TAG) and
`blobs/sha256/…`. The image is the *compat* variant of the Wasm image specification that Istio
implements (solo-io/wasm spec/spec-compat.md; istio/istio pkg/wasm/imagefetcher.go):

* an OCI image manifest (`application/vnd.oci.image.manifest.v1+json`) with the annotation
  `module.wasm.image/variant: compat`;
* a config `application/vnd.oci.image.config.v1+json` (`os: wasip1`, `architecture: wasm`,
  `rootfs.diff_ids` = the uncompressed layer's digest);
* one layer `application/vnd.oci.image.layer.v1.tar+gzip` whose tar holds `plugin.wasm`.

Why compat and not the "oci" variant (custom media types `application/vnd.module.wasm.*`):
Istio's fetcher tries compat first, and reads the oci variant only as a manifest of exactly two
*layers* (the runtime config as a layer plus the module), so a manifest with a
`application/vnd.module.wasm.config.v1+json` config and a single wasm layer is refused ("number
of layers must be 2"). Compat uses only standard media types, so every registry, `skopeo` and
`oras` handle it like any image.

Deterministic: the same .wasm gives the same bytes and so the same manifest digest (tar entry
with mtime 0, uid/gid 0, no user names; gzip header without name or time, level 9; no `created`
in the config). The manifest digest is what WasmPlugin's `sha256` checks for an `oci://` URL; it
is printed last. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WASM = REPO / "target/wasm32-wasip1/release/portcullis.wasm"
DEFAULT_OUT = REPO / "target/oci/portcullis"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
VARIANT_ANNOTATION = "module.wasm.image/variant"
WASM_NAME = "plugin.wasm"  # the file Istio's fetcher looks for in a compat layer
ABI_EXPORT = "proxy_abi_version_0_2_1"


def workspace_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    section = text.split("[workspace.package]", 1)[1]
    m = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
    if not m:
        raise SystemExit("Cargo.toml: no [workspace.package] version")
    return m.group(1)


def _leb128(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def wasm_exports(data: bytes) -> set[str]:
    """The export names of a WebAssembly module (raises ValueError when it is not one)."""
    if data[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a WebAssembly module (version 1)")
    names: set[str] = set()
    i = 8
    while i < len(data):
        section = data[i]
        size, i = _leb128(data, i + 1)
        end = i + size
        if end > len(data):
            raise ValueError("truncated WebAssembly section")
        if section == 7:  # export section
            count, j = _leb128(data, i)
            for _ in range(count):
                length, j = _leb128(data, j)
                names.add(data[j:j + length].decode("utf-8"))
                j += length + 1  # name, kind
                _, j = _leb128(data, j)  # index
        i = end
    return names


def canonical(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(wasm: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(WASM_NAME)
        info.size = len(wasm)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def build(wasm: bytes, tag: str, version: str) -> tuple[dict[str, bytes], bytes, bytes]:
    """The blobs by digest, index.json and the manifest."""
    tar = layer_tar(wasm)
    layer = gzip_bytes(tar)
    config = canonical({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {
            "Labels": {
                "org.opencontainers.image.title": "portcullis",
                "org.opencontainers.image.version": version,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": MT_LAYER, "digest": sha256(layer), "size": len(layer)}],
        "annotations": {
            VARIANT_ANNOTATION: "compat",
            "org.opencontainers.image.title": "portcullis",
            "org.opencontainers.image.description":
                "Portcullis Envoy filter (proxy-wasm ABI 0.2.1), Istio Wasm image (compat)",
            "org.opencontainers.image.version": version,
        },
    })
    index = canonical({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": sha256(manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    })
    blobs = {sha256(b): b for b in (layer, config, manifest)}
    return blobs, index, manifest


def write_layout(out: Path, blobs: dict[str, bytes], index: bytes) -> None:
    """Writes the layout beside `out` and swaps it in, so no stale blob survives."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
        (tmp / "index.json").write_bytes(index)
        blob_dir = tmp / "blobs" / "sha256"
        blob_dir.mkdir(parents=True)
        for digest, data in blobs.items():
            (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wasm", type=Path, default=DEFAULT_WASM, help="the filter module")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the OCI layout folder")
    parser.add_argument("--tag", help="the reference name in index.json (default: the version)")
    parser.add_argument("--digest-only", action="store_true",
                        help="print only the manifest digest's hex (WasmPlugin spec.sha256)")
    args = parser.parse_args()

    if not args.wasm.is_file():
        print(f"{args.wasm}: no such file (make build makes it)", file=sys.stderr)
        return 1
    wasm = args.wasm.read_bytes()
    try:
        exports = wasm_exports(wasm)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        print(f"{args.wasm}: {e}", file=sys.stderr)
        return 1
    if ABI_EXPORT not in exports:
        print(f"{args.wasm}: does not export {ABI_EXPORT}: not a proxy-wasm 0.2.1 module",
              file=sys.stderr)
        return 1
    version = workspace_version()
    tag = args.tag or version
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", tag):
        print(f"--tag {tag!r}: not a valid image tag", file=sys.stderr)
        return 1

    blobs, index, manifest = build(wasm, tag, version)
    write_layout(args.out, blobs, index)
    digest = sha256(manifest)
    if args.digest_only:
        print(digest.split(":", 1)[1])
        return 0
    layer = json.loads(manifest)["layers"][0]
    try:
        shown = args.out.resolve().relative_to(REPO)
    except ValueError:
        shown = args.out
    print(f"{shown}: OCI image layout, tag {tag} (Istio Wasm image, compat variant)")
    print(f"  layer    {layer['digest']} ({layer['size']} bytes; {WASM_NAME} {len(wasm)} bytes)")
    print(f"  manifest {digest}")
    print(f"push:  skopeo copy --preserve-digests oci:{shown}:{tag} docker://REGISTRY/portcullis:{tag}")
    print(f"   or  oras cp --from-oci-layout {shown}:{tag} REGISTRY/portcullis:{tag}")
    print(f"WasmPlugin spec.sha256: {digest.split(':', 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
