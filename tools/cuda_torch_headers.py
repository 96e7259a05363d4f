"""Fetch the CUDA-specific headers of the CUDA build of the installed torch version, without
downloading the wheel: HTTP range requests read the wheel's zip directory and then only the
members under ``torch/include/{c10/cuda,ATen/cuda,c10/macros}`` (a few hundred KB of a ~500 MB
wheel). CI compiles the CUDA torch glue against them (``python_tests/test_nvcc.py``) on machines
whose torch is the CPU wheel::

    python tools/cuda_torch_headers.py [--version 2.13.0 | newest] [--all] [--dest DIR]   # prints the include folder

``--version newest`` takes the newest release on the index (what ``pip install "torch>=2.5"``
gives a GPU user today); ``--all`` fetches every header (to compile the whole extension against
that version) instead of the CUDA-specific ones.

The Linux x86_64 wheel that PyPI serves by default is torch's CUDA build. The result is cached
(``$LOSSMIX_EXT_CACHE`` or ``~/.cache/lossmix_ext``); a second call reads nothing from the network.
"""
from __future__ import annotations

import argparse
import os
import re
import struct
import sys
import urllib.request
import zlib
from typing import Dict, List, Optional, Tuple

PREFIXES = ("torch/include/c10/cuda/", "torch/include/ATen/cuda/", "torch/include/c10/macros/")
INDEX = "https://pypi.org/simple/torch/"


class FetchError(RuntimeError):
    pass


