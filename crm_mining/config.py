"""Configuration: layered YAML settings, dotted overrides, and validation before Spark starts.

Layers, later wins: ``conf/base.yaml`` → every source definition in ``conf/sources/*.yaml``
(under ``sources.<file stem>``) → a profile (``conf/local.yaml`` or ``conf/cluster.yaml``) →
each ``--config`` file in order → each ``--set key.path=value``. The base file defines every
known key and its type; anything else is rejected with the key named, so a typo never turns
into a silently ignored setting. Source definitions may carry keys of their own.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

#: Sections whose members are free-form maps (new names allowed, each checked on its own):
#: source definitions, and Spark settings passed through as they are.
OPEN_SECTIONS = ("sources", "spark.conf")


class ConfigError(ValueError):
    """A configuration problem, raised before any Spark work starts."""


def conf_dir() -> Path:
    """Locate the configuration directory.

    ``CRM_CONF_DIR`` wins; then ``./conf`` of a checkout; then the copy shipped in the wheel.
    """
    env = os.environ.get("CRM_CONF_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "base.yaml").is_file():
        return checkout
    return Path(__file__).resolve().parent / "_conf"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
    return data


def _type_name(value: Any) -> str:
    return type(value).__name__


def _compatible(default: Any, value: Any) -> bool:
    """A value fits a default when the kinds agree; ``None`` on either side fits anything."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float) and isinstance(value, (int, float)):
        return True
    if isinstance(default, (int, float)) and isinstance(value, (int, float)):
        return isinstance(value, type(default))
    if isinstance(default, Mapping):
        return isinstance(value, Mapping)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _merge(base: dict, override: Mapping, *, origin: str, prefix: str = "", strict: bool = True) -> dict:
    """Merge ``override`` into ``base`` (in place), checking keys and types against ``base``."""
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        open_section = dotted in OPEN_SECTIONS
        if key not in base:
            if strict:
                raise ConfigError(f"unknown configuration key '{dotted}' (in {origin})")
            base[key] = copy.deepcopy(value)
            continue
        current = base[key]
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge(current, value, origin=origin, prefix=f"{dotted}.", strict=strict and not open_section)
        elif not _compatible(current, value):
            raise ConfigError(
                f"configuration key '{dotted}' expects {_type_name(current)}, "
                f"got {_type_name(value)} {value!r} (in {origin})"
            )
        else:
            base[key] = copy.deepcopy(value)
    return base


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (``1`` is an int, ``[a, b]`` a list)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key.path=value, got '{item}'")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError):  # e.g. an impossible date: keep the text, validate later
        value = raw
    return key, value


#: Sections whose keys are whole dotted names (Spark settings): ``--set spark.conf.spark.a.b=1``
#: sets the key ``spark.a.b`` of ``spark.conf``.
FLAT_SECTIONS = ("spark.conf",)


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for flat in FLAT_SECTIONS:
        if key.startswith(flat + ".") and len(key) > len(flat) + 1:
            parts = [*flat.split("."), key[len(flat) + 1:]]
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


