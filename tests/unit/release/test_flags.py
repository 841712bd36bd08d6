"""The flag registry (playbooks/flags.yaml, release/flags.py): strict loading, and build's refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deployctl.errors import ArtifactError, ConfigError, UsageError
from deployctl.release import artifact, flags, manifest

ROOT = Path(__file__).resolve().parents[3]

GOOD = """flags:
  price_improvement: {meaning: better fills, state: active, introduced: "1.0.0"}
  power_peg: {meaning: old test code, state: retired, introduced: "0.1.0", retired: "0.9.0"}
"""


def registry(tmp_path: Path, text: str) -> dict[str, flags.Flag]:
    path = tmp_path / "flags.yaml"
    path.write_text(text)
    return flags.load(path)


def test_the_repository_registry_covers_the_router_flags():
    reg = flags.load(ROOT / "playbooks" / "flags.yaml")
    used = json.loads((ROOT / "fleet" / "router" / "router.json").read_text())["flags"]
    flags.check(reg, used, "1.0.0", "flags.yaml")  # raises if the router uses an unregistered flag
    assert reg["power_peg"].state == "retired" and reg["power_peg"].retired == "0.9.0"


def test_a_good_registry_loads():
    reg = registry(Path(__import__("tempfile").mkdtemp()), GOOD)
    assert reg == {"price_improvement": flags.Flag("price_improvement", "better fills", "active", "1.0.0"),
                   "power_peg": flags.Flag("power_peg", "old test code", "retired", "0.1.0", "0.9.0")}


@pytest.mark.parametrize("text, message", [
    (GOOD + "  price_improvement: {meaning: x, state: active, introduced: '2'}\n",
     "flags.yaml: flags: duplicate key 'price_improvement' (line 4)"),
    (GOOD.replace("state: active,", "state: active, owner: bob,"),
     "flags.yaml: flags/price_improvement: unknown key 'owner'"),
    (GOOD + "version: 2\n", "flags.yaml: unknown key 'version'"),
    (GOOD.replace("state: active", "state: dormant"),
     "flags.yaml: flags/price_improvement/state: should be active or retired, got 'dormant'"),
    (GOOD.replace(', retired: "0.9.0"', ""),
     "flags.yaml: flags/power_peg: a retired flag needs `retired` (the release that retired it), "
     "an active one must not have it"),
    (GOOD.replace('introduced: "1.0.0"', 'introduced: "1.0.0", retired: "2.0"'),
     "flags.yaml: flags/price_improvement: a retired flag needs `retired` (the release that retired it), "
     "an active one must not have it"),
    (GOOD.replace("price_improvement:", "Price-Improvement:"),
     "flags.yaml: flags: flag name 'Price-Improvement' should match ^[a-z][a-z0-9_]{0,62}$"),
    (GOOD.replace("introduced: \"1.0.0\"", "introduced: 1.0"),
     "flags.yaml: flags/price_improvement/introduced: should be a string"),
    ("flags: {}\n", "flags.yaml: flags: should be a non-empty mapping of flag name -> flag"),
    ("other: 1\n", "flags.yaml: unknown key 'other'"),
])
def test_bad_registries_are_refused_with_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as exc:
        registry(tmp_path, text)
    assert str(exc.value).startswith(message), str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_retired_flag_is_refused_power_peg(tmp_path):
    reg = registry(tmp_path, GOOD)
    with pytest.raises(UsageError, match=r"^release 2\.0\.0: flag 'power_peg' was retired in release 0\.9\.0 "
                                         r"\(it meant: old test code\); a retired flag name is never reused"):
        flags.check(reg, {"price_improvement": False, "power_peg": True}, "2.0.0", "flags.yaml")


def test_an_unknown_flag_is_refused(tmp_path):
    reg = registry(tmp_path, GOOD)
    with pytest.raises(UsageError, match=r"^release 2\.0\.0: flag 'turbo' is not in the flag registry flags\.yaml"):
        flags.check(reg, {"price_improvement": False, "turbo": False}, "2.0.0", "flags.yaml")


def test_active_flags_pass(tmp_path):
    assert flags.check(registry(tmp_path, GOOD), {"price_improvement": True}, "2.0.0", "flags.yaml") is None


def _source(tmp_path: Path, flag_set: dict) -> Path:
    src = tmp_path / "router"
    shutil.copytree(ROOT / "fleet" / "router", src, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = json.loads((src / "router.json").read_text())
    cfg.update(version="2.0.0", flags=flag_set)
    (src / "router.json").write_text(json.dumps(cfg))
    return src


def test_build_records_the_flags_in_the_signed_manifest(tmp_path):
    from deployctl.release import signing

    key, pub = signing.generate(tmp_path / "keys")
    art = artifact.build(_source(tmp_path, {"log_orders": True, "price_improvement": False}), tmp_path / "dist",
                         "order-router", key)
    loaded = artifact.load(art.path, pub)
    assert loaded.flags == art.flags == {"log_orders": True, "price_improvement": False}
    assert json.loads(loaded.manifest_bytes)["flags"] == {"log_orders": True, "price_improvement": False}


def test_build_refuses_a_retired_flag_before_writing_anything(tmp_path):
    from deployctl.release import signing

    key, _ = signing.generate(tmp_path / "keys")
    reg = registry(tmp_path, GOOD)
    with pytest.raises(UsageError, match="flag 'power_peg' was retired"):
        artifact.build(_source(tmp_path, {"power_peg": True}), tmp_path / "dist", "order-router", key,
                       lambda used, version: flags.check(reg, used, version, "flags.yaml"))
    assert not (tmp_path / "dist").exists()


def test_build_refuses_flags_that_are_not_booleans(tmp_path):
    from deployctl.release import signing

    key, _ = signing.generate(tmp_path / "keys")
    with pytest.raises(ArtifactError, match=r"^router\.json: flags should be an object of flag name"):
        artifact.build(_source(tmp_path, {"log_orders": "yes"}), tmp_path / "dist", "order-router", key)


def test_a_manifest_with_bad_flags_is_refused():
    files = {"a": "0" * 64}
    doc = {"format": 1, "name": "r", "version": "1", "digest": manifest.digest_of(files), "files": files,
           "sizes": {"a": 0}}
    assert manifest.parse_manifest(manifest.canonical({**doc, "flags": {"x": True}}), "t")["flags"] == {"x": True}
    with pytest.raises(ArtifactError, match="flags should be an object of flag name -> true or false"):
        manifest.parse_manifest(manifest.canonical({**doc, "flags": {"x": 1}}), "t")