def _get(url: str, rng: Optional[str] = None, timeout: float = 60) -> bytes:
    req = urllib.request.Request(url, headers={"Range": f"bytes={rng}"} if rng else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if rng and r.status != 206:
            raise FetchError(f"{url}: the server ignored the byte range (status {r.status})")
        return r.read()


def _release_key(version: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def newest_version(timeout: float = 60) -> str:
    """The newest torch release with a Linux x86_64 wheel for this Python on the index (what a GPU
    user's ``pip install "torch>=2.5"`` resolves to); pre-releases and local versions are not
    releases."""
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    html = _get(INDEX, timeout=timeout).decode("utf-8", "replace")
    found = set(re.findall(r"torch-(\d+\.\d+\.\d+)-" + py + "-" + py + r"-manylinux[^\"#<]*x86_64\.whl", html))
    if not found:
        raise FetchError(f"no torch release for {py} manylinux x86_64 on {INDEX}")
    return max(found, key=_release_key)


def wheel_url(version: str, timeout: float = 60) -> str:
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    html = _get(INDEX, timeout=timeout).decode("utf-8", "replace")
    name = re.escape(f"torch-{version}-{py}-{py}-manylinux") + r"[^\"#<]*x86_64\.whl"
    m = re.search(r'href="([^"#]*' + name + ')', html)
    if m is None:
        raise FetchError(f"no torch {version} wheel for {py} manylinux x86_64 on {INDEX}")
    return m.group(1)


def _directory(url: str, timeout: float) -> List[Tuple[str, int, int, int]]:
    """(name, local header offset, compressed size, method) of every member."""
    tail = _get(url, "-131072", timeout)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0:
        raise FetchError("no end-of-central-directory record in the wheel's last 128 KB")
    cd_size, cd_off = struct.unpack("<II", tail[pos + 12:pos + 20])
    if cd_off == 0xFFFFFFFF or cd_size == 0xFFFFFFFF:  # zip64
        loc = tail.rfind(b"PK\x06\x07", 0, pos)
        (z64_off,) = struct.unpack("<Q", tail[loc + 8:loc + 16])
        rec = _get(url, f"{z64_off}-{z64_off + 56 - 1}", timeout)
        cd_size, cd_off = struct.unpack("<QQ", rec[40:56])
    cd = _get(url, f"{cd_off}-{cd_off + cd_size - 1}", timeout)
    out, p = [], 0
    while p + 46 <= len(cd) and cd[p:p + 4] == b"PK\x01\x02":
        method, = struct.unpack("<H", cd[p + 10:p + 12])
        csize, usize, nlen, elen, clen = struct.unpack("<IIHHH", cd[p + 20:p + 34])
        off, = struct.unpack("<I", cd[p + 42:p + 46])
        name = cd[p + 46:p + 46 + nlen].decode("utf-8")
        extra = cd[p + 46 + nlen:p + 46 + nlen + elen]
        if 0xFFFFFFFF in (csize, usize, off):  # zip64 extra field: the 8-byte values that overflowed
            q = 0
            while q + 4 <= len(extra):
                hid, hlen = struct.unpack("<HH", extra[q:q + 4])
                if hid == 1:
                    vals = list(struct.unpack(f"<{hlen // 8}Q", extra[q + 4:q + 4 + hlen - hlen % 8]))
                    if usize == 0xFFFFFFFF:
                        usize = vals.pop(0)
                    if csize == 0xFFFFFFFF:
                        csize = vals.pop(0)
                    if off == 0xFFFFFFFF:
                        off = vals.pop(0)
                q += 4 + hlen
        out.append((name, off, csize, method))
        p += 46 + nlen + elen + clen
    return out


def fetch(version: Optional[str] = None, dest: Optional[str] = None, timeout: float = 60,
          prefixes: Tuple[str, ...] = PREFIXES) -> str:
    """The include folder holding the CUDA build's headers under ``prefixes`` (by default its
    c10/cuda, ATen/cuda and c10/macros headers; ``("torch/include/",)``: all of them)."""
    if version is None:
        import torch
        version = torch.__version__.split("+")[0]
    elif version == "newest":
        version = newest_version(timeout)
    tag = "cuda-headers" if prefixes == PREFIXES else "all-headers"
    root = dest or os.path.join(os.environ.get("LOSSMIX_EXT_CACHE", os.path.expanduser("~/.cache/lossmix_ext")),
                                f"torch-{version}-{tag}")
    inc = os.path.join(root, "include")
    done = os.path.join(root, "COMPLETE")
    if os.path.exists(done):
        return inc
    url = wheel_url(version, timeout)
    members = _directory(url, timeout)
    offsets = sorted(off for _, off, _, _ in members)
    nxt: Dict[int, int] = {a: b for a, b in zip(offsets, offsets[1:])}
    wanted = sorted((m for m in members if m[0].startswith(prefixes) and not m[0].endswith("/")), key=lambda m: m[1])
    if not wanted:
        raise FetchError(f"the torch {version} wheel has no {prefixes} headers: not a CUDA build?")
    spans: List[List[Tuple[str, int, int, int]]] = []
    for m in wanted:  # members that lie close together are read in one request
        if spans and m[1] - nxt.get(spans[-1][-1][1], m[1]) < (1 << 20):
            spans[-1].append(m)
        else:
            spans.append([m])
    for span in spans:
        start = span[0][1]
        end = nxt.get(span[-1][1], span[-1][1] + span[-1][2] + 65536 + 30)
        blob = _get(url, f"{start}-{end - 1}", timeout)
        for name, off, csize, method in span:
            p = off - start
            if blob[p:p + 4] != b"PK\x03\x04":
                raise FetchError(f"bad local header for {name}")
            nlen, elen = struct.unpack("<HH", blob[p + 26:p + 30])
            data = blob[p + 30 + nlen + elen:p + 30 + nlen + elen + csize]
            data = zlib.decompress(data, -15) if method == 8 else data
            path = os.path.join(inc, name[len("torch/include/"):])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
    if not os.path.exists(os.path.join(inc, "c10", "cuda", "impl", "cuda_cmake_macros.h")):
        raise FetchError("the fetched headers lack c10/cuda/impl/cuda_cmake_macros.h")
    with open(done, "w") as f:
        f.write(f"{url}\n{len(wanted)} headers\n")
    return inc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", help="a release (default: the installed torch's), or 'newest'")
    ap.add_argument("--dest")
    ap.add_argument("--all", action="store_true", help="every header of the wheel (to compile against another torch)")
    args = ap.parse_args(argv)
    try:
        print(fetch(args.version, args.dest, prefixes=("torch/include/",) if args.all else PREFIXES))
    except (FetchError, OSError) as exc:
        print(f"cannot fetch the CUDA headers: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