class Config(dict):
    """The merged settings: a plain nested ``dict`` with dotted look-up and a stable hash."""

    def get_path(self, dotted: str, default: Any = None) -> Any:
        """Return ``self['a']['b']`` for ``'a.b'``, or ``default`` when absent."""
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def section(self, dotted: str) -> dict:
        """Return a section as a dict; a missing section is a configuration error."""
        value = self.get_path(dotted)
        if not isinstance(value, Mapping):
            raise ConfigError(f"configuration section '{dotted}' is missing")
        return dict(value)

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON form: the same settings give the same hash."""
        blob = json.dumps(self, sort_keys=True, default=str).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]

    def enabled_sources(self) -> dict[str, dict]:
        """The source definitions switched on for this run, by name."""
        return {
            name: spec
            for name, spec in (self.get("sources") or {}).items()
            if isinstance(spec, Mapping) and spec.get("enabled")
        }


def load_config(
    *,
    config_files: Iterable[str | os.PathLike] = (),
    overrides: Iterable[str] = (),
    profile: str | None = None,
    directory: str | os.PathLike | None = None,
) -> Config:
    """Build the run's configuration from the layers and check it.

    Parameters
    ----------
    config_files : paths of YAML files applied after the profile, in order.
    overrides : ``key.path=value`` strings applied last.
    profile : ``local`` or ``cluster`` (a file ``conf/<profile>.yaml``); ``None`` uses
        ``run.profile`` of the merged base.
    directory : the configuration directory; default :func:`conf_dir`.

    Examples
    --------
    >>> cfg = load_config(overrides=["lake.root=/tmp/lake"])
    >>> cfg.get_path("lake.root")
    '/tmp/lake'
    """
    root = Path(directory) if directory else conf_dir()
    merged = _read_yaml(root / "base.yaml")
    merged.setdefault("sources", {})
    for path in sorted((root / "sources").glob("*.yaml")):
        definition = _read_yaml(path)
        merged["sources"].setdefault(path.stem, {})
        base_entry = merged["sources"][path.stem]
        # The base file may switch a source on; the definition fills in everything else.
        merged["sources"][path.stem] = {**definition, **base_entry}

    extra = [_read_yaml(Path(p)) for p in config_files]
    set_items = [parse_override(item) for item in overrides]
    chosen_profile = profile
    for layer in extra:
        chosen_profile = (layer.get("run") or {}).get("profile", chosen_profile)
    for key, value in set_items:
        if key == "run.profile":
            chosen_profile = value
    chosen_profile = chosen_profile or (merged.get("run") or {}).get("profile") or "local"
    profile_path = root / f"{chosen_profile}.yaml"
    if not profile_path.is_file():
        raise ConfigError(f"profile '{chosen_profile}' not found: {profile_path}")
    _merge(merged, _read_yaml(profile_path), origin=str(profile_path))
    for path, layer in zip(config_files, extra):
        _merge(merged, layer, origin=str(path))
    for key, value in set_items:
        _merge(merged, _nest(key, value), origin=f"--set {key}")
    merged.setdefault("run", {})["profile"] = chosen_profile
    config = Config(merged)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Check what can be checked without Spark: values in range and sources well formed."""
    as_of = config.get_path("run.as_of")
    if as_of is not None:
        import datetime as _dt

        if isinstance(as_of, _dt.date):
            config["run"]["as_of"] = as_of.isoformat()
        else:
            try:
                _dt.date.fromisoformat(str(as_of))
            except ValueError as exc:
                raise ConfigError(f"run.as_of must be a date YYYY-MM-DD, got {as_of!r}") from exc
    for name, spec in config.enabled_sources().items():
        for required in ("format", "domain"):
            if not spec.get(required):
                raise ConfigError(f"source '{name}' has no '{required}' (sources.{name}.{required})")
        if not spec.get("path"):
            raise ConfigError(f"source '{name}' is enabled but sources.{name}.path is not set")


def check_source_paths(config: Config) -> None:
    """Fail with the file named when an enabled source's path does not exist.

    Kept apart from :func:`validate` because the demo generates its data after loading
    the configuration and before the first step.
    """
    for name, spec in config.enabled_sources().items():
        path = str(spec["path"])
        if "://" in path:  # object stores are checked by Spark when read
            continue
        if any(ch in path for ch in "*?["):
            import glob

            if not glob.glob(path):
                raise ConfigError(f"source '{name}': no file matches sources.{name}.path = {path}")
        elif not Path(path).exists():
            raise ConfigError(f"source '{name}': path not found: {path} (sources.{name}.path)")


def check_writable_dir(path: str, *, setting: str) -> None:
    """Fail, naming the setting, when a local directory cannot be created or written.

    The directory itself may not exist yet: its nearest existing ancestor must be a writable
    directory. Object-store URIs (``s3a://``, ``abfss://``...) are checked by the first write.
    """
    if "://" in path and not path.startswith("file://"):
        return
    target = Path(path.removeprefix("file://")).expanduser().absolute()
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"{setting} = {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting} = {path}: {existing} is not writable by this user")
