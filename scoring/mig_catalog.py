"""MIG geometry of the GPUs we know: which GPU-instance profiles exist and where they may start.

A MIG-capable A100/H100/H200 has 8 memory slices and 7 compute slices. A GPU instance covers
`mem_slices` consecutive memory slices from one of its shape's allowed starts; instances may not
overlap, their compute slices add up to at most 7, and there are at most 7 of them. Allowed starts
are those `nvidia-smi mig -lgipp` reports (they are the same on A100, H100 and H200); profile names
and per-GPU limits follow NVIDIA's MIG user guide.
"""

from __future__ import annotations

from dataclasses import dataclass

MEMORY_SLICES = 8
COMPUTE_SLICES = 7
MAX_INSTANCES = 7


@dataclass(frozen=True)
class Profile:
    name: str
    compute: int
    mem_slices: int
    max_count: int
    starts: tuple[int, ...]


# (compute slices, memory slices, media extensions) -> allowed start memory slices
_STARTS = {
    (1, 1, False): (0, 1, 2, 3, 4, 5, 6),
    (1, 1, True): (0, 1, 2, 3, 4, 5, 6),
    (1, 2, False): (0, 2, 4, 6),
    (2, 2, False): (0, 2, 4),
    (3, 4, False): (0, 4),
    (4, 4, False): (0,),
    (7, 8, False): (0,),
}


def _profiles(*rows: tuple[str, int, int, int]) -> tuple[Profile, ...]:
    return tuple(
        Profile(name, compute, mem, max_count, _STARTS[(compute, mem, name.endswith("+me"))])
        for name, compute, mem, max_count in rows
    )


# A100-80GB and H100-80GB share names and geometry.
_PROFILES_80GB = _profiles(
    ("1g.10gb", 1, 1, 7), ("1g.10gb+me", 1, 1, 1), ("1g.20gb", 1, 2, 4), ("2g.20gb", 2, 2, 3),
    ("3g.40gb", 3, 4, 2), ("4g.40gb", 4, 4, 1), ("7g.80gb", 7, 8, 1),
)

_CATALOG: dict[str, tuple[Profile, ...]] = {
    "A100-40GB": _profiles(
        ("1g.5gb", 1, 1, 7), ("1g.5gb+me", 1, 1, 1), ("1g.10gb", 1, 2, 4), ("2g.10gb", 2, 2, 3),
        ("3g.20gb", 3, 4, 2), ("4g.20gb", 4, 4, 1), ("7g.40gb", 7, 8, 1),
    ),
    "A100-80GB": _PROFILES_80GB,
    "H100-80GB": _PROFILES_80GB,
    "H200-141GB": _profiles(
        ("1g.18gb", 1, 1, 7), ("1g.18gb+me", 1, 1, 1), ("1g.35gb", 1, 2, 4), ("2g.35gb", 2, 2, 3),
        ("3g.71gb", 3, 4, 2), ("4g.71gb", 4, 4, 1), ("7g.141gb", 7, 8, 1),
    ),
}


def catalog_key(product: str) -> str | None:
    """Map a product name (`NVIDIA-A100-SXM4-80GB`, `NVIDIA H100 80GB HBM3`, ...) to a catalog key."""
    name = product.upper().replace("-", " ")
    if "GH200" in name or "GB200" in name:
        return None  # Grace superchips cut MIG differently
    if "H200" in name:
        return "H200-141GB"
    if "H100" in name and "NVL" not in name and "94GB" not in name:
        return "H100-80GB"
    if "A100" in name and "80GB" in name:
        return "A100-80GB"
    if "A100" in name and "40GB" in name:
        return "A100-40GB"
    return None


def compute_slices(profile: str) -> int:
    """Compute slices a profile name states (`3g.40gb` -> 3); 1 when the name does not say."""
    head = profile.split("g.", 1)[0]
    return int(head) if head.isdigit() else 1


def profiles_for(product: str) -> dict[str, Profile] | None:
    """The MIG profiles of a GPU product by name, or None when the product is not known."""
    key = catalog_key(product)
    return None if key is None else {p.name: p for p in _CATALOG[key]}
